"""Label-budget sweeps: methods x annotation protocols x seeds (x folds), one process and one directory per run.

A sweep file (YAML; relative paths are relative to the file; only ``data`` and ``methods`` are required)::

    name: budgets                       # default: the file name
    data: ../data/Dataset001_Synthetic  # a manifest or an nnU-Net raw folder; test cases need reference masks
    config: base.yaml                   # config changes for every run (optional)
    base: {train: {steps: 2000}}        # more changes (nested or dotted keys), applied after `config`
    methods:                            # name -> config changes; a list of method names also works
      supervised: {method.name: supervised}
      weak: {method.name: weak, method.crf_weight: 0.5}
      mean_teacher: {method.name: mean_teacher, data.labelled_fraction: 0.5}
    budgets:                            # one budget protocol per (masks, rest): "<n>masks_<rest>"
      masks: [2, 4, 8, all]             # cases that keep their full mask; "all" = "allmasks" (every train case)
      rest: [boxes, unlabelled]         # what the other train cases get: kinds, steps, or {label: step}
    protocols:                          # more protocols by name, any form of annotations.protocol
      scribbles_only: {kind: scribbles, fraction: 0.5}
      mixed: {assign: [{kind: mask, count: 2}, {kind: scribbles, count: 10}], rest: unlabelled}
    exclude:                            # combinations not to run (shell-style patterns)
      - {method: supervised, protocol: "*_boxes"}       # supervised ignores boxes: same as *_unlabelled
      - {method: mean_teacher, protocol: "*_boxes"}
      - {method: mean_teacher, protocol: allmasks}      # labelled_fraction 0.5 needs unlabelled cases
      - {method: "[!w]*", protocol: scribbles_only}     # only weak learns from scribbles alone
    seeds: [0, 1, 2]                    # or a number n for 0..n-1; seeds the cases drawn, simulation, training
    folds: 5                            # optional k-fold cross-validation over the train cases
    fold_seed: 0
    metrics: [dice, hd95]               # evaluated on the test cases (default dice, hd95)
    cost: {mask: 78, box: 10}           # annotation prices, see everylabel.annotations.cost

Every run of the grid gets a directory ``SWEEP_DIR/runs/<method>__<protocol>__seed<n>[__fold<k>]__<hash>``: the
hash covers everything the run depends on (resolved config, protocol, seed, fold, data, metrics, prices), so a
changed sweep file never passes for a finished run. A run simulates its protocol from the full masks
(:func:`~everylabel.annotations.protocol.simulate_manifest`, seeded by the run's seed), prices it
(:func:`~everylabel.annotations.cost.price_simulation`), trains, predicts the test split, evaluates against the
original references, and writes its row to ``SWEEP_DIR/results/<name>.json`` (see :mod:`.results`).

Sweeps set ``data.val_fraction: 0`` unless the base config changes it: with a budget of a few masks, every mask
should train (the model of a run is then its last checkpoint). With ``folds: k`` the train cases are split into k
folds (seeded by ``fold_seed``, the same for every seed); a fold's held-out cases become the validation split, or
the test split when the dataset has none. Test cases without a reference mask become unlabelled.

Runs are independent processes (``python -m everylabel run-one RUN_DIR``): finished runs are skipped when the sweep
is started again, an interrupted run is resumed from its last checkpoint, a failing run is recorded with its error
and traceback and the sweep goes on. On a cluster, a job array spreads the pending runs over machines that share the
sweep directory (each run locks its directory; starting ``--print-commands`` again lists only what is missing)::

    everylabel sweep budgets.yaml --print-commands > commands.txt
    sbatch --array=1-$(wc -l < commands.txt) --wrap 'sed -n "${SLURM_ARRAY_TASK_ID}p" commands.txt | bash'
    everylabel report budgets/         # when they are done

Every input problem is reported before any run starts: unknown keys (with the nearest valid one), unknown methods,
metrics or prices, invalid protocols, budgets larger than the train split (of every fold), a method that cannot
learn from any kind a protocol gives, ``data.labelled_fraction`` with a protocol that leaves no case unlabelled.
"""

from __future__ import annotations

import difflib
import fnmatch
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import yaml

SWEEP_KEYS = ("name", "data", "config", "base", "methods", "protocols", "budgets", "exclude", "seeds", "folds",
              "fold_seed", "metrics", "cost")
BUDGET_KEYS = ("masks", "rest")
EXCLUDE_KEYS = ("method", "protocol")
DEFAULT_METRICS = ("dice", "hd95")
SWEEP_DEFAULTS = {"data": {"val_fraction": 0.0}}
"""Config changes every sweep starts from (the base config may change them)."""
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def _unknown(data: dict, valid: tuple[str, ...], where: str) -> None:
    for key in data:
        if key not in valid:
            close = difflib.get_close_matches(str(key), valid, n=1, cutoff=0.5)
            hint = f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(valid)}"
            raise ValueError(f"unknown key {key!r} in {where}{hint}")


def nest(changes: dict | None, where: str) -> dict:
    """``{"method.name": "weak", "train": {"steps": 5}}`` -> nested dict; dotted and nested keys may be mixed."""
    from everylabel.experiments.config import merge

    if changes is None:
        return {}
    if not isinstance(changes, dict):
        raise ValueError(f"{where} must be a mapping of config changes, got {changes!r}")
    out: dict = {}
    for key, value in changes.items():
        parts = str(key).split(".")
        node: dict = {}
        leaf = node
        for p in parts[:-1]:
            leaf = leaf.setdefault(p, {})
        leaf[parts[-1]] = nest(value, f"{where}.{key}") if isinstance(value, dict) else value
        out = merge(out, node)
    return out


def _check_name(name: str, where: str) -> str:
    name = str(name)
    if not NAME_RE.match(name) or "__" in name:
        raise ValueError(f"{where}: name {name!r} must use letters, digits, '_', '.', '+' or '-' (no '__', which "
                         "separates the parts of run names)")
    return name


def _stable_hash(obj, n: int = 8) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:n]


@dataclass(frozen=True)
class RunSpec:
    """One run of a sweep: everything ``run-one`` needs, written to ``RUN_DIR/spec.json``."""

    name: str
    method: str
    protocol: str
    protocol_family: str
    protocol_spec: dict
    seed: int
    fold: int | None
    folds: int | None
    fold_seed: int
    data: str
    overrides: dict
    metrics: tuple[str, ...]
    cost: dict
    run_hash: str
    config_hash: str
    expected_masks: int

    def to_dict(self) -> dict:
        d = asdict(self)
        d["metrics"] = list(self.metrics)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> RunSpec:
        return cls(**{**d, "metrics": tuple(d["metrics"])})


@dataclass(frozen=True)
class SweepSpec:
    """A loaded, validated sweep file (see the module docstring)."""

    name: str
    source: str
    data: str
    base: dict
    methods: dict
    protocols: dict
    families: dict
    seeds: tuple[int, ...]
    folds: int | None
    fold_seed: int
    metrics: tuple[str, ...]
    cost: dict
    exclude: tuple[dict, ...]

    def excluded(self, method: str, protocol: str) -> bool:
        return any(fnmatch.fnmatchcase(method, e.get("method", "*")) and
                   fnmatch.fnmatchcase(protocol, e.get("protocol", "*")) for e in self.exclude)


# ---------------------------------------------------------------------------------------------------- data splits


def fold_assignment(case_ids: list[str], folds: int, fold_seed: int = 0) -> list[list[str]]:
    """The held-out cases of each fold: a seeded permutation of the sorted ids cut into ``folds`` near-equal parts."""
    ids = sorted(case_ids)
    order = np.random.default_rng([int(fold_seed), zlib.crc32(b"folds")]).permutation(len(ids))
    return [sorted(ids[i] for i in part) for part in np.array_split(order, folds)]


def source_manifest(data: str | Path, folds: int | None = None, fold: int | None = None, fold_seed: int = 0) -> dict:
    """The dataset of a run as a manifest mapping (absolute paths): fold splits applied; test cases without a
    reference mask made unlabelled; an nnU-Net raw folder converted (``labelsTs`` masks become test references)."""
    data = Path(data)
    if data.is_dir():
        from everylabel.data.nnunet import load_nnunet_raw

        m = load_nnunet_raw(data)
        if m.extra.get("regions"):
            raise ValueError(f"{data}: region-based nnU-Net datasets cannot be swept; write a manifest")
        ending = m.extra["file_ending"]
        raw: dict = {"name": m.name, "labels": dict(m.labels), "modality": m.modality,
                     "channel_names": list(m.channel_names)}
        if m.ignore_value is not None:
            raw["ignore_value"] = m.ignore_value
        cases = []
        for c in m.cases:
            entry: dict = {"id": c.id, "images": list(c.images), "split": c.split}
            mask = c.mask or (str(data / "labelsTs" / f"{c.id}{ending}") if c.split == "test" else None)
            if mask and Path(mask).is_file():
                entry["mask"] = mask
            if c.spacing is not None:
                entry["spacing"] = list(c.spacing)
            cases.append(entry)
    else:
        text = data.read_text(encoding="utf-8")
        raw = dict(json.loads(text) if data.suffix.lower() == ".json" else yaml.safe_load(text) or {})
        raw["root"] = os.path.normpath(data.parent.absolute() / str(raw.get("root", ".")))
        cases = [dict(c) for c in raw.get("cases") or []]
    for c in cases:
        c.setdefault("split", "train")
        if c["split"] == "test" and not c.get("mask"):
            c["split"] = "unlabelled"
    if folds:
        has_test = any(c["split"] == "test" for c in cases)
        held = set(fold_assignment([c["id"] for c in cases if c["split"] == "train"], folds, fold_seed)[fold])
        for c in cases:
            if c["id"] in held:
                c["split"] = "val" if has_test else "test"
    raw["cases"] = cases
    return raw


def write_source_manifest(spec: RunSpec, path: Path) -> Path:
    from everylabel.experiments.results import atomic_write_text

    raw = source_manifest(spec.data, spec.folds, spec.fold, spec.fold_seed)
    atomic_write_text(path, yaml.safe_dump(raw, sort_keys=False, default_flow_style=None))
    return path


# ------------------------------------------------------------------------------------------------------- loading


def _budget_protocols(budgets: dict, where: str) -> tuple[dict, dict]:
    if not isinstance(budgets, dict):
        raise ValueError(f"{where} must be a mapping with 'masks' and 'rest', got {budgets!r}")
    _unknown(budgets, BUDGET_KEYS, where)
    masks = budgets.get("masks")
    if not isinstance(masks, list) or not masks:
        raise ValueError(f"{where}.masks must be a list of mask counts (integers >= 0 or 'all'), got {masks!r}")
    for n in masks:
        if n != "all" and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
            raise ValueError(f"{where}.masks: {n!r} is not a mask count (an integer >= 0 or 'all')")
    rest = budgets.get("rest", ["unlabelled"])
    if isinstance(rest, dict) and "kind" not in rest:
        labelled = {str(k): v for k, v in rest.items()}
    else:
        labelled = {}
        for entry in rest if isinstance(rest, list) else [rest]:
            steps = entry if isinstance(entry, list) else [entry]
            label = "+".join(str(s.get("kind", "?")) if isinstance(s, dict) else str(s) for s in steps)
            if label in labelled:
                raise ValueError(f"{where}.rest: two entries are both called {label!r}; name them with a mapping "
                                 f"{{label: step}}")
            labelled[label] = entry
    protocols, families = {}, {}
    for n in masks:
        if n == "all":
            protocols["allmasks"], families["allmasks"] = {"kind": "mask"}, "full"
            continue
        for label, entry in labelled.items():
            name = _check_name(f"{n}masks_{label}", f"{where}.rest")
            protocols[name] = {"assign": [{"kind": "mask", "count": n}], "rest": entry}
            families[name] = label
    return protocols, families


def _methods(raw, where: str) -> dict:
    from everylabel.methods import METHODS

    if isinstance(raw, list):
        raw = {str(m): None for m in raw}
    if not isinstance(raw, dict) or not raw:
        raise ValueError(f"{where} must name at least one method: a list of names or a mapping name -> changes")
    out = {}
    for name, changes in raw.items():
        _check_name(name, where)
        nested = nest(changes, f"{where}.{name}")
        method = nested.setdefault("method", {})
        if not isinstance(method, dict):
            raise ValueError(f"{where}.{name}.method must be a mapping, got {method!r}")
        if "name" not in method:
            if name not in METHODS:
                raise ValueError(f"{where}.{name}: set method.name (one of {', '.join(sorted(METHODS))})")
            method["name"] = name
        if method["name"] not in METHODS:
            close = difflib.get_close_matches(str(method["name"]), METHODS, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"{where}.{name}: unknown method {method['name']!r}; {hint}available: "
                             f"{', '.join(sorted(METHODS))}")
        out[str(name)] = nested
    return out


def _int_list(value, where: str) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        if value < 1:
            raise ValueError(f"{where}: a number of seeds must be >= 1, got {value}")
        return tuple(range(value))
    if not isinstance(value, list) or not value or any(isinstance(v, bool) or not isinstance(v, int) for v in value):
        raise ValueError(f"{where} must be a list of integers or a count, got {value!r}")
    if len(set(value)) != len(value):
        raise ValueError(f"{where} lists a seed twice: {value}")
    return tuple(value)


def load_sweep(path: str | Path) -> SweepSpec:
    """Load and validate a sweep file; every problem raises ValueError before any run starts.

    Raises:
        ValueError: unknown keys (with the nearest valid key), missing data, unknown methods or config keys,
            invalid protocols, budgets larger than the train split, a method that cannot learn from any kind a
            protocol gives (unless excluded), no test references.
    """
    from everylabel.experiments.config import config_from_dict, merge

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"sweep file {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"{path}: cannot parse YAML ({e})") from e
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a sweep file must be a mapping with keys such as 'data' and 'methods'")
    where = str(path)
    _unknown(raw, SWEEP_KEYS, where)
    for key in ("data", "methods"):
        if key not in raw:
            raise ValueError(f"{where}: missing '{key}'")
    here = path.parent.absolute()
    data = Path(os.path.normpath(here / str(raw["data"])))
    if not data.exists():
        raise ValueError(f"{where}: data {data} does not exist")
    base = dict(SWEEP_DEFAULTS)
    if raw.get("config"):
        cfg_path = here / str(raw["config"])
        if not cfg_path.is_file():
            raise ValueError(f"{where}: config file {cfg_path} does not exist")
        base = merge(base, nest(yaml.safe_load(cfg_path.read_text(encoding="utf-8")), str(cfg_path)))
    base = merge(base, nest(raw.get("base"), f"{where}: base"))
    config_from_dict(base, f"{where}: base")
    methods = _methods(raw["methods"], f"{where}: methods")
    for name, changes in methods.items():
        config_from_dict(merge(base, changes), f"{where}: methods.{name}")

    protocols, families = {}, {}
    if raw.get("budgets") is not None:
        protocols, families = _budget_protocols(raw["budgets"], f"{where}: budgets")
    explicit = raw.get("protocols") or {}
    if not isinstance(explicit, dict):
        raise ValueError(f"{where}: protocols must map names to protocols, got {explicit!r}")
    for name, proto in explicit.items():
        _check_name(name, f"{where}: protocols")
        if name in protocols:
            raise ValueError(f"{where}: protocol {name!r} is defined both under protocols and by budgets")
        protocols[str(name)] = {"kind": proto} if isinstance(proto, str) else proto
        families[str(name)] = str(name)
    if not protocols:
        raise ValueError(f"{where}: give 'budgets' or 'protocols' (what annotation each run trains from)")

    from everylabel.metrics import METRIC_NAMES

    metrics = raw.get("metrics", list(DEFAULT_METRICS))
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    for m in metrics:
        if m not in METRIC_NAMES:
            close = difflib.get_close_matches(str(m), METRIC_NAMES, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(f"{where}: unknown metric {m!r}; {hint}available: {', '.join(METRIC_NAMES)}")
    from everylabel.annotations.cost import cost_model_from_dict

    cost = dict(raw.get("cost") or {})
    cost_model_from_dict(cost, f"{where}: cost")
    exclude = raw.get("exclude") or []
    if not isinstance(exclude, list):
        raise ValueError(f"{where}: exclude must be a list of {{method: pattern, protocol: pattern}}")
    for i, e in enumerate(exclude):
        if not isinstance(e, dict) or not e:
            raise ValueError(f"{where}: exclude[{i}] must be a mapping with 'method' and/or 'protocol'")
        _unknown(e, EXCLUDE_KEYS, f"{where}: exclude[{i}]")
    folds = raw.get("folds")
    if folds in (0, 1):
        folds = None
    if folds is not None and (isinstance(folds, bool) or not isinstance(folds, int) or folds < 2):
        raise ValueError(f"{where}: folds must be an integer >= 2 (or 0/absent for none), got {folds!r}")
    fold_seed = raw.get("fold_seed", 0)
    if isinstance(fold_seed, bool) or not isinstance(fold_seed, int):
        raise ValueError(f"{where}: fold_seed must be an integer, got {fold_seed!r}")
    spec = SweepSpec(name=_check_name(raw.get("name", path.stem), f"{where}: name"), source=str(path.absolute()),
                     data=str(data), base=base, methods=methods, protocols=protocols, families=families,
                     seeds=_int_list(raw.get("seeds", [0]), f"{where}: seeds"), folds=folds, fold_seed=fold_seed,
                     metrics=tuple(metrics), cost=cost, exclude=tuple(exclude))
    _check_against_data(spec, where)
    return spec


_SIMULATED_KIND = {"mask": "mask", "partial": "partial", "sparse": "scribble", "scribbles": "scribble",
                   "boxes": "boxes", "slice_boxes": "boxes", "points": "points", "tags": "tags", "elastic": "mask",
                   "shift": "mask", "erode": "mask", "dilate": "mask", "crop": "mask", "unlabelled": "unlabelled"}


def _protocol_kinds(parsed, pool: int) -> set[str]:
    """The annotation kinds (Kind values, or "unlabelled") the train cases get under a protocol with ``pool``
    cases to draw from."""
    def kinds(steps):
        return {_SIMULATED_KIND[s.kind] for s in steps or []}

    out = set().union(*[kinds(s) for s in parsed.cases.values()]) if parsed.cases else set()
    left = pool
    for n, steps in parsed.assign:
        take = left if n is None else min(n, left)
        if take:
            out |= kinds(steps)
        left -= take
    if left and parsed.default is not None:
        out |= kinds(parsed.default)
    return out


def _check_against_data(spec: SweepSpec, where: str) -> None:
    """Budgets vs train cases, named cases, test references, method vs protocol kinds."""
    from everylabel.annotations.kinds import Kind
    from everylabel.annotations.protocol import parse_protocol
    from everylabel.experiments.config import config_from_dict, merge
    from everylabel.methods import build_method

    folds = range(spec.folds) if spec.folds else [None]
    layouts = [source_manifest(spec.data, spec.folds, f, spec.fold_seed) for f in folds]
    whole = source_manifest(spec.data) if spec.folds else layouts[0]
    ids = {c["id"] for c in whole["cases"]}
    for layout in layouts:
        if not any(c["split"] == "test" for c in layout["cases"]):
            raise ValueError(f"{where}: {spec.data} has no test case with a reference mask to evaluate on; add a "
                             "test split or set folds")
    problems, incompatible = [], []
    for pname, proto in spec.protocols.items():
        try:
            parsed = parse_protocol(proto)
        except ValueError as e:
            raise ValueError(f"{where}: protocols.{pname}: {e}") from e
        unknown = sorted(set(parsed.cases) - ids)
        if unknown:
            raise ValueError(f"{where}: protocols.{pname} names cases {unknown} that are not in {spec.data}")

        def pool_size(layout):
            return len([c for c in layout["cases"] if c["split"] in parsed.splits and c["id"] not in parsed.cases])

        pool = min(pool_size(layout) for layout in layouts)
        if parsed.requested_cases > pool:
            per = f" ({pool} outside the held-out fold with folds: {spec.folds})" if spec.folds else ""
            source = "budgets" if spec.families[pname] != pname else f"protocols.{pname}"
            problems.append(f"{source}: {pname!r} asks for {parsed.requested_cases} cases but the "
                            f"{'/'.join(parsed.splits)} split has {pool_size(whole)}{per}")
            continue
        given = _protocol_kinds(parsed, pool)
        kinds = {Kind(k) for k in given - {"unlabelled"}}
        unlabelled = "unlabelled" in given or any(c["split"] == "unlabelled" for c in whole["cases"])
        for mname, changes in spec.methods.items():
            if spec.excluded(mname, pname):
                continue
            cfg = config_from_dict(merge(spec.base, changes))
            method = build_method(cfg.method)
            if method.uses and not method.uses & kinds:
                have = ", ".join(sorted(k.value for k in kinds)) or "no annotation"
                incompatible.append(f"{mname} x {pname} (the method learns from "
                                    f"{', '.join(sorted(k.value for k in method.uses))}; the protocol gives {have})")
            elif cfg.data.labelled_fraction is not None and cfg.data.labelled_fraction < 1 and not unlabelled:
                incompatible.append(f"{mname} x {pname} (data.labelled_fraction={cfg.data.labelled_fraction} "
                                    "draws unlabelled cases; the protocol leaves none unlabelled)")
    if problems:
        raise ValueError(f"{where}: budgets no protocol can meet:\n  - " + "\n  - ".join(problems))
    if incompatible:
        raise ValueError(f"{where}: methods that cannot learn from a protocol's annotations (add them to "
                         "'exclude'):\n  - " + "\n  - ".join(incompatible))


# ------------------------------------------------------------------------------------------------------ expansion


def expand(spec: SweepSpec) -> list[RunSpec]:
    """Every run of the grid, in method, protocol, seed, fold order; names are deterministic."""
    from everylabel.annotations.protocol import parse_protocol
    from everylabel.experiments.config import config_from_dict, merge

    folds = list(range(spec.folds)) if spec.folds else [None]
    pools = {}
    for f in folds:
        layout = source_manifest(spec.data, spec.folds, f, spec.fold_seed)
        pools[f] = layout["cases"]
    runs = []
    for mname, changes in spec.methods.items():
        for pname, proto in spec.protocols.items():
            if spec.excluded(mname, pname):
                continue
            parsed = parse_protocol(proto)
            for seed in spec.seeds:
                for fold in folds:
                    overrides = merge(merge(spec.base, changes), {"train": {"seed": int(seed)}})
                    resolved = config_from_dict(overrides).to_dict()
                    pool = len([c for c in pools[fold] if c["split"] in parsed.splits and c["id"] not in parsed.cases])
                    key = {"config": resolved, "protocol": proto, "seed": seed, "fold": fold, "folds": spec.folds,
                           "fold_seed": spec.fold_seed, "data": spec.data, "metrics": list(spec.metrics),
                           "cost": spec.cost}
                    run_hash = _stable_hash(key)
                    name = f"{mname}__{pname}__seed{seed}" + ("" if fold is None else f"__fold{fold}") + \
                        f"__{run_hash}"
                    runs.append(RunSpec(name=name, method=mname, protocol=pname,
                                        protocol_family=spec.families[pname], protocol_spec=proto, seed=int(seed),
                                        fold=fold, folds=spec.folds, fold_seed=spec.fold_seed, data=spec.data,
                                        overrides=overrides, metrics=spec.metrics, cost=spec.cost, run_hash=run_hash,
                                        config_hash=_stable_hash(resolved, 12),
                                        expected_masks=parsed.mask_count(pool)))
    return runs


# -------------------------------------------------------------------------------------------------------- running


def default_sweep_dir(sweep_file: str | Path, spec: SweepSpec) -> Path:
    """``<folder of the sweep file>/<sweep name>``."""
    return Path(sweep_file).absolute().parent / spec.name


def prepare(spec: SweepSpec, runs: list[RunSpec], sweep_dir: str | Path) -> None:
    """Write ``sweep.json`` and every ``runs/<name>/spec.json`` (atomically; unchanged files are left alone)."""
    from everylabel.experiments.results import atomic_write_text

    sweep_dir = Path(sweep_dir)
    info = {"name": spec.name, "source": spec.source, "data": spec.data, "methods": list(spec.methods),
            "protocols": list(spec.protocols), "families": spec.families, "seeds": list(spec.seeds),
            "folds": spec.folds, "metrics": list(spec.metrics), "runs": [r.name for r in runs]}
    atomic_write_text(sweep_dir / "sweep.json", json.dumps(info, indent=1) + "\n")
    for run in runs:
        path = sweep_dir / "runs" / run.name / "spec.json"
        text = json.dumps(run.to_dict(), indent=1) + "\n"
        if not path.is_file() or path.read_text(encoding="utf-8") != text:
            atomic_write_text(path, text)


def run_status(sweep_dir: str | Path, run: RunSpec) -> str:
    """``"done"`` (a row with status ok), ``"failed"`` (a failed row), ``"started"`` (a run directory with
    training output but no row: interrupted, or running elsewhere) or ``"pending"``."""
    from everylabel.experiments.results import read_result, result_path

    path = result_path(sweep_dir, run.name)
    if path.is_file():
        try:
            return "done" if read_result(path)["status"] == "ok" else "failed"
        except ValueError:
            return "pending"
    return "started" if (Path(sweep_dir) / "runs" / run.name / "train").exists() else "pending"


def run_command(sweep_dir: str | Path, run: RunSpec) -> list[str]:
    """The command that executes one run (what ``--print-commands`` prints)."""
    return [sys.executable, "-m", "everylabel", "run-one", str(Path(sweep_dir).absolute() / "runs" / run.name)]


def shell_command(sweep_dir: str | Path, run: RunSpec) -> str:
    return shlex.join(run_command(sweep_dir, run))


def execute(runs: list[RunSpec], sweep_dir: str | Path, jobs: int = 1,
            echo: Callable[[str], None] = print) -> dict[str, str]:
    """Run each run as its own process (``jobs`` at a time); returns name -> ``"ok"`` / ``"failed"`` /
    ``"interrupted"`` / ``"busy"`` (locked by another process).

    A run's output goes to ``RUN_DIR/run.log``. On Ctrl-C the running processes get SIGTERM, save a checkpoint
    and stop; starting the sweep again continues them.
    """
    sweep_dir = Path(sweep_dir)
    env = dict(os.environ)
    if jobs > 1 and "OMP_NUM_THREADS" not in env:
        env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // jobs))
    procs: dict[str, subprocess.Popen] = {}
    outcome: dict[str, str] = {}
    total = len(runs)
    stopping = False

    def one(run: RunSpec) -> tuple[str, str, float]:
        t0 = time.perf_counter()
        run_dir = sweep_dir / "runs" / run.name
        run_dir.mkdir(parents=True, exist_ok=True)
        if stopping:
            return run.name, "interrupted", 0.0
        with open(run_dir / "run.log", "ab") as log:
            proc = subprocess.Popen(run_command(sweep_dir, run), stdout=log, stderr=subprocess.STDOUT, env=env)
            procs[run.name] = proc
            code = proc.wait()
        procs.pop(run.name, None)
        status = {0: "ok", 1: "failed", 4: "busy"}.get(code, "interrupted")
        return run.name, status, time.perf_counter() - t0

    done = 0
    pool = ThreadPoolExecutor(max_workers=max(1, jobs))
    try:
        futures = [pool.submit(one, r) for r in runs]
        for fut in as_completed(futures):
            name, status, seconds = fut.result()
            outcome[name] = status
            done += 1
            detail = ""
            if status == "failed":
                from everylabel.experiments.results import read_result, result_path

                try:
                    detail = ": " + str(read_result(result_path(sweep_dir, name)).get("error", "")).splitlines()[0]
                except (ValueError, IndexError):
                    pass
            elif status == "interrupted":
                detail = f" (see {sweep_dir / 'runs' / name / 'run.log'})"
            echo(f"[{done}/{total}] {status:<11} {name} ({seconds:.0f} s){detail}")
    except KeyboardInterrupt:
        stopping = True
        for proc in list(procs.values()):
            proc.terminate()
        for proc in list(procs.values()):
            try:
                proc.wait(timeout=120)
            except subprocess.TimeoutExpired:
                proc.kill()
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    pool.shutdown(wait=True)
    return outcome


# ---------------------------------------------------------------------------------------------------- one run


class RunInterrupted(RuntimeError):
    """Training stopped before its last step (SIGTERM or ``stop_at``): no result is written; run again to resume."""


class RunBusy(RuntimeError):
    """Another process holds the run's lock."""


class _Lock:
    """An exclusive ``flock`` on ``RUN_DIR/.lock``; the OS releases it when the process dies."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.file = None

    def __enter__(self):
        self.file = open(self.path, "a+")
        try:
            import fcntl
        except ImportError:  # not POSIX: no locking
            return self
        try:
            fcntl.flock(self.file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self.file.close()
            raise RunBusy(f"{self.path.parent} is being run by another process") from None
        return self

    def __exit__(self, *exc):
        self.file.close()


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def run_one(run_dir: str | Path, progress: bool = False) -> dict:
    """Execute one run: simulate its protocol, price it, train (resuming a checkpoint), predict and evaluate the test
    split, and write the row to the sweep's results store. Any error is caught and recorded as a failed row.

    Returns:
        The row written.

    Raises:
        RunInterrupted: training stopped early (SIGTERM); nothing is written.
        RunBusy: another process runs it.
        ValueError: ``run_dir`` holds no ``spec.json``.
    """
    import platform
    import shutil
    import traceback

    from everylabel.annotations.cost import cost_model_from_dict, price_simulation
    from everylabel.annotations.protocol import simulate_manifest
    from everylabel.engine.checkpoint import code_version
    from everylabel.experiments.results import write_result

    run_dir = Path(run_dir).absolute()
    if not (run_dir / "spec.json").is_file():
        raise ValueError(f"{run_dir} is not a sweep run directory (no spec.json)")
    spec = RunSpec.from_dict(json.loads((run_dir / "spec.json").read_text(encoding="utf-8")))
    sweep_dir = run_dir.parent.parent
    rel = run_dir.relative_to(sweep_dir).as_posix()
    row: dict = {"name": spec.name, "status": "failed", "method": spec.method, "protocol": spec.protocol,
                 "protocol_family": spec.protocol_family, "protocol_spec": spec.protocol_spec, "seed": spec.seed,
                 "fold": spec.fold, "folds": spec.folds, "run_hash": spec.run_hash, "config_hash": spec.config_hash,
                 "overrides": spec.overrides, "metrics": list(spec.metrics), "started": _now(),
                 "host": platform.node(), "code": code_version(),
                 "paths": {"run_dir": rel, "pred_dir": f"{rel}/pred", "reference": f"{rel}/data/source/manifest.yaml",
                           "log": f"{rel}/run.log"}}
    t0 = time.perf_counter()
    with _Lock(run_dir):
        try:
            from everylabel.engine.evaluation import evaluate
            from everylabel.engine.predictor import predict
            from everylabel.engine.trainer import train
            from everylabel.experiments.config import config_from_dict

            cfg = config_from_dict(spec.overrides)
            row["config"] = cfg.to_dict()
            source = write_source_manifest(spec, run_dir / "data" / "source" / "manifest.yaml")
            simulated = simulate_manifest(source, run_dir / "data" / "simulated", spec.protocol_spec, seed=spec.seed)
            cost = price_simulation(simulated.parent, cost_model_from_dict(spec.cost))
            row.update(n_masks=cost["n_masks"], n_train_cases=cost["n_cases"], kinds=cost["kinds"],
                       cost_seconds=cost["seconds"], full_mask_seconds=cost["full_mask_seconds"],
                       cost_fraction=cost["cost_fraction"],
                       cost={k: cost[k] for k in ("by_kind", "model")})
            train_dir = run_dir / "train"
            resume = (train_dir / "checkpoints" / "last.pt").is_file()
            metrics = train(simulated, train_dir, cfg, resume=resume, progress=progress)
            if not metrics["completed"]:
                raise RunInterrupted(f"training stopped at step {metrics['steps']} of {cfg.train.steps}")
            row["train"] = {"steps": metrics["steps"], "train_seconds": metrics["train_seconds"],
                            "best_val_dice": metrics["best_val_dice"], "resumed": resume}
            pred_dir = run_dir / "pred"
            if pred_dir.exists():
                shutil.rmtree(pred_dir)
            predict(train_dir, source, pred_dir, split="test", progress=False)
            summary = evaluate(pred_dir, source, run_dir / "eval", metrics=spec.metrics, split="test")
            row["cases"] = summary.pop("records")
            row["summary"] = {m: {k: summary["metrics"][m][k] for k in ("mean", "std", "foreground_mean",
                                                                        "n_defined", "n_undefined")}
                              for m in spec.metrics}
            row["status"] = "ok"
        except (RunInterrupted, KeyboardInterrupt):
            raise
        except Exception as e:  # recorded, so the sweep goes on
            row["error"] = f"{type(e).__name__}: {e}"
            row["traceback"] = traceback.format_exc()
        row["finished"] = _now()
        row["wall_seconds"] = time.perf_counter() - t0
        if row["status"] == "ok":
            from everylabel.experiments.results import run_score

            for m in spec.metrics:
                row["summary"][m]["score"] = run_score(row, m)
        write_result(sweep_dir, row)
    return row


def summarize_plan(runs: list[RunSpec], sweep_dir: str | Path) -> list[dict]:
    """One line per run for ``--dry-run``: name, method, protocol, seed, fold, expected masks, status."""
    return [{"name": r.name, "method": r.method, "protocol": r.protocol, "seed": r.seed,
             "fold": "" if r.fold is None else r.fold, "masks": r.expected_masks,
             "status": run_status(sweep_dir, r)} for r in runs]


__all__ = ["DEFAULT_METRICS", "RunBusy", "RunInterrupted", "RunSpec", "SweepSpec", "default_sweep_dir", "execute",
           "expand", "fold_assignment", "load_sweep", "nest", "prepare", "run_command", "run_one", "run_status",
           "shell_command", "source_manifest", "summarize_plan"]
