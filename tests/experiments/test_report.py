"""Sweep report: table numbers equal a direct computation from the stored rows; Wilcoxon + Bonferroni equal scipy;
the HTML is well-formed and self-contained; plots and overlays are written."""

from __future__ import annotations

import base64
import json
import math
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import yaml
from PIL import Image
from scipy.stats import wilcoxon

from everylabel.experiments.report import budget_table, paired_tests, write_report
from everylabel.experiments.results import runs_frame, write_result

PROTOCOLS = {"2masks_boxes": (2, 0.3, "boxes"), "4masks_boxes": (4, 0.5, "boxes"), "allmasks": (8, 1.0, "full")}
CASES = [f"case{i}" for i in range(6)]


def _make_run_dir(sweep_dir):
    """A run directory with a manifest (images + references) and predictions, for the overlays."""
    run = sweep_dir / "runs" / "fake"
    for sub in ("img", "lab", "pred"):
        (run / sub).mkdir(parents=True)
    cases = []
    for i, cid in enumerate(CASES):
        lab = np.zeros((16, 16), np.uint8)
        lab[2:8, 2 + i:8 + i] = 1
        lab[10:14, 10:14] = 2
        Image.fromarray((lab * 100 + 20).astype(np.uint8)).save(run / "img" / f"{cid}.png")
        Image.fromarray(lab).save(run / "lab" / f"{cid}.png")
        Image.fromarray(np.roll(lab, 1, axis=0)).save(run / "pred" / f"{cid}.png")
        cases.append({"id": cid, "images": [f"img/{cid}.png"], "mask": f"lab/{cid}.png", "split": "test"})
    (run / "manifest.yaml").write_text(yaml.safe_dump({"name": "fake", "labels": {0: "bg", 1: "a", 2: "b"},
                                                       "cases": cases}))
    return {"run_dir": "runs/fake", "pred_dir": "runs/fake/pred", "reference": "runs/fake/manifest.yaml"}


@pytest.fixture
def sweep_dir(tmp_path):
    rng = np.random.default_rng(0)
    paths = _make_run_dir(tmp_path)
    for method, shift in (("alpha", 0.0), ("beta", 0.05)):
        for protocol, (n_masks, fraction, family) in PROTOCOLS.items():
            for seed in range(3):
                cases = []
                for cid in CASES:
                    for cls in (1, 2):
                        dice = float(np.clip(0.5 + 0.05 * n_masks + shift + rng.normal(0, 0.05), 0, 1))
                        if cid == "case0" and cls == 2 and seed == 1:
                            dice = float("nan")  # undefined: excluded from the case's mean
                        cases.append({"case": cid, "class": cls, "class_name": f"c{cls}", "dice": dice,
                                      "hd95": 10 * (1 - dice) if not math.isnan(dice) else dice})
                write_result(tmp_path, {
                    "name": f"{method}__{protocol}__seed{seed}", "status": "ok", "method": method,
                    "protocol": protocol, "protocol_family": family, "seed": seed, "fold": None,
                    "n_masks": n_masks, "n_train_cases": 8,
                    "kinds": {"mask": 8} if n_masks == 8 else {"mask": n_masks, "boxes": 8 - n_masks},
                    "cost_seconds": fraction * 7200, "cost_fraction": fraction, "metrics": ["dice", "hd95"],
                    "cases": cases, "paths": paths})
    write_result(tmp_path, {"name": "alpha__2masks_boxes__seed9", "status": "failed", "method": "alpha",
                            "protocol": "2masks_boxes", "seed": 9, "error": "FloatingPointError: loss became nan"})
    return tmp_path


def _direct_run_values(sweep_dir, metric="dice"):
    """Per (method, protocol): run scores computed straight from the JSON files."""
    out: dict = {}
    for path in sorted((sweep_dir / "results").glob("*.json")):
        row = json.loads(path.read_text())
        if row["status"] != "ok":
            continue
        per_case: dict = {}
        for rec in row["cases"]:
            v = rec[metric]
            per_case.setdefault(rec["case"], []).append(np.nan if v is None else v)
        run = np.nanmean([np.nanmean(v) for v in per_case.values()])
        out.setdefault((row["method"], row["protocol"]), []).append(run)
    return out


def _md_table(text: str, heading: str) -> dict:
    lines = text.split(f"## {heading}", 1)[1].strip().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        rows.append(line)
    header = [c.strip() for c in rows[0].strip("|").split("|")]
    return {cells[0]: dict(zip(header[1:], cells[1:]))
            for cells in ([c.strip() for c in r.strip("|").split("|")] for r in rows[2:])}


def test_table_equals_direct_computation(sweep_dir):
    paths = write_report(sweep_dir)
    md = paths["markdown"].read_text()
    table = _md_table(md, "dice by method and budget (higher is better)")
    direct = _direct_run_values(sweep_dir)
    assert set(table) == {"alpha", "beta"}
    assert list(table["alpha"]) == ["2masks_boxes", "4masks_boxes", "allmasks"]  # ordered by budget
    for (method, protocol), values in direct.items():
        expected = f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f} (n={len(values)})"
        assert table[method][protocol] == expected
    # the same numbers through pandas
    frame = runs_frame(sweep_dir)
    agg = frame[frame.status == "ok"].groupby(["method", "protocol"])["dice"].agg(["mean", "std", "count"])
    cells = budget_table(json_rows(sweep_dir), "dice")["cells"]
    for (method, protocol), row in agg.iterrows():
        assert cells[(method, protocol)]["mean"] == pytest.approx(row["mean"])
        assert cells[(method, protocol)]["std"] == pytest.approx(row["std"])
        assert cells[(method, protocol)]["n"] == row["count"] == 3
    hd = _md_table(md, "hd95 by method and budget (lower is better)")
    values = _direct_run_values(sweep_dir, "hd95")[("beta", "allmasks")]
    assert hd["beta"]["allmasks"].startswith(f"{np.mean(values):.3f} ± ")
    budgets = _md_table(md, "Annotation budgets")
    assert budgets["4masks_boxes"]["cost / full masks"] == "50.0%" and budgets["allmasks"]["full masks"] == "8"
    assert "alpha__2masks_boxes__seed9" in md and "FloatingPointError: loss became nan" in md
    for name in ("curve_dice_masks.png", "curve_dice_cost.png", "curve_hd95_masks.png", "overlays.png"):
        assert (sweep_dir / "report" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name


def json_rows(sweep_dir):
    return [json.loads(p.read_text()) for p in sorted((sweep_dir / "results").glob("*.json"))]


def _case_values(sweep_dir, method, protocol):
    out = {}
    for row in json_rows(sweep_dir):
        if row["status"] == "ok" and row["method"] == method and row["protocol"] == protocol:
            per_case: dict = {}
            for rec in row["cases"]:
                per_case.setdefault(rec["case"], []).append(np.nan if rec["dice"] is None else rec["dice"])
            for case, v in per_case.items():
                out[(row["seed"], case)] = float(np.nanmean(v))
    return out


def test_wilcoxon_with_bonferroni_equals_scipy(sweep_dir):
    tests = paired_tests(json_rows(sweep_dir), "dice", unit="case")
    assert [t["protocol"] for t in tests] == list(PROTOCOLS) and all(t["m"] == 3 for t in tests)
    md = write_report(sweep_dir)["markdown"].read_text()
    for t in tests:
        a, b = _case_values(sweep_dir, "alpha", t["protocol"]), _case_values(sweep_dir, "beta", t["protocol"])
        keys = sorted(a)
        p = wilcoxon([a[k] for k in keys], [b[k] for k in keys]).pvalue
        assert t["n"] == 18 and t["p"] == pytest.approx(p) and t["p_bonferroni"] == pytest.approx(min(1, 3 * p))
        assert t["better"] == "beta" and t["mean_diff"] < 0
        assert f"| {t['protocol']} | alpha | beta | 18 |" in md and f"{t['p_bonferroni']:.3g}" in md
    seeds = paired_tests(json_rows(sweep_dir), "dice", unit="seed")
    assert all(t["n"] == 3 for t in seeds)
    hd = paired_tests(json_rows(sweep_dir), "hd95")
    assert all(t["better"] == "beta" for t in hd)  # lower hd95 is better
    with pytest.raises(ValueError, match="unit must be 'case' or 'seed'"):
        paired_tests(json_rows(sweep_dir), unit="run")


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))


def test_html_is_well_formed_and_self_contained(sweep_dir):
    page = write_report(sweep_dir)["html"].read_text(encoding="utf-8")
    assert page.startswith("<!DOCTYPE html>")
    root = ET.fromstring(page.split("\n", 1)[1])  # well-formed XML (XHTML syntax)
    assert root.tag == "html" and root.find("head/title") is not None
    parser = _Collector()
    parser.feed(page)
    tags = [t for t, _ in parser.tags]
    assert "script" not in tags and "link" not in tags and "iframe" not in tags
    images = [a for t, a in parser.tags if t == "img"]
    assert len(images) == 5  # 2 metrics x 2 curves + overlays
    for attrs in images:
        assert attrs["src"].startswith("data:image/png;base64,")
        assert base64.b64decode(attrs["src"].split(",", 1)[1])[:4] == b"\x89PNG"
    for _, attrs in parser.tags:
        for key in ("src", "href"):
            assert not re.match(r"^(https?:)?//", attrs.get(key) or ""), attrs
    cells = [td.text for td in root.iter("td")]
    direct = _direct_run_values(sweep_dir)[("beta", "4masks_boxes")]
    assert f"{np.mean(direct):.3f} ± {np.std(direct, ddof=1):.3f} (n=3)" in cells


def test_missing_predictions_skip_overlays_with_a_note(sweep_dir):
    import shutil

    shutil.rmtree(sweep_dir / "runs")
    md = write_report(sweep_dir)["markdown"].read_text()
    assert "overlays skipped: the predictions or references of run" in md
    assert not (sweep_dir / "report" / "overlays.png").exists()


def test_report_errors(sweep_dir, tmp_path):
    with pytest.raises(ValueError, match="metric 'nsd' was not recorded; the runs have dice, hd95"):
        write_report(sweep_dir, metric="nsd")
    (tmp_path / "empty" / "results").mkdir(parents=True)
    with pytest.raises(ValueError, match="has no finished run yet"):
        write_report(tmp_path / "empty")


def test_report_keeps_to_the_runs_of_the_last_sweep_in_a_shared_directory(sweep_dir):
    from everylabel.experiments.report import sweep_rows

    every = sweep_rows(sweep_dir)
    mine = sorted(r["name"] for r in every if r["method"] == "alpha")
    (sweep_dir / "sweep.json").write_text(json.dumps({"name": "alpha_only", "runs": mine}))
    assert sorted(r["name"] for r in sweep_rows(sweep_dir)) == mine and len(mine) < len(every)
    text = Path(write_report(sweep_dir)["markdown"]).read_text()
    assert "beta" not in text and "alpha" in text
