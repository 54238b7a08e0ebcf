"""Simulation protocols: turn a fully annotated dataset into a weakly / partially / noisily annotated one.

A protocol says which simulated annotation each case gets. Short form, applied to every ``train`` case (val, test
and unlabelled cases are copied unchanged)::

    {"kind": "scribbles", "params": {"fraction": 0.5, "brush_radius": 1}}

Full form (``default`` for cases of ``splits``; ``cases`` overrides by id, whatever the split; an entry may be a
kind name, a step ``{"kind": ..., "params": {...}}`` (parameters may also sit beside ``kind``), or a list of steps
combined into one annotation, e.g. boxes + tags)::

    {"default": [{"kind": "boxes", "margin": 2}, {"kind": "tags"}],
     "cases": {"case_007": "mask", "case_012": {"kind": "unlabelled"}},
     "splits": ["train"]}

Budget form (label-budget experiments: "4 masks, scribbles for 10, boxes for the rest"): ``assign`` entries take
cases in order from one seeded permutation of the cases of ``splits`` (minus any named under ``cases``); each
entry is a step (kind plus parameters, or ``steps: [...]`` to combine several) with a ``count`` (an integer, or
``"all"`` for every remaining case, last entry only); ``rest`` (default ``unlabelled``) is what the remaining
cases get::

    {"assign": [{"kind": "mask", "count": 4}, {"kind": "scribbles", "count": 10, "fraction": 0.5}],
     "rest": "boxes"}

The permutation depends only on the seed (``seed`` in the protocol, else the simulation seed) and the case ids, so
budgets are nested as in the label-budget studies (Reiß et al., CVPR 2021; Redekop et al., DALI 2021): with the
same seed, the 2 mask cases of a 2-mask protocol are among the 4 of a 4-mask protocol.

:func:`simulate_manifest` applies a protocol to a manifest with one seed and writes a new, loadable manifest.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from everylabel.annotations.kinds import Annotations, Kind
from everylabel.annotations.simulate import check_params, get_simulator, merge_annotations, simulate
from everylabel.annotations.simulate_common import to_builtin

PROTOCOL_KEYS = ("default", "cases", "splits")
BUDGET_KEYS = ("assign", "rest", "cases", "splits", "seed")
STEP_KEYS = ("kind", "params")


@dataclass
class Step:
    """One simulator call of a protocol."""

    kind: str
    params: dict = field(default_factory=dict)


@dataclass
class Protocol:
    """A parsed protocol: steps for the default cases, per-case overrides, and which splits get the default."""

    default: list[Step] | None
    cases: dict[str, list[Step]]
    splits: tuple[str, ...] = ("train",)
    assign: list[tuple[int | None, list[Step]]] = field(default_factory=list)
    """Budget form: ``(count, steps)`` per entry, count None = every remaining case; ``default`` is the rest."""
    seed: int | None = None
    """Budget form: seed of the case permutation (None = the simulation seed)."""

    def steps_for(self, case_id: str, split: str) -> list[Step] | None:
        """The steps of a case, or None when it is copied unchanged."""
        if case_id in self.cases:
            return self.cases[case_id]
        return self.default if split in self.splits else None

    @property
    def requested_cases(self) -> int:
        """Cases the ``assign`` entries ask for (an ``"all"`` entry counts as one)."""
        return sum(1 if n is None else n for n, _ in self.assign)

    def mask_count(self, n_cases: int) -> int:
        """Cases that keep their full mask, given ``n_cases`` cases of ``splits`` not named under ``cases``."""
        def is_mask(steps):
            return steps is not None and [s.kind for s in steps] == ["mask"]

        named = sum(is_mask(steps) for steps in self.cases.values())
        if not self.assign:
            return named + (n_cases if is_mask(self.default) else 0)
        left, masks = n_cases, named
        for n, steps in self.assign:
            take = left if n is None else min(n, left)
            masks += take if is_mask(steps) else 0
            left -= take
        return masks + (left if is_mask(self.default) else 0)

    def resolve(self, case_ids: list[str], seed: int) -> Protocol:
        """The budget form made concrete for these cases: every drawn case named under ``cases``.

        Args:
            case_ids: ids of the cases of ``splits`` (order does not matter).
            seed: the simulation seed (used unless the protocol has its own ``seed``).

        Raises:
            ValueError: the entries ask for more cases than there are.
        """
        if not self.assign:
            return self
        pool = sorted(set(case_ids) - set(self.cases))
        if self.requested_cases > len(pool):
            asked = ", ".join(f"{'all' if n is None else n} {'+'.join(s.kind for s in steps)}"
                              for n, steps in self.assign)
            raise ValueError(f"protocol asks for {self.requested_cases} cases ({asked}) but the {'/'.join(self.splits)}"
                             f" split has {len(pool)} case(s) to draw from")
        gen = np.random.default_rng([int(self.seed if self.seed is not None else seed), zlib.crc32(b"assign")])
        order = [pool[i] for i in gen.permutation(len(pool))]
        cases, start = dict(self.cases), 0
        for n, steps in self.assign:
            stop = len(order) if n is None else start + n
            cases.update({cid: steps for cid in order[start:stop]})
            start = stop
        return Protocol(default=self.default, cases=cases, splits=self.splits)


def _steps(entry, where: str) -> list[Step]:
    if isinstance(entry, str):
        entry = {"kind": entry}
    if isinstance(entry, dict):
        if "kind" not in entry:
            raise ValueError(f"{where}: a protocol step needs a 'kind', got keys {sorted(entry)}")
        params = entry.get("params") or {}
        if not isinstance(params, dict):
            raise ValueError(f"{where}: 'params' must be a mapping, got {type(params).__name__}")  # noqa: TRY004
        inline = {k: v for k, v in entry.items() if k not in STEP_KEYS}
        both = sorted(set(inline) & set(params))
        if both:
            raise ValueError(f"{where}: parameters {both} given both inline and under 'params'")
        step = Step(str(entry["kind"]), {**params, **inline})
        check_params(step.kind, step.params)
        return [step]
    if isinstance(entry, (list, tuple)) and entry:
        steps = [s for i, e in enumerate(entry) for s in _steps(e, f"{where}[{i}]")]
        kinds = [s.kind for s in steps]
        if "unlabelled" in kinds and len(kinds) > 1:
            raise ValueError(f"{where}: 'unlabelled' cannot be combined with other kinds, got {kinds}")
        return steps
    raise ValueError(f"{where}: expected a kind name, a step {{'kind': ..., 'params': {{...}}}} or a list of steps, "
                     f"got {entry!r}")


def parse_protocol(protocol: dict) -> Protocol:
    """Check a protocol (short or full form, see the module docstring) and normalise it.

    Raises:
        ValueError: unknown keys, kinds or simulator parameters (each named, with the nearest valid one).
    """
    if not isinstance(protocol, dict):
        raise ValueError(f"a protocol must be a mapping, got {type(protocol).__name__}")  # noqa: TRY004
    if "kind" in protocol:
        return Protocol(default=_steps(protocol, "protocol"), cases={})
    if "assign" in protocol:
        return _parse_budget(protocol)
    unknown = [k for k in protocol if k not in PROTOCOL_KEYS]
    if unknown:
        raise ValueError(f"protocol: unknown keys {unknown}; expected 'kind' (short form), {PROTOCOL_KEYS} or "
                         f"{BUDGET_KEYS} (budget form)")
    default = protocol.get("default")
    cases = protocol.get("cases") or {}
    if not isinstance(cases, dict):
        raise ValueError(f"protocol: 'cases' must map case ids to steps, got {type(cases).__name__}")  # noqa: TRY004
    from everylabel.data.manifest import SPLITS

    splits = protocol.get("splits", ["train"])
    splits = (splits,) if isinstance(splits, str) else tuple(splits)
    bad = [s for s in splits if s not in SPLITS]
    if bad:
        raise ValueError(f"protocol: unknown splits {bad}; expected some of {SPLITS}")
    return Protocol(default=None if default is None else _steps(default, "protocol.default"),
                    cases={str(cid): _steps(e, f"protocol.cases.{cid}") for cid, e in cases.items()},
                    splits=splits)


def _parse_budget(protocol: dict) -> Protocol:
    unknown = [k for k in protocol if k not in BUDGET_KEYS]
    if unknown:
        raise ValueError(f"protocol: unknown keys {unknown} in the budget form; expected some of {BUDGET_KEYS}")
    entries = protocol["assign"]
    if not isinstance(entries, list) or not entries:
        raise ValueError(f"protocol.assign: expected a non-empty list of {{'kind': ..., 'count': n}}, got {entries!r}")
    assign = []
    for i, entry in enumerate(entries):
        where = f"protocol.assign[{i}]"
        if not isinstance(entry, dict) or "count" not in entry:
            raise ValueError(f"{where}: expected a mapping with 'count' and 'kind' (or 'steps'), got {entry!r}")
        count = entry["count"]
        if count == "all":
            if i != len(entries) - 1:
                raise ValueError(f"{where}: count 'all' (every remaining case) is only allowed in the last entry")
            count = None
        elif isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise ValueError(f"{where}: count must be an integer >= 0 or 'all', got {count!r}")
        step = {k: v for k, v in entry.items() if k != "count"}
        if "steps" in step:
            if set(step) != {"steps"}:
                raise ValueError(f"{where}: give either 'steps' or a kind with parameters, not both")
            step = step["steps"]
        assign.append((count, _steps(step, where)))
    full = parse_protocol({"default": protocol.get("rest", "unlabelled"), "cases": protocol.get("cases") or {},
                           "splits": protocol.get("splits", ["train"])})
    seed = protocol.get("seed")
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"protocol.seed must be an integer, got {seed!r}")
    return Protocol(default=full.default, cases=full.cases, splits=full.splits, assign=assign, seed=seed)


def case_rng(seed: int, case_id: str) -> np.random.Generator:
    """The generator of one case: seeded by ``(seed, crc32(case_id))``, so it does not depend on case order."""
    return np.random.default_rng([int(seed), zlib.crc32(case_id.encode("utf-8"))])


# ------------------------------------------------------------------------------------------------------ writing


def _relative(path: str, out_dir: Path, relative: bool) -> str:
    from everylabel.data.io import split_key

    file, key = split_key(path)
    text = os.path.relpath(file, out_dir) if relative else str(Path(file).absolute())
    return Path(text).as_posix() + (f"::{key}" if key else "")


def _number(value: float):
    return int(value) if float(value).is_integer() else float(value)


def case_entry(manifest, case, out_dir: Path, relative: bool, dense: bool = True, sparse: bool = True) -> dict:
    """A manifest case as a mapping for a new manifest written in ``out_dir`` (paths rewritten, relative to it when
    ``relative``; label settings made case-level). ``dense`` / ``sparse`` keep the case's mask / sparse labels."""
    def rel(p: str) -> str:
        return _relative(p, out_dir, relative)

    entry: dict = {"id": case.id, "images": [rel(p) for p in case.images], "split": case.split}
    if case.valid:
        entry["valid"] = rel(case.valid)
    if case.image_key != "image":
        entry["image_key"] = case.image_key
    if case.label_key != "label":
        entry["label_key"] = case.label_key
    if case.spacing is not None:
        entry["spacing"] = list(case.spacing)
    if dense and (case.mask or case.masks_per_class or case.scribble):
        if case.mask:
            entry["mask"] = rel(case.mask)
        if case.masks_per_class:
            entry["masks_per_class"] = {k: rel(p) for k, p in case.masks_per_class.items()}
        if case.scribble:
            entry["scribble"] = rel(case.scribble)
            if case.unlabelled_value is not None:
                entry["unlabelled_value"] = case.unlabelled_value
        if case.classes is not None:
            entry["classes"] = list(case.classes)
        mapping, threshold = manifest.label_options(case)
        if mapping:
            entry["label_mapping"] = dict(mapping)
        if threshold is not None:
            entry["label_threshold"] = threshold
    if sparse:
        for key in ("points", "boxes", "tags"):
            if getattr(case, key) is not None:
                entry[key] = getattr(case, key)
    return entry


def _label_path(manifest, case, out_dir: Path, kind: str) -> Path | str:
    from everylabel.data.io import image_suffix, split_key

    source = case.mask or next(iter((case.masks_per_class or {}).values()))
    suffix = image_suffix(source)
    suffix = ".png" if suffix in (".jpg", ".jpeg") else suffix
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", case.id)
    path = out_dir / "labels" / f"{name}_{kind}{suffix}"
    key = split_key(source)[1]
    return f"{path}::{key or case.label_key}" if suffix in (".h5", ".hdf5") else path


def _write_dense(ann: Annotations, source: Annotations, kind: str, manifest, case, meta, out_dir: Path,
                 relative: bool, unlabelled_value: int) -> tuple[dict, str]:
    """Write the simulated dense map; returns the manifest keys that reference it and the file written."""
    from everylabel.data.io import write_label

    ignore = manifest.ignore_value
    if ignore is not None and 0 <= ignore < manifest.num_classes:
        raise ValueError(f"{manifest.source}: ignore_value {ignore} is also a class index, so simulated label files "
                         "(which hold class indices) would be misread; use an ignore value >= the number of classes")
    path = _label_path(manifest, case, out_dir, kind)
    if ann.dense_kind == Kind.SCRIBBLE or (ann.valid is not None and not ann.valid.all()):
        valid = ann.valid if source.valid is None else ann.valid & source.valid
        raw = np.where(valid, ann.labels, unlabelled_value)
        keys = {"scribble": _relative(str(path), out_dir, relative), "unlabelled_value": int(unlabelled_value)}
    else:
        raw = ann.labels.copy()
        keys = {"mask": _relative(str(path), out_dir, relative)}
        if ann.dense_kind == Kind.PARTIAL:
            keys["classes"] = [int(c) for c in ann.classes]
    if ignore is not None and source.valid is not None and "mask" in keys:
        raw[~source.valid] = ignore
    write_label(path, raw, meta)
    return keys, str(path)


def _sparse_keys(ann: Annotations, source: Annotations, manifest) -> dict:
    """Points, boxes and tags as manifest rows; points on unannotated source voxels are dropped."""
    keys: dict = {}
    if ann.points is not None and len(ann.points):
        keep = np.ones(len(ann.points), dtype=bool)
        if source.valid is not None:
            keep = source.valid[tuple(np.round(ann.points).astype(np.int64).T)]
        keys["points"] = [[_number(v) for v in p] + [int(c)]
                          for p, c, k in zip(ann.points, ann.point_labels, keep) if k]
    if ann.boxes is not None and len(ann.boxes):
        keys["boxes"] = [[_number(v) for v in b] + [int(c)] for b, c in zip(ann.boxes, ann.box_labels)]
    if ann.tags is not None:
        keys["tags"] = {manifest.labels[c]: bool(t) for c, t in enumerate(ann.tags.tolist()) if t >= 0}
    return keys


def _simulate_case(manifest, case, steps: list[Step], seed: int, out_dir: Path, relative: bool,
                   unlabelled_value: int) -> tuple[dict, dict]:
    """The new manifest entry of one case and its record for ``simulation.json``."""
    import inspect

    from everylabel.data.manifest import load_case

    if [s.kind for s in steps] == ["mask"]:
        return case_entry(manifest, case, out_dir, relative), {"status": "unchanged", "steps": ["mask"]}
    _, source, meta = load_case(manifest, case)
    if source.dense_kind != Kind.MASK:
        reason = "no full mask" if source.labels is None else f"its dense annotation is {source.dense_kind.value}"
        return (case_entry(manifest, case, out_dir, relative),
                {"status": "skipped", "reason": f"{reason}; simulation needs a full mask"})
    gen = case_rng(seed, case.id)
    parts = []
    for step in steps:
        params = dict(step.params)
        if "num_classes" in inspect.signature(get_simulator(step.kind)).parameters:
            params.setdefault("num_classes", manifest.num_classes)
        parts.append(simulate(source.labels, step.kind, gen, **params))
    ann = merge_annotations(parts)
    keep_mask = "mask" in [s.kind for s in steps]
    entry = case_entry(manifest, case, out_dir, relative, dense=keep_mask, sparse=False)
    record: dict = {"status": "simulated", "rng": {"seed_sequence": [int(seed), zlib.crc32(case.id.encode())]},
                    "steps": ann.extra["simulation"]}
    if ann.labels is not None and not keep_mask:
        dense_kind = next(s.kind for s, p in zip(steps, parts) if p.labels is not None)
        keys, written = _write_dense(ann, source, dense_kind, manifest, case, meta, out_dir, relative,
                                     unlabelled_value)
        entry.update(keys)
        record["files"] = [written]
    entry.update(_sparse_keys(ann, source, manifest))
    return entry, record


def simulate_manifest(manifest_path: str | Path, out_dir: str | Path, protocol: dict, seed: int = 0, *,
                      unlabelled_value: int = 255, relative: bool = True) -> Path:
    """Apply a simulation protocol to every fully annotated case of a manifest and write a new dataset.

    Each case the protocol targets (default: ``train`` cases; plus any case named under ``cases``) is loaded with
    :func:`everylabel.data.manifest.load_case`; if it has a full mask, its label map is passed to the protocol's
    simulators with the case generator :func:`case_rng` ``(seed, case id)``. Outputs:

    - dense results are written with :func:`everylabel.data.io.write_label` in the format of the original mask
      (JPEG becomes PNG) under ``out_dir/labels/``: scribbles and sparse (few-plane) masks as ``scribble`` files
      whose unannotated voxels hold ``unlabelled_value``; partial masks as ``mask`` + ``classes``; noisy masks as
      ``mask``. Voxels the source did not annotate (``ignore_value``) stay unannotated; points there are dropped.
    - boxes, points and tags go inline in the manifest; the original mask is kept only by a ``mask`` step.
    - ``out_dir/manifest.yaml``: the new manifest (label_mapping / label_threshold moved to the cases that still
      read original label files), and ``out_dir/simulation.json``: seed, protocol, source, and per case the
      status, the generator seed and every simulator's record (parameters, rng state, what was drawn).

    Cases not targeted, or without a full mask, are copied unchanged.

    Args:
        manifest_path: YAML/JSON manifest of a fully annotated dataset.
        out_dir: output folder (created).
        protocol: see :func:`parse_protocol`.
        seed: the run's seed.
        unlabelled_value: file value of unannotated voxels in written scribble files (>= number of classes).
        relative: write paths relative to ``out_dir`` (else absolute).

    Returns:
        Path of the new manifest.

    Raises:
        ValueError: bad protocol, unknown case ids in ``protocol["cases"]``, a budget asking for more cases than
            the split has, unusable ``unlabelled_value``, or unreadable cases.
    """
    import yaml

    import everylabel
    from everylabel.data.manifest import load_manifest

    manifest = load_manifest(manifest_path)
    parsed = parse_protocol(protocol)
    ids = [c.id for c in manifest.cases]
    unknown = sorted(set(parsed.cases) - set(ids))
    if unknown:
        raise ValueError(f"protocol names cases {unknown} that are not in {manifest.source}")
    parsed = parsed.resolve([c.id for c in manifest.cases if c.split in parsed.splits], seed)
    if unlabelled_value < manifest.num_classes:
        raise ValueError(f"unlabelled_value {unlabelled_value} is a class index (classes 0..{manifest.num_classes - 1})"
                         "; choose a value >= the number of classes, e.g. 255")
    out_dir = Path(out_dir).absolute()
    out_dir.mkdir(parents=True, exist_ok=True)
    entries, records = [], {}
    for case in manifest.cases:
        steps = parsed.steps_for(case.id, case.split)
        if steps is None:
            entries.append(case_entry(manifest, case, out_dir, relative))
            records[case.id] = {"status": "unchanged"}
            continue
        entry, record = _simulate_case(manifest, case, steps, seed, out_dir, relative, unlabelled_value)
        entries.append(entry)
        records[case.id] = record
    note = f"simulated annotations (seed {seed}, see simulation.json)"
    data: dict = {"name": manifest.name,
                  "description": f"{manifest.description}; {note}" if manifest.description else note,
                  "modality": manifest.modality, "labels": dict(manifest.labels)}
    if manifest.channel_names:
        data["channel_names"] = list(manifest.channel_names)
    if manifest.ignore_value is not None:
        data["ignore_value"] = manifest.ignore_value
    if manifest.spacing is not None:
        data["spacing"] = list(manifest.spacing)
    data["cases"] = entries
    path = out_dir / "manifest.yaml"
    path.write_text(yaml.safe_dump(to_builtin(data), sort_keys=False, default_flow_style=None), encoding="utf-8")
    summary = {"seed": int(seed), "protocol": to_builtin(protocol),
               "source_manifest": str(Path(manifest.source).absolute()), "manifest": str(path),
               "unlabelled_value": int(unlabelled_value), "relative_paths": relative,
               "everylabel_version": everylabel.__version__, "cases": records}
    (out_dir / "simulation.json").write_text(json.dumps(to_builtin(summary), indent=1), encoding="utf-8")
    return path


__all__ = ["Protocol", "Step", "case_rng", "parse_protocol", "simulate_manifest"]
