"""The checked-in benchmark sweeps (benchmarks/sweeps) load against the real data and expand to the studies that
BENCHMARKS.md reports; sweeps that share a directory give the same run the same name."""

from __future__ import annotations

from pathlib import Path

import pytest

from everylabel.experiments.sweep import expand, load_sweep

SWEEPS = Path(__file__).resolve().parents[2] / "benchmarks" / "sweeps"
NOT_SWEEPS = ("la_base.yaml", "la_heart_tune.yaml")  # a base config and a manifest (the LA tuning split)
STUDIES = sorted(p for p in SWEEPS.glob("*.yaml") if p.name not in NOT_SWEEPS)
MANIFESTS = SWEEPS.parents[1] / "examples" / "manifests"


@pytest.mark.parametrize("path", STUDIES, ids=[p.stem for p in STUDIES])
def test_benchmark_sweep_loads_and_expands(path, shared_dataset):
    shared_dataset("DRIVE" if "drive" in path.stem else "LA_heart_h5")
    runs = expand(load_sweep(path))
    assert runs and len({r.name for r in runs}) == len(runs)
    if not path.stem.endswith("_tune"):  # every study reports mean ± std over 3 seeds; tuning sweeps choose a row
        assert {r.seed for r in runs} == {0, 1, 2}


def test_tuning_split_holds_out_training_cases_only(shared_dataset):
    """The LA tuning sweep chooses settings on 4 of the 16 training volumes, never on the 4 test volumes."""
    import yaml

    shared_dataset("LA_heart_h5")
    real = {c["id"]: c["split"] for c in yaml.safe_load((MANIFESTS / "la_heart.yaml").read_text())["cases"]}
    spec = load_sweep(SWEEPS / "la_scribbles_tune.yaml")
    tune = {c["id"]: c["split"] for c in yaml.safe_load(Path(spec.data).read_text())["cases"]}
    assert {real[i] for i in tune} == {"train"} and len(tune) == 16
    assert sorted(tune.values()).count("test") == 4


def test_label_budget_study_is_the_issue_7_grid(shared_dataset):
    shared_dataset("LA_heart_h5")
    runs = expand(load_sweep(SWEEPS / "la_budgets.yaml"))
    assert len(runs) == 66
    cells = {(r.method, r.protocol) for r in runs}
    assert {m for m, _ in cells} == {"supervised", "multilabel", "mean_teacher", "weak_crf"}
    for k in (1, 2, 4, 8):
        assert ("supervised", f"{k}masks_unlabelled") in cells and ("mean_teacher", f"{k}masks_unlabelled") in cells
        assert ("multilabel", f"{k}masks_boxes2d") in cells
        assert ("weak_crf", f"{k}masks_boxes2d") in cells and ("weak_crf", f"{k}masks_scribbles") in cells
    assert ("supervised", "allmasks") in cells and ("multilabel", "allmasks") in cells
    assert {r.expected_masks for r in runs if r.protocol.startswith("2masks")} == {2}
    assert {r.expected_masks for r in runs if r.protocol == "allmasks"} == {16}


def test_sweeps_sharing_a_directory_share_run_names(shared_dataset):
    """la_semi, la_weak and la_budgets write to one directory; a run they have in common must be trained once."""
    shared_dataset("LA_heart_h5")
    studies = ("la_semi", "la_weak", "la_budgets")
    names = {p: {r.name for r in expand(load_sweep(SWEEPS / f"{p}.yaml"))} for p in studies}
    shared_semi = {n for n in names["la_semi"] if n.startswith(("supervised__", "mean_teacher__"))}
    assert shared_semi and shared_semi <= names["la_budgets"]
    shared_weak = {n for n in names["la_weak"] if "2masks_boxes2d" in n or n.startswith("supervised__allmasks")}
    assert shared_weak and shared_weak <= names["la_budgets"]


def test_cldice_benchmark_baselines_never_share_cached_runs():
    """drive_cldice.py caches runs by tag: the Dice + CE rows must not reuse the soft-Dice rows, and only the
    soft-Dice set-up (the paper's) switches CE off."""
    import sys

    sys.path.insert(0, str(SWEEPS.parent))
    try:
        import drive_cldice
    finally:
        sys.path.remove(str(SWEEPS.parent))
    soft = drive_cldice.configs([0, 0.2], 3, "softdice")
    dce = drive_cldice.configs([0, 0.2], 3, "dicece")
    assert not {tag for _, tag, _ in soft} & {tag for _, tag, _ in dce}
    assert all("method.ce_weight=0" in over for _, _, over in soft)
    assert not any(o.startswith("method.ce_weight") for _, _, over in dce for o in over)
    assert [label for label, _, _ in dce][0] == drive_cldice.BASELINES["dicece"]
    assert "method.cldice_weight=0.2" in dce[1][2]
