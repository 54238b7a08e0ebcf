"""Label-budget sweeps: the sweep file, its validation, and its expansion into runs (methods x annotation protocols x
seeds (x folds), one process and one directory per run). Executing a run is :mod:`.run`.

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
hash covers everything the sweep file sets for the run (config, protocol, seed, fold, data, metrics, prices), so a
changed sweep file never passes for a finished run. The config enters the hash as its difference from everylabel's
defaults (:func:`config_delta`): a release that adds an option with a default keeps finished runs valid. A changed
default value does not change the hash either, but every result row stores the full resolved config: a
finished run whose stored config differs from today's resolution of its config is "stale" and runs again (its old
outputs move to ``runs/<name>/stale/``; see :func:`~everylabel.experiments.run.stale_keys`). Options added after
runs were recorded and whose default then is not the old behaviour are listed in :data:`FORMER_DEFAULTS`: they
enter the hash as their difference from the old behaviour, so a sweep that pins the old value keeps its finished
runs and one that takes the new default gets new run names.
:mod:`.run` describes what a run does, where its row goes, how runs resume and how to spread them over a cluster.

Sweeps set ``data.val_fraction: 0`` unless the base config changes it: with a budget of a few masks, every mask
should train (the model of a run is then its last checkpoint). With ``folds: k`` the train cases are split into k
folds (seeded by ``fold_seed``, the same for every seed); a fold's held-out cases become the validation split, or
the test split when the dataset has none. Test cases without a reference mask become unlabelled.

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
from dataclasses import dataclass
from pathlib import Path

import yaml

# the runner; names not used here are re-exported (cli.py and older code import them from this module)
from everylabel.experiments.run import (
    RunBusy,
    RunInterrupted,
    RunSpec,
    canonical,
    execute,
    fold_assignment,
    run_command,
    run_one,
    run_state,
    run_status,
    shell_command,
    source_manifest,
    stale_keys,
)

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


def config_delta(resolved: dict, defaults: dict) -> dict:
    """The entries of a resolved config dict that differ from ``defaults`` (recursively; new keys are kept)."""
    out = {}
    for key, value in resolved.items():
        base = defaults.get(key, _MISSING)
        if isinstance(value, dict) and isinstance(base, dict):
            sub = config_delta(value, base)
            if sub:
                out[key] = sub
        elif base is _MISSING or canonical(value) != canonical(base):
            out[key] = value
    return out


_MISSING = object()

FORMER_DEFAULTS: dict = {"network": {"stem_stride": 1}}
"""Options whose default is not the behaviour of runs recorded before they existed, at that old behaviour. Run names
hash the config's difference from the defaults with these put back (see the module docstring).

- ``network.stem_stride``: added 2026-11-24 with default 2 (strided stem); earlier runs used the nnU-Net layout.
"""


def hash_defaults(optim_name: str = "adamw") -> dict:
    """The defaults that run names are hashed against: today's, with :data:`FORMER_DEFAULTS` put back and the
    learning rate ``optim.lr: null`` stood for before 2026-11-25 for ``optim_name``
    (:data:`~everylabel.experiments.config.FORMER_DEFAULT_LR`). Run names hash the effective learning rate, so a
    sweep that pins ``optim.lr: 0.003`` keeps the names its runs had when that was AdamW's default and one that takes
    today's default gets new names."""
    from everylabel.experiments.config import FORMER_DEFAULT_LR, config_from_dict, merge

    return merge(merge(config_from_dict({}).to_dict(), FORMER_DEFAULTS),
                 {"optim": {"lr": FORMER_DEFAULT_LR.get(optim_name)}})


def _stable_hash(obj, n: int = 8) -> str:
    return hashlib.sha1(json.dumps(obj, sort_keys=True, default=str).encode("utf-8")).hexdigest()[:n]


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
    from everylabel.experiments.config import config_from_dict, merge, with_effective_lr

    folds = list(range(spec.folds)) if spec.folds else [None]
    pools = {}
    for f in folds:
        layout = source_manifest(spec.data, spec.folds, f, spec.fold_seed)
        pools[f] = layout["cases"]
    defaults: dict = {}  # per optimizer name; an unknown name fails in its run, with the trainer's error
    runs = []
    for mname, changes in spec.methods.items():
        for pname, proto in spec.protocols.items():
            if spec.excluded(mname, pname):
                continue
            parsed = parse_protocol(proto)
            for seed in spec.seeds:
                for fold in folds:
                    overrides = merge(merge(spec.base, changes), {"train": {"seed": int(seed)}})
                    resolved = with_effective_lr(config_from_dict(overrides).to_dict())
                    pool = len([c for c in pools[fold] if c["split"] in parsed.splits and c["id"] not in parsed.cases])
                    optim = resolved["optim"]["name"]
                    if optim not in defaults:
                        defaults[optim] = hash_defaults(optim)
                    delta = config_delta(resolved, defaults[optim])
                    key = {"config": delta, "protocol": proto, "seed": seed, "fold": fold, "folds": spec.folds,
                           "fold_seed": spec.fold_seed, "data": spec.data, "metrics": list(spec.metrics),
                           "cost": spec.cost}
                    run_hash = _stable_hash(key)
                    name = f"{mname}__{pname}__seed{seed}" + ("" if fold is None else f"__fold{fold}") + \
                        f"__{run_hash}"
                    runs.append(RunSpec(name=name, method=mname, protocol=pname,
                                        protocol_family=spec.families[pname], protocol_spec=proto, seed=int(seed),
                                        fold=fold, folds=spec.folds, fold_seed=spec.fold_seed, data=spec.data,
                                        overrides=overrides, metrics=spec.metrics, cost=spec.cost, run_hash=run_hash,
                                        config_hash=_stable_hash(delta, 12),
                                        expected_masks=parsed.mask_count(pool)))
    return runs


# ------------------------------------------------------------------------------------------------------- planning


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


def summarize_plan(runs: list[RunSpec], sweep_dir: str | Path) -> list[dict]:
    """One line per run for ``--dry-run``: name, method, protocol, seed, fold, expected masks, status, and the
    config keys whose defaults changed for a stale run (``changed``)."""
    out = []
    for r in runs:
        status, changed = run_state(sweep_dir, r)
        out.append({"name": r.name, "method": r.method, "protocol": r.protocol, "seed": r.seed,
                    "fold": "" if r.fold is None else r.fold, "masks": r.expected_masks, "status": status,
                    "changed": changed})
    return out


__all__ = ["DEFAULT_METRICS", "RunBusy", "RunInterrupted", "RunSpec", "SweepSpec", "default_sweep_dir", "execute",
           "expand", "fold_assignment", "load_sweep", "nest", "prepare", "run_command", "run_one", "run_status",
           "shell_command", "source_manifest", "stale_keys", "summarize_plan"]
