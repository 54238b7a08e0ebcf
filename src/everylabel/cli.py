"""Command-line entry points. Only parsing here: each command builds a config and calls the library.

Heavy imports (torch, the engine) happen inside the commands so ``everylabel --help`` is instant.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

import click


def _fail(e: Exception) -> None:
    click.echo(f"error: {e}", err=True)
    sys.exit(2)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="everylabel")
def main() -> None:
    """everylabel: medical image segmentation that learns from every annotation a team can afford."""


@main.command()
@click.argument("data", type=click.Path(exists=True))
@click.option("--quick", is_flag=True, help="Check files and annotations without reading every voxel.")
def check(data: str, quick: bool) -> None:
    """Validate a dataset (manifest or nnU-Net raw folder) and print every problem at once."""
    from everylabel.data.manifest import load_dataset
    from everylabel.data.validate import validate_manifest

    try:
        manifest = load_dataset(data)
    except ValueError as e:
        _fail(e)
    problems = validate_manifest(manifest, deep=not quick)
    kinds: dict[str, int] = {}
    for c in manifest.cases:
        kinds[c.split] = kinds.get(c.split, 0) + 1
    if problems:
        click.echo(f"{len(problems)} problem(s) in {data}:", err=True)
        for p in problems:
            click.echo(f"  - {p}", err=True)
        sys.exit(1)
    splits = ", ".join(f"{n} {s}" for s, n in sorted(kinds.items()))
    click.echo(f"{data}: OK: {len(manifest.cases)} cases ({splits}); classes: "
               + ", ".join(f"{k}={v}" for k, v in sorted(manifest.labels.items())))


@main.command()
@click.option("--data", "data", required=True, type=click.Path(exists=True),
              help="A manifest (.yaml/.json) or an nnU-Net v2 raw dataset folder.")
@click.option("--out", "out", required=True, type=click.Path(), help="Run directory.")
@click.option("--steps", type=int, default=None, help="Override train.steps (the schedule length).")
@click.option("--minutes", type=float, default=None,
              help="Train for this wall-clock budget instead of train.steps (train.minutes; the schedule follows "
                   "the time spent).")
@click.option("--config", "config", type=click.Path(exists=True), default=None, help="YAML with config changes.")
@click.option("--set", "overrides", multiple=True, help="key=value config override, e.g. train.seed=1.")
@click.option("--resume", is_flag=True, help="Continue the run in --out from its last checkpoint.")
@click.option("--no-progress", is_flag=True, help="No progress bar.")
def train(data: str, out: str, steps: int | None, minutes: float | None, config: str | None,
          overrides: tuple[str, ...], resume: bool, no_progress: bool) -> None:
    """Train a model on DATA into the run directory OUT."""
    from everylabel.experiments.config import load_config

    try:
        ov = list(overrides) + ([f"train.steps={steps}"] if steps is not None else []) + (
            [f"train.minutes={minutes}"] if minutes is not None else [])
        cfg = load_config(config, ov)
    except ValueError as e:
        _fail(e)
    from everylabel.engine.trainer import train as run_train

    try:
        metrics = run_train(data, out, cfg, resume=resume, progress=not no_progress)
    except ValueError as e:
        _fail(e)
    except KeyboardInterrupt:
        click.echo(f"interrupted; the last checkpoint is in {out}; continue with --resume", err=True)
        sys.exit(130)
    best = metrics.get("best_val_dice")
    click.echo(f"trained {metrics['steps']} steps in {metrics['train_seconds']:.0f} s"
               + (f"; best validation Dice {best:.4f}" if best is not None else "") + f"; run in {out}")


@main.command()
@click.option("--model", "model", required=True, type=click.Path(exists=True), help="A training run directory.")
@click.option("--input", "inputs", required=True, type=click.Path(exists=True),
              help="A folder of images or a manifest.")
@click.option("--out", "out", required=True, type=click.Path(), help="Output folder.")
@click.option("--checkpoint", type=click.Choice(["best", "last"]), default="best")
@click.option("--tta/--no-tta", default=None, help="Flip test-time augmentation (default: from the run's config).")
@click.option("--save-probabilities", is_flag=True, help="Also write per-class probabilities.")
@click.option("--split", default=None, help="With a manifest: only the cases of this split (e.g. test).")
def predict(model: str, inputs: str, out: str, checkpoint: str, tta: bool | None, save_probabilities: bool,
            split: str | None) -> None:
    """Predict a label map per case, in the input's format and geometry."""
    from everylabel.engine.predictor import predict as run_predict

    try:
        outs = run_predict(model, inputs, out, checkpoint=checkpoint, tta=tta, save_probabilities=save_probabilities,
                           split=split)
    except ValueError as e:
        _fail(e)
    click.echo(f"wrote {len(outs)} prediction(s) to {out}")


@main.command()
@click.option("--pred", "pred", required=True, type=click.Path(exists=True), help="Folder of predictions.")
@click.option("--ref", "ref", required=True, type=click.Path(exists=True),
              help="Folder of reference label maps or a manifest.")
@click.option("--out", "out", type=click.Path(), default=None, help="Folder for cases.csv, summary.json, summary.md.")
@click.option("--metrics", "metrics", default=None,
              help="Comma-separated metric names (default: overlap + surface metrics).")
@click.option("--split", default=None, help="Only cases of this manifest split (e.g. test).")
@click.option("--include-background", is_flag=True)
def evaluate(pred: str, ref: str, out: str | None, metrics: str | None, split: str | None,
             include_background: bool) -> None:
    """Evaluate predictions against references; prints a Markdown table."""
    from everylabel.engine.evaluation import evaluate as run_evaluate
    from everylabel.metrics import DEFAULT_METRICS, summary_markdown

    names = tuple(m.strip() for m in metrics.split(",")) if metrics else DEFAULT_METRICS
    try:
        summary = run_evaluate(pred, ref, out, metrics=names, split=split, include_background=include_background)
    except ValueError as e:
        _fail(e)
    click.echo(summary_markdown(summary))


@main.command()
@click.argument("manifest", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out", required=True, type=click.Path(), help="Folder for the new manifest and label files.")
@click.option("--protocol", "protocol", default=None,
              help="YAML/JSON protocol file, or a simulator name applied to every train case (e.g. boxes).")
@click.option("--param", "params", multiple=True, help="key=value simulator parameter (with a simulator name).")
@click.option("--seed", type=int, default=0, show_default=True)
def simulate(manifest: str, out: str, protocol: str | None, params: tuple[str, ...], seed: int) -> None:
    """Turn full masks into cheaper labels (boxes, scribbles, points, tags, partial, sparse, noisy masks).

    Writes OUT/manifest.yaml (loadable by train/check) and OUT/simulation.json with every parameter and the seed,
    so users can try an annotation protocol on their own data before paying for it.
    """
    import yaml

    from everylabel.annotations import SIMULATORS, simulate_manifest

    if protocol is None:
        _fail(ValueError(f"--protocol is required: a protocol file or one of {', '.join(sorted(SIMULATORS))}"))
    if Path(protocol).is_file():
        spec = yaml.safe_load(Path(protocol).read_text())
    else:
        spec = {"kind": protocol, "params": {k: yaml.safe_load(v) for k, v in (p.split("=", 1) for p in params)}}
    try:
        path = simulate_manifest(manifest, out, spec, seed=seed)
    except ValueError as e:
        _fail(e)
    click.echo(f"wrote {path}")


@main.command()
@click.option("--out", "out", type=click.Path(), default=None, help="Keep the demo's data and run here.")
@click.option("--steps", type=int, default=1500, show_default=True)
@click.option("--minutes", type=float, default=None,
              help="Train for this wall-clock budget instead of --steps (train.minutes). On a slow machine "
                   "`--minutes 2` keeps the demo under 3 minutes; its result then depends on the machine's speed.")
@click.option("--seed", type=int, default=0, show_default=True)
def demo(out: str | None, steps: int, minutes: float | None, seed: int) -> None:
    """Build a synthetic 2D dataset, train, predict, evaluate and print the table (about 1.5 minutes on 2 cores)."""
    from everylabel.data.synthetic import make_dataset
    from everylabel.engine.evaluation import evaluate as run_evaluate
    from everylabel.engine.predictor import predict as run_predict
    from everylabel.engine.trainer import train as run_train
    from everylabel.experiments.config import load_config
    from everylabel.metrics import summary_markdown

    try:  # bad options fail before any work
        cfg = load_config(None, [f"train.steps={steps}", f"train.seed={seed}", "train.val_every=100",
                                 "data.patch_size=[128, 128]", "data.batch_size=8"] +
                          ([f"train.minutes={minutes}"] if minutes is not None else []))
    except ValueError as e:
        _fail(e)
    tmp = None
    if out is None:
        tmp = tempfile.TemporaryDirectory(prefix="everylabel-demo-")
        out = tmp.name
    root = Path(out)
    t0 = time.perf_counter()
    data = make_dataset(root / "data", seed=seed)
    click.echo(f"[demo] synthetic nnU-Net dataset (vessels + organs) in {data}")
    metrics = run_train(data, root / "run", cfg)
    click.echo(f"[demo] trained {metrics['steps']} steps in {metrics['train_seconds']:.0f} s")
    run_predict(root / "run", data / "imagesTs", root / "pred")
    summary = run_evaluate(root / "pred", data / "labelsTs", root / "eval",
                           class_names={1: "vessel", 2: "organ"})
    click.echo(summary_markdown(summary))
    click.echo(f"[demo] done in {time.perf_counter() - t0:.0f} s" + ("" if tmp else f"; files in {root}"))
    if tmp is not None:
        tmp.cleanup()


@main.command()
@click.option("--data", required=True, type=click.Path(exists=True), help="Manifest or nnU-Net raw dataset with "
              "unlabelled cases.")
@click.option("--out", required=True, type=click.Path(), help="Output folder (round_0/, round_1/, ...).")
@click.option("--rounds", type=int, default=2, show_default=True, help="Train -> pseudo-label rounds.")
@click.option("--tau", type=float, default=0.9, show_default=True, help="Per-voxel confidence threshold.")
@click.option("--size-std", type=float, default=2.0, show_default=True,
              help="Keep components whose size is within mean +- this many std of the labelled ones (<0: off).")
@click.option("--config", type=click.Path(exists=True, dir_okay=False), help="YAML with config changes.")
@click.option("--set", "overrides", multiple=True, help="key=value config override.")
@click.option("--no-progress", is_flag=True)
def refine(data: str, out: str, rounds: int, tau: float, size_std: float, config: str | None,
           overrides: tuple[str, ...], no_progress: bool) -> None:
    """Iterative pseudo-label refinement (Liu et al., DALI 2021): train, pseudo-label the unlabelled cases, filter
    by confidence and component size, retrain with them; resumable, one folder per round."""
    from everylabel.engine.refinement import refine as run_refine
    from everylabel.experiments.config import load_config

    try:
        cfg = load_config(config, list(overrides))
        result = run_refine(data, out, cfg, rounds=rounds, tau=tau, size_std=None if size_std < 0 else size_std,
                            progress=not no_progress)
    except ValueError as e:
        _fail(e)
    except KeyboardInterrupt:
        click.echo(f"interrupted; run the same command again to continue in {out}", err=True)
        sys.exit(130)
    for r in result["rounds"]:
        val = "n/a" if r.get("val_dice") is None else f"{r['val_dice']:.4f}"
        click.echo(f"round {r['round']}: {r['pseudo_cases']} pseudo-labelled case(s), kept {r['kept_fraction']:.1%}"
                   f" of their voxels, validation Dice {val}")
    click.echo(f"last manifest: {result['manifest']}")


@main.command()
@click.argument("sweep_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--out", "out", type=click.Path(), default=None,
              help="Sweep directory (default: <folder of SWEEP_FILE>/<sweep name>).")
@click.option("--jobs", type=int, default=1, show_default=True, help="Runs executed at the same time.")
@click.option("--dry-run", is_flag=True, help="List the planned runs and their status; run nothing.")
@click.option("--print-commands", is_flag=True,
              help="Print one shell command per pending run (for a SLURM job array); run nothing.")
@click.option("--skip-failed", is_flag=True, help="Do not retry runs recorded as failed.")
@click.option("--only", "only", multiple=True, metavar="PATTERN",
              help="Run only the runs whose name matches this shell pattern (repeatable), e.g. '*4masks*'.")
def sweep(sweep_file: str, out: str | None, jobs: int, dry_run: bool, print_commands: bool,
          skip_failed: bool, only: tuple[str, ...]) -> None:
    """Run a label-budget sweep: methods x protocols x seeds (x folds), one process per run, resumable.

    Finished runs are skipped; an interrupted run continues from its checkpoint; a failing run is recorded and
    the sweep goes on. Results: OUT/results/<run>.json; then `everylabel report OUT`.
    """
    from everylabel.experiments import sweep as sw

    if jobs < 1:
        _fail(ValueError(f"--jobs must be >= 1, got {jobs}"))
    try:
        spec = sw.load_sweep(sweep_file)
        runs = sw.expand(spec)
    except ValueError as e:
        _fail(e)
    sweep_dir = Path(out) if out else sw.default_sweep_dir(sweep_file, spec)
    if not dry_run:
        sw.prepare(spec, runs, sweep_dir)
    plan = sw.summarize_plan(runs, sweep_dir)
    if only:
        from fnmatch import fnmatchcase

        unmatched = [pat for pat in only if not any(fnmatchcase(p["name"], pat) for p in plan)]
        if unmatched:
            _fail(ValueError(f"--only {', '.join(unmatched)} matches no run of sweep {spec.name!r}; run names look "
                             f"like {plan[0]['name']!r} (see --dry-run)"))
        keep = [any(fnmatchcase(p["name"], pat) for pat in only) for p in plan]
        runs = [r for r, k in zip(runs, keep) if k]
        plan = [p for p, k in zip(plan, keep) if k]
    todo = [r for r, p in zip(runs, plan) if p["status"] != "done" and not (skip_failed and p["status"] == "failed")]
    if print_commands:
        for run in todo:
            click.echo(sw.shell_command(sweep_dir, run))
        return
    counts: dict[str, int] = {}
    for p in plan:
        counts[p["status"]] = counts.get(p["status"], 0) + 1
    click.echo(f"sweep {spec.name!r} in {sweep_dir}: {len(runs)} run(s) ("
               + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + f"); {len(todo)} to run", err=True)
    for p in plan:
        if p["status"] == "stale":
            click.echo(f"stale (a default changed since it finished: {', '.join(p['changed'])}; its outputs move to "
                       f"runs/{p['name']}/stale/ when it runs again): {p['name']}", err=True)
    if dry_run:
        click.echo("| run | method | protocol | seed | fold | masks | status |")
        click.echo("|---|---|---|---:|---:|---:|---|")
        for p in plan:
            click.echo(f"| {p['name']} | {p['method']} | {p['protocol']} | {p['seed']} | {p['fold']} | "
                       f"{p['masks']} | {p['status']} |")
        return
    try:
        outcome = sw.execute(todo, sweep_dir, jobs=jobs, echo=lambda line: click.echo(line, err=True))
    except KeyboardInterrupt:
        click.echo(f"interrupted; run the same command again to continue the sweep in {sweep_dir}", err=True)
        sys.exit(130)
    failed = [n for n, s in outcome.items() if s != "ok"]
    click.echo(f"{len(outcome) - len(failed)} run(s) finished, {len(failed)} not; results in "
               f"{sweep_dir / 'results'}; report: everylabel report {sweep_dir}", err=True)
    if failed:
        sys.exit(1)


@main.command(name="run-one", hidden=True)
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--progress", is_flag=True, help="Show the training progress bar.")
def run_one(run_dir: str, progress: bool) -> None:
    """Execute one run of a sweep (what `sweep` starts per run). Exit 0 ok, 1 failed, 3 interrupted, 4 busy."""
    from everylabel.experiments.sweep import RunBusy, RunInterrupted
    from everylabel.experiments.sweep import run_one as execute_run

    try:
        row = execute_run(run_dir, progress=progress)
    except ValueError as e:
        _fail(e)
    except RunBusy as e:
        click.echo(f"skipped: {e}", err=True)
        sys.exit(4)
    except (RunInterrupted, KeyboardInterrupt) as e:
        click.echo(f"interrupted ({e or 'Ctrl-C'}); run again to resume from the last checkpoint", err=True)
        sys.exit(3)
    if row["status"] != "ok":
        click.echo(f"run failed: {row.get('error')}\n{row.get('traceback', '')}", err=True)
        sys.exit(1)
    click.echo(f"{row['name']}: ok in {row['wall_seconds']:.0f} s")


@main.command()
@click.argument("sweep_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--metric", "metric", default="dice", show_default=True, help="Metric of the table and the tests.")
@click.option("--test-unit", type=click.Choice(["case", "seed"]), default="case", show_default=True,
              help="Pair methods over (seed, fold, case) or over (seed, fold) run scores.")
@click.option("--alpha", type=float, default=0.05, show_default=True, help="Family-wise significance level.")
@click.option("--out", "out", type=click.Path(), default=None, help="Report folder (default: SWEEP_DIR/report).")
def report(sweep_dir: str, metric: str, test_unit: str, alpha: float, out: str | None) -> None:
    """Write SWEEP_DIR/report/report.md, report.html (self-contained) and PNG plots from the stored results."""
    from everylabel.experiments.report import write_report

    try:
        paths = write_report(sweep_dir, out, metric=metric, test_unit=test_unit, alpha=alpha)
    except ValueError as e:
        _fail(e)
    click.echo(f"wrote {paths['markdown']} and {paths['html']}")


if __name__ == "__main__":
    main()
