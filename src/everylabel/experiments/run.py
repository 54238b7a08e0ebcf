"""One run of a sweep: its spec (:class:`RunSpec`, ``RUN_DIR/spec.json``), its dataset (:func:`source_manifest`),
its execution (:func:`run_one`: simulate -> train -> predict -> evaluate -> result row, under a lock) and running
many runs as processes (:func:`execute`, :func:`run_status`, :func:`run_command`). Planning the runs of a sweep file
is :mod:`.sweep`.

A run simulates its protocol from the full masks (:func:`~everylabel.annotations.protocol.simulate_manifest`, seeded
by the run's seed), prices it (:func:`~everylabel.annotations.cost.price_simulation`), trains, predicts the test
split, evaluates against the original references, and writes its row to ``SWEEP_DIR/results/<name>.json`` (see
:mod:`.results`). Its dataset is the sweep's data with the run's fold applied: a fold's held-out train cases become
the validation split, or the test split when the dataset has none; test cases without a reference mask become
unlabelled.

Runs are independent processes (``python -m everylabel run-one RUN_DIR``): finished runs are skipped when the sweep
is started again, an interrupted run is resumed from its last checkpoint, a failing run is recorded with its error
and traceback and the sweep goes on. On a cluster, a job array spreads the pending runs over machines that share the
sweep directory (each run locks its directory; starting ``--print-commands`` again lists only what is missing)::

    everylabel sweep budgets.yaml --print-commands > commands.txt
    sbatch --array=1-$(wc -l < commands.txt) --wrap 'sed -n "${SLURM_ARRAY_TASK_ID}p" commands.txt | bash'
    everylabel report budgets/         # when they are done
"""

from __future__ import annotations

import json
import os
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
        if run_status(sweep_dir, spec) == "stale":  # a default changed since the row was written: start afresh
            archive_stale(sweep_dir, spec)
        try:
            from everylabel.engine.evaluation import evaluate
            from everylabel.engine.predictor import predict
            from everylabel.engine.trainer import train
            from everylabel.experiments.config import config_from_dict, with_effective_lr

            cfg = config_from_dict(spec.overrides)
            row["config"] = with_effective_lr(cfg.to_dict())
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
                length = f"{cfg.train.minutes:g} minutes" if cfg.train.minutes else f"{cfg.train.steps} steps"
                raise RunInterrupted(f"training stopped at step {metrics['steps']} of a {length} schedule")
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


# ------------------------------------------------------------------------------------------------------ processes


def run_state(sweep_dir: str | Path, run: RunSpec) -> tuple[str, list[str]]:
    """:func:`run_status` and, for a stale run, the config keys that changed (:func:`stale_keys`; else [])."""
    from everylabel.experiments.results import read_result, result_path

    path = result_path(sweep_dir, run.name)
    if path.is_file():
        try:
            row = read_result(path)
        except ValueError:
            return "pending", []
        if row["status"] != "ok":
            return "failed", []
        changed = stale_keys(row, run)
        return ("stale" if changed else "done"), changed
    return ("started" if (Path(sweep_dir) / "runs" / run.name / "train").exists() else "pending"), []


def run_status(sweep_dir: str | Path, run: RunSpec) -> str:
    """``"done"`` (a row with status ok), ``"stale"`` (a row with status ok whose stored config differs from the
    run's config as everylabel resolves it now: a default changed since, see :func:`stale_keys`), ``"failed"`` (a
    failed row), ``"started"`` (a run directory with training output but no row: interrupted, or running elsewhere)
    or ``"pending"``."""
    return run_state(sweep_dir, run)[0]


def canonical(value) -> str:
    """A config value in one comparable form (tuples and lists alike, keys sorted)."""
    return json.dumps(value, sort_keys=True, default=str)


def _flatten(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = canonical(v)
    return out


def stale_keys(row: dict, run: RunSpec) -> list[str]:
    """Config keys whose value in a finished row differs from the run's config resolved by the current code.

    Run names hash only the config's difference from the defaults (see :mod:`.sweep`), so a changed default keeps
    the name; this comparison catches it. Keys that did not exist when the row was written (options added since,
    at their defaults) are not compared. ``optim.lr`` is compared as the learning rate trained with: rows store it
    so; a row that stores ``null`` predates that and meant :data:`~everylabel.experiments.config.FORMER_DEFAULT_LR`.
    """
    from everylabel.experiments.config import FORMER_DEFAULT_LR, config_from_dict, with_effective_lr

    stored = _flatten(with_effective_lr(row.get("config") or {}, FORMER_DEFAULT_LR))
    now = _flatten(with_effective_lr(config_from_dict(run.overrides).to_dict()))
    return sorted(k for k in stored.keys() & now.keys() if stored[k] != now[k])


def archive_stale(sweep_dir: str | Path, run: RunSpec) -> Path:
    """Move a stale run's row and outputs to ``RUN_DIR/stale/<finished time>/`` so the run starts afresh."""
    from everylabel.experiments.results import read_result, result_path

    run_dir = Path(sweep_dir) / "runs" / run.name
    path = result_path(sweep_dir, run.name)
    row = read_result(path)
    dest = run_dir / "stale" / str(row.get("finished", _now())).replace(":", "")
    dest.mkdir(parents=True, exist_ok=True)
    for name in ("train", "pred", "eval", "data"):  # run.log stays: the sweep appends to it
        if (run_dir / name).exists():
            os.replace(run_dir / name, dest / name)
    os.replace(path, dest / "result.json")
    return dest


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


__all__ = ["RunBusy", "RunInterrupted", "RunSpec", "execute", "fold_assignment", "run_command", "run_one",
           "run_state", "run_status", "shell_command", "stale_keys", "archive_stale", "source_manifest",
           "write_source_manifest"]
