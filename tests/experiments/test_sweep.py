"""Sweeps: budget protocols, sweep-file validation, grid expansion and naming, running, resuming, failures."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest
import yaml
from click.testing import CliRunner

from everylabel.annotations.protocol import parse_protocol, simulate_manifest
from everylabel.cli import main
from everylabel.data.synthetic import make_dataset
from everylabel.experiments.sweep import (
    config_delta,
    execute,
    expand,
    fold_assignment,
    load_sweep,
    prepare,
    run_command,
    run_one,
    run_status,
    source_manifest,
    stale_keys,
)

TINY = {"network.features": [8, 16], "data.patch_size": [32, 32], "data.batch_size": 2,
        "train": {"steps": 2, "log_every": 1, "val_every": 100, "checkpoint_every": 100},
        "inference.sw_batch_size": 2}


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    """Six train and two test cases of 48 x 48 pixels (nnU-Net raw folder with labelsTs)."""
    return make_dataset(tmp_path_factory.mktemp("synth"), n_train=6, n_test=2, shape=(48, 48), seed=1)


def _sweep(tmp_path, dataset, **changes) -> str:
    spec = {"data": os.path.relpath(dataset, tmp_path), "base": TINY, "methods": ["supervised"],
            "budgets": {"masks": [2, "all"], "rest": ["unlabelled"]}, "seeds": [0], "metrics": ["dice"]}
    spec.update(changes)
    spec = {k: v for k, v in spec.items() if v is not None}
    path = tmp_path / "sweep.yaml"
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    return str(path)


# ------------------------------------------------------------------------------------------- budget protocols


def test_budget_protocol_is_nested_and_deterministic():
    ids = [f"case_{i:02d}" for i in range(20)]

    def masks(n, seed):
        resolved = parse_protocol({"assign": [{"kind": "mask", "count": n}], "rest": "boxes"}).resolve(ids, seed)
        assert all([s.kind for s in resolved.steps_for(c, "train")] == ["boxes"]
                   for c in ids if c not in resolved.cases)
        return {c for c, steps in resolved.cases.items() if [s.kind for s in steps] == ["mask"]}

    two, four = masks(2, seed=0), masks(4, seed=0)
    assert len(two) == 2 and len(four) == 4 and two < four  # nested budgets, as in the papers
    assert masks(4, seed=0) == four and masks(4, seed=1) != four
    mixed = parse_protocol({"assign": [{"kind": "mask", "count": 2}, {"kind": "scribbles", "count": 10,
                                                                       "fraction": 0.5}], "rest": "unlabelled"})
    resolved = mixed.resolve(ids, 0)
    kinds = [[s.kind for s in resolved.steps_for(c, "train")] for c in ids]
    assert kinds.count(["mask"]) == 2 and kinds.count(["scribbles"]) == 10 and kinds.count(["unlabelled"]) == 8
    assert mixed.mask_count(20) == 2 and mixed.requested_cases == 12
    assert parse_protocol({"assign": [{"kind": "mask", "count": "all"}]}).mask_count(7) == 7
    with pytest.raises(ValueError, match=r"protocol asks for 30 cases \(30 mask\) but the train split has 20"):
        parse_protocol({"assign": [{"kind": "mask", "count": 30}]}).resolve(ids, 0)
    with pytest.raises(ValueError, match="count 'all' .* is only allowed in the last entry"):
        parse_protocol({"assign": [{"kind": "mask", "count": "all"}, {"kind": "boxes", "count": 1}]})
    with pytest.raises(ValueError, match=r"unknown keys \['rst'\] in the budget form"):
        parse_protocol({"assign": [{"kind": "mask", "count": 1}], "rst": "boxes"})
    with pytest.raises(ValueError, match="count must be an integer >= 0 or 'all', got -1"):
        parse_protocol({"assign": [{"kind": "mask", "count": -1}]})


def test_simulate_manifest_with_a_budget(dataset, tmp_path):
    manifest = tmp_path / "source.yaml"
    manifest.write_text(yaml.safe_dump(source_manifest(dataset)))
    protocol = {"assign": [{"kind": "mask", "count": 2}, {"steps": [{"kind": "boxes"}, {"kind": "tags"}],
                                                             "count": 1}], "rest": "unlabelled"}
    out = simulate_manifest(manifest, tmp_path / "sim", protocol, seed=3)
    records = json.loads((out.parent / "simulation.json").read_text())["cases"]
    steps = {cid: [s if isinstance(s, str) else s["kind"] for s in r.get("steps", [])] for cid, r in records.items()}
    train = [cid for cid in steps if int(cid.split("_")[1]) < 6]
    assert sorted(map(tuple, (steps[c] for c in train))) == [("boxes", "tags"), ("mask",), ("mask",)] + [
        ("unlabelled",)] * 3
    assert all(records[c]["status"] == "unchanged" and not steps[c] for c in steps if c not in train)  # test cases
    with pytest.raises(ValueError, match="asks for 7 cases"):
        simulate_manifest(manifest, tmp_path / "x", {"assign": [{"kind": "mask", "count": 7}]})


# ---------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize("changes, message", [
    ({"seed": [0]}, "unknown key 'seed' in .*; did you mean 'seeds'"),
    ({"base": {"train.stpes": 3}}, "unknown config key 'stpes' in .*base.train; did you mean 'steps'"),
    ({"methods": ["weeak"]}, "set method.name"),
    ({"methods": {"w": {"method.name": "weeak"}}}, "unknown method 'weeak'; did you mean 'weak'"),
    ({"methods": {"a__b": {}}}, "no '__'"),
    ({"budgets": {"masks": [30], "rest": ["unlabelled"]}},
     r"budgets no protocol can meet:\n  - budgets: '30masks_unlabelled' asks for 30 cases but the train split has 6"),
    ({"budgets": {"masks": [6]}, "folds": 3},
     r"asks for 6 cases but the train split has 6 \(4 outside the held-out fold with folds: 3\)"),
    ({"budgets": None, "protocols": {"few": {"assign": [{"kind": "mask", "count": 9}]}}},
     "protocols.few: 'few' asks for 9 cases"),
    ({"budgets": {"masks": [2], "rest": ["boxs"]}}, "unknown simulated annotation kind 'boxs' .*did you mean 'boxes'"),
    ({"budgets": {"masks": [2], "rst": ["boxes"]}}, "unknown key 'rst' in .*budgets; did you mean 'rest'"),
    ({"budgets": {"masks": [0], "rest": ["boxes"]}},
     r"methods that cannot learn from a protocol's annotations \(add them to 'exclude'\):\n  - supervised x "
     r"0masks_boxes \(the method learns from mask; the protocol gives boxes\)"),
    ({"metrics": ["dcie"]}, "unknown metric 'dcie'; did you mean 'dice'"),
    ({"cost": {"boxes": 3}}, "unknown key 'boxes' in .*cost; did you mean 'box'"),
    ({"budgets": None}, "give 'budgets' or 'protocols'"),
    ({"data": "nowhere"}, "data .*nowhere does not exist"),
    ({"folds": 1.5}, "folds must be an integer >= 2"),
])
def test_bad_sweep_files_fail_before_any_run(dataset, tmp_path, changes, message):
    path = _sweep(tmp_path, dataset, **changes)
    with pytest.raises(ValueError, match=message):
        load_sweep(path)
    res = CliRunner().invoke(main, ["sweep", path])
    assert res.exit_code == 2 and "error:" in res.output
    assert not (tmp_path / "sweep").exists()


def test_no_test_references_is_an_error_unless_folds(dataset, tmp_path):
    manifest = source_manifest(dataset)
    manifest["cases"] = [c for c in manifest["cases"] if c["split"] == "train"]
    (tmp_path / "train_only.yaml").write_text(yaml.safe_dump(manifest))
    with pytest.raises(ValueError, match="has no test case with a reference mask"):
        load_sweep(_sweep(tmp_path, tmp_path / "train_only.yaml"))
    assert load_sweep(_sweep(tmp_path, tmp_path / "train_only.yaml", folds=3)).folds == 3


# ----------------------------------------------------------------------------------------- expansion, naming


def test_expansion_and_deterministic_names(dataset, tmp_path):
    path = _sweep(tmp_path, dataset, methods={"supervised": {}, "weak": {"method.name": "weak"}},
                  budgets={"masks": [1, 2, "all"], "rest": ["boxes", "unlabelled"]}, seeds=2, folds=2,
                  exclude=[{"method": "supervised", "protocol": "*_boxes"}])
    runs = expand(load_sweep(path))
    # supervised: 2 budgets x unlabelled + allmasks = 3 protocols; weak: 2 x 2 + 1 = 5; x 2 seeds x 2 folds
    assert len(runs) == (3 + 5) * 2 * 2
    pattern = re.compile(r"^(supervised|weak)__(\dmasks_(boxes|unlabelled)|allmasks)__seed[01]__fold[01]__[0-9a-f]{8}$")
    assert all(pattern.match(r.name) for r in runs), [r.name for r in runs if not pattern.match(r.name)]
    assert len({r.name for r in runs}) == len(runs)
    assert [r.name for r in expand(load_sweep(path))] == [r.name for r in runs]  # deterministic
    by_name = {r.name.rsplit("__", 1)[0]: r for r in runs}
    assert by_name["weak__2masks_boxes__seed1__fold0"].expected_masks == 2
    assert by_name["weak__allmasks__seed0__fold1"].expected_masks == 3  # 6 train cases, 3 held out per fold
    assert by_name["weak__2masks_boxes__seed1__fold0"].overrides["train"]["seed"] == 1
    assert by_name["weak__2masks_boxes__seed1__fold0"].overrides["data"]["val_fraction"] == 0.0
    assert by_name["weak__1masks_boxes__seed0__fold0"].protocol_family == "boxes"
    changed = expand(load_sweep(_sweep(tmp_path, dataset, methods={"supervised": {}, "weak": {"method.name": "weak"}},
                                       budgets={"masks": [1, 2, "all"], "rest": ["boxes", "unlabelled"]}, seeds=2,
                                       folds=2, base={**TINY, "train": {"steps": 3}},
                                       exclude=[{"method": "supervised", "protocol": "*_boxes"}])))
    assert {r.name.rsplit("__", 1)[0] for r in changed} == set(by_name)
    assert not {r.name for r in changed} & {r.name for r in runs}  # a changed config never passes for a finished run


def test_folds(dataset):
    ids = [f"c{i}" for i in range(7)]
    folds = fold_assignment(ids, 3, fold_seed=0)
    assert sorted(sum(folds, [])) == ids and [len(f) for f in folds] in ([3, 2, 2], [2, 3, 2], [2, 2, 3])
    assert fold_assignment(list(reversed(ids)), 3, 0) == folds and fold_assignment(ids, 3, 1) != folds
    layout = source_manifest(dataset, folds=3, fold=1)
    held = [c["id"] for c in layout["cases"] if c["split"] == "val"]  # the data has a test split: held-out = val
    train_ids = [c["id"] for c in source_manifest(dataset)["cases"] if c["split"] == "train"]
    assert held == fold_assignment(train_ids, 3)[1]
    assert sum(c["split"] == "test" for c in layout["cases"]) == 2 and all("mask" in c for c in layout["cases"])


def test_dry_run_and_print_commands(dataset, tmp_path):
    path = _sweep(tmp_path, dataset, seeds=[0, 1])
    res = CliRunner().invoke(main, ["sweep", path, "--dry-run"])
    assert res.exit_code == 0, res.output
    assert res.output.count("| pending |") == 4 and "supervised__2masks_unlabelled__seed1__" in res.output
    assert not (tmp_path / "sweep").exists()  # a dry run writes nothing
    res = CliRunner().invoke(main, ["sweep", path, "--print-commands", "--out", str(tmp_path / "out")])
    lines = [line for line in res.output.splitlines() if "run-one" in line]
    assert res.exit_code == 0 and len(lines) == 4
    assert all(" -m everylabel run-one " in line and str(tmp_path / "out" / "runs") in line for line in lines)
    assert all((tmp_path / "out" / "runs" / line.rsplit("/", 1)[1] / "spec.json").is_file() for line in lines)
    assert not (tmp_path / "out" / "results").exists()  # nothing ran
    res = CliRunner().invoke(main, ["sweep", path, "--dry-run", "--only", "*seed1*"])
    assert res.exit_code == 0 and res.output.count("| pending |") == 2 and "seed0" not in res.output
    res = CliRunner().invoke(main, ["sweep", path, "--dry-run", "--only", "*seed7*"])
    assert res.exit_code != 0 and "--only *seed7* matches no run" in res.output


# ----------------------------------------------------------------------------------------------------- running


def test_sweep_runs_skips_finished_and_records_failures(dataset, tmp_path):
    path = _sweep(tmp_path, dataset, budgets={"masks": [2], "rest": ["unlabelled"]},
                  methods={"supervised": {}, "broken": {"method.name": "supervised", "optim.name": "bogus"}})
    res = CliRunner().invoke(main, ["sweep", path, "--jobs", "2"])
    assert res.exit_code == 1, res.output  # one run failed, the other still ran
    results = {json.loads(p.read_text())["method"]: json.loads(p.read_text())
               for p in (tmp_path / "sweep" / "results").glob("*.json")}
    ok, failed = results["supervised"], results["broken"]
    assert ok["status"] == "ok" and failed["status"] == "failed"
    assert "optim.name must be 'adamw' or 'sgd'" in failed["error"] and "Traceback" in failed["traceback"]
    assert ok["n_masks"] == 2 and ok["n_train_cases"] == 6 and ok["kinds"] == {"mask": 2, "unlabelled": 4}
    assert 0 < ok["cost_fraction"] < 1 and ok["cost_seconds"] == pytest.approx(ok["cost_fraction"] *
                                                                                 ok["full_mask_seconds"])
    assert sorted({c["case"] for c in ok["cases"]}) == ["synth_006", "synth_007"]  # the test split
    assert {c["class_name"] for c in ok["cases"]} == {"vessel", "organ"} and ok["train"]["steps"] == 2
    assert ok["summary"]["dice"]["score"] == pytest.approx(
        sum(sum(c["dice"] for c in ok["cases"] if c["case"] == k) / 2 for k in ("synth_006", "synth_007")) / 2)
    assert (tmp_path / "sweep" / ok["paths"]["pred_dir"] / "synth_006.png").is_file()
    stamp = (tmp_path / "sweep" / "results" / f"{ok['name']}.json").stat().st_mtime_ns

    res = CliRunner().invoke(main, ["sweep", path, "--skip-failed"])
    assert res.exit_code == 0 and "0 to run" in res.output  # finished runs are skipped
    res = CliRunner().invoke(main, ["sweep", path, "--dry-run"])
    assert "| done |" in res.output and "| failed |" in res.output
    assert (tmp_path / "sweep" / "results" / f"{ok['name']}.json").stat().st_mtime_ns == stamp
    res = CliRunner().invoke(main, ["report", str(tmp_path / "sweep")])
    assert res.exit_code == 0 and (tmp_path / "sweep" / "report" / "report.html").is_file()


def test_killed_run_is_rerun_and_resumed(dataset, tmp_path):
    base = {**TINY, "train": {"steps": 40, "log_every": 1, "val_every": 100, "checkpoint_every": 1}}
    path = _sweep(tmp_path, dataset, base=base, budgets={"masks": ["all"]})
    spec = load_sweep(path)
    (run,) = expand(spec)
    sweep_dir = tmp_path / "sweep"
    prepare(spec, [run], sweep_dir)
    proc = subprocess.Popen(run_command(sweep_dir, run), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = sweep_dir / "runs" / run.name / "train" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 60
    while not checkpoint.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert checkpoint.exists() and proc.returncode == -signal.SIGKILL
    assert run_status(sweep_dir, run) == "started"  # no result: the sweep will run it again
    assert execute([run], sweep_dir, echo=lambda line: None) == {run.name: "ok"}
    row = json.loads((sweep_dir / "results" / f"{run.name}.json").read_text())
    assert row["status"] == "ok" and row["train"]["resumed"] and row["train"]["steps"] == 40
    assert run_status(sweep_dir, run) == "done"


def test_run_one_needs_a_spec(tmp_path):
    with pytest.raises(ValueError, match="is not a sweep run directory"):
        run_one(tmp_path)


def test_config_delta():
    defaults = {"a": 1, "b": {"c": [1, 2], "d": "x"}}
    assert config_delta({"a": 1, "b": {"c": [1, 2], "d": "x"}}, defaults) == {}
    assert config_delta({"a": 2, "b": {"c": (1, 2), "d": "y"}, "e": 0}, defaults) == {"a": 2, "b": {"d": "y"}, "e": 0}


def test_names_survive_a_new_default_option(dataset, tmp_path, monkeypatch):
    """A release that adds a config option with a default keeps the names (so the results) of finished runs."""
    import everylabel.experiments.config as config_module

    path = _sweep(tmp_path, dataset, methods={"supervised": {}, "weak": {"method.name": "weak"}}, seeds=1)
    before = [r.name for r in expand(load_sweep(path))]
    explicit = _sweep(tmp_path, dataset, methods={"supervised": {"method.name": "supervised"},
                                                  "weak": {"method.name": "weak", "method.box_weight": 1.0}}, seeds=1)
    assert [r.name for r in expand(load_sweep(explicit))] == before  # a default set explicitly is the default
    original = config_module.config_from_dict

    class WithNewOption:
        def __init__(self, cfg):
            self.cfg = cfg

        def to_dict(self):
            d = self.cfg.to_dict()
            d["method"]["a_new_option"] = 0.5
            return d

    spec = load_sweep(path)
    monkeypatch.setattr(config_module, "config_from_dict", lambda *a, **k: WithNewOption(original(*a, **k)))
    assert [r.name for r in expand(spec)] == before


def test_former_default_pinned_keeps_names_new_default_renames(dataset, tmp_path):
    """network.stem_stride's default (2) is not the behaviour of older runs (1): a sweep that pins 1 keeps the names
    it had before the option existed; one that takes the default gets new names."""
    from everylabel.experiments.sweep import FORMER_DEFAULTS, hash_defaults

    assert FORMER_DEFAULTS["network"]["stem_stride"] == 1 and hash_defaults()["network"]["stem_stride"] == 1
    from everylabel.experiments.config import config_from_dict

    runs = [expand(load_sweep(_sweep(tmp_path, dataset, methods={"supervised": m}, budgets={"masks": ["all"]})))[0]
            for m in ({}, {"network.stem_stride": 1}, {"network.stem_stride": 2})]
    plain, pinned, stem = (r.name for r in runs)
    assert plain == stem and pinned != plain
    delta = config_delta(config_from_dict(runs[1].overrides).to_dict(), hash_defaults())
    assert "stem_stride" not in json.dumps(delta)


def test_former_learning_rate_pinned_keeps_names_new_default_renames(dataset, tmp_path, monkeypatch):
    """AdamW's default LR went 3e-3 -> 5e-3: a sweep that pins 0.003 keeps the names its runs had under the old
    default, one that takes the new default gets new names, and SGD's unchanged default keeps its names."""
    from everylabel.experiments import config as config_module
    from everylabel.experiments.config import FORMER_DEFAULT_LR, config_from_dict, with_effective_lr
    from everylabel.experiments.sweep import hash_defaults

    def name(method: dict) -> str:
        path = _sweep(tmp_path, dataset, methods={"supervised": method}, budgets={"masks": ["all"]})
        return expand(load_sweep(path))[0].name

    sgd = {"optim.name": "sgd"}
    monkeypatch.setattr(config_module, "DEFAULT_LR", dict(FORMER_DEFAULT_LR))  # the code as it was before
    old_plain, old_sgd = name({}), name(sgd)
    monkeypatch.undo()
    assert config_module.DEFAULT_LR["adamw"] == 5e-3
    assert name({"optim.lr": 0.003}) == old_plain != name({})
    assert name({}) == name({"optim.lr": 0.005}) and name(sgd) == old_sgd
    resolved = with_effective_lr(config_from_dict({"optim": {"lr": 0.003}}).to_dict())
    assert "optim" not in config_delta(resolved, hash_defaults("adamw"))


def test_with_effective_lr_fills_the_default_per_optimizer():
    from everylabel.experiments.config import DEFAULT_LR, FORMER_DEFAULT_LR, config_from_dict, with_effective_lr

    adamw = config_from_dict({}).to_dict()
    assert adamw["optim"]["lr"] is None and with_effective_lr(adamw)["optim"]["lr"] == DEFAULT_LR["adamw"] == 5e-3
    assert with_effective_lr(adamw, FORMER_DEFAULT_LR)["optim"]["lr"] == 3e-3
    assert adamw["optim"]["lr"] is None  # the input is not changed
    sgd = config_from_dict({"optim": {"name": "sgd"}}).to_dict()
    assert with_effective_lr(sgd)["optim"]["lr"] == with_effective_lr(sgd, FORMER_DEFAULT_LR)["optim"]["lr"] == 1e-2
    pinned = config_from_dict({"optim": {"lr": 0.01}}).to_dict()
    assert with_effective_lr(pinned)["optim"]["lr"] == 0.01
    assert with_effective_lr({"method": {}}) == {"method": {}}  # no optim section: nothing to fill


def test_rows_store_the_learning_rate_and_old_rows_read_as_the_former_default(dataset, tmp_path):
    """A row stores the LR its run trained with. A row written when it stored ``null`` (= 3e-3 for AdamW then) is
    done for a sweep that pins 0.003 and stale for one that takes today's default."""
    pinned = load_sweep(_sweep(tmp_path, dataset, base={**TINY, "optim": {"lr": 0.003}}, budgets={"masks": ["all"]}))
    plain = load_sweep(_sweep(tmp_path, dataset, base=TINY, budgets={"masks": ["all"]}))
    (run,), (run_plain,) = expand(pinned), expand(plain)
    sweep_dir = tmp_path / "sweep"
    prepare(pinned, [run], sweep_dir)
    assert execute([run], sweep_dir, echo=lambda line: None) == {run.name: "ok"}
    result = sweep_dir / "results" / f"{run.name}.json"
    row = json.loads(result.read_text())
    assert row["config"]["optim"]["lr"] == 0.003 and row["train"]["steps"] == 2
    row["config"]["optim"]["lr"] = None  # as rows were written before 2026-11-25
    result.write_text(json.dumps(row))
    assert stale_keys(row, run) == [] and run_status(sweep_dir, run) == "done"
    assert stale_keys(row, run_plain) == ["optim.lr"]  # the same row against today's default, 5e-3


def test_changed_default_makes_a_finished_run_stale(dataset, tmp_path):
    """A finished row whose stored config differs from today's resolution (a default changed since) is re-run from
    scratch, its old outputs kept under runs/<name>/stale/; a row lacking a newer option stays done."""
    path = _sweep(tmp_path, dataset, base={**TINY, "train": {"steps": 2}}, budgets={"masks": ["all"]})
    spec = load_sweep(path)
    (run,) = expand(spec)
    sweep_dir = tmp_path / "sweep"
    prepare(spec, [run], sweep_dir)
    assert execute([run], sweep_dir, echo=lambda line: None) == {run.name: "ok"}
    result = sweep_dir / "results" / f"{run.name}.json"
    row = json.loads(result.read_text())
    del row["config"]["method"]["ce_weight"]  # written before the option existed: still done
    result.write_text(json.dumps(row))
    assert run_status(sweep_dir, run) == "done" and stale_keys(row, run) == []
    row["config"]["method"]["dice_weight"] = 0.5  # written when the default was 0.5
    row["finished"] = "2026-01-01T00:00:00+0000"
    result.write_text(json.dumps(row))
    assert stale_keys(row, run) == ["method.dice_weight"] and run_status(sweep_dir, run) == "stale"
    res = CliRunner().invoke(main, ["sweep", path, "--out", str(sweep_dir), "--dry-run"])
    assert "1 stale" in res.output and "method.dice_weight" in res.output
    assert execute([run], sweep_dir, echo=lambda line: None) == {run.name: "ok"}
    new = json.loads(result.read_text())
    assert run_status(sweep_dir, run) == "done" and not new["train"]["resumed"]
    old = sweep_dir / "runs" / run.name / "stale" / "2026-01-01T000000+0000"
    assert json.loads((old / "result.json").read_text())["config"]["method"]["dice_weight"] == 0.5
    assert (old / "train" / "checkpoints" / "last.pt").is_file()
