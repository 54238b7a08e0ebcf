"""Per-case records, summaries with undefined counts, atomic CSV / JSON writes, Markdown."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from everylabel.metrics import case_records, summarize, summary_markdown, write_case_csv, write_summary_json


def _cases():
    ref = np.zeros((8, 8), dtype=np.int64)
    ref[1:4, 1:4] = 1
    ref[5:7, 5:7] = 2
    pred_a = ref.copy()
    pred_a[1, 1] = 0
    pred_b = np.zeros_like(ref)
    pred_b[1:4, 1:4] = 1  # class 2 missing in pred
    ref_b = ref.copy()
    ref_b[ref_b == 2] = 0  # and in ref: class 2 both empty -> undefined Dice
    names = {0: "background", 1: "liver", 2: "tumour"}
    return (
        case_records(pred_a, ref, "a", names, metrics=("dice", "recall"))
        + case_records(pred_b, ref_b, "b", names, metrics=("dice", "recall")),
        names,
    )


def test_case_records_rows():
    records, _ = _cases()
    assert len(records) == 6
    first = records[1]
    assert list(first)[:6] == ["case", "class", "class_name", "empty", "pred_voxels", "ref_voxels"]
    assert first["case"] == "a" and first["class_name"] == "liver" and first["empty"] == "none"
    assert first["dice"] == pytest.approx(2 * 8 / 17)
    tumour_b = records[5]
    assert tumour_b["empty"] == "both" and math.isnan(tumour_b["dice"]) and math.isnan(tumour_b["recall"])


def test_summarize_counts_undefined():
    records, _ = _cases()
    summary = summarize(records)
    dice = summary["metrics"]["dice"]
    assert summary["n_cases"] == 2 and summary["n_records"] == 6
    assert dice["n_undefined"] == 1 and dice["n_defined"] == 5
    defined = [r["dice"] for r in records if not math.isnan(r["dice"])]
    assert dice["mean"] == pytest.approx(np.mean(defined))
    assert dice["std"] == pytest.approx(np.std(defined))
    assert dice["per_class"]["tumour"]["n_undefined"] == 1
    assert dice["per_class"]["tumour"]["mean"] == 1.0
    fg = np.mean([dice["per_class"]["liver"]["mean"], dice["per_class"]["tumour"]["mean"]])
    assert dice["foreground_mean"] == pytest.approx(fg)
    assert summarize(records, metrics=["recall"])["metrics"].keys() == {"recall"}
    with pytest.raises(ValueError, match="missing"):
        summarize(records, metrics=["hd95"])


def test_summarize_worst_case_fill():
    records, _ = _cases()
    summary = summarize(records, metrics=["dice"], undefined_value={"dice": 0.0})
    dice = summary["metrics"]["dice"]
    values = [0.0 if math.isnan(r["dice"]) else r["dice"] for r in records]
    assert dice["mean"] == pytest.approx(np.mean(values)) and dice["n_undefined"] == 1
    assert dice["per_class"]["tumour"]["mean"] == 0.5 and dice["undefined_value"] == 0.0
    with pytest.raises(ValueError, match="not summarised"):
        summarize(records, metrics=["dice"], undefined_value={"hd95": 100.0})


def test_writers_are_atomic_and_roundtrip(tmp_path):
    records, _ = _cases()
    summary = summarize(records)
    csv_path = write_case_csv(records, tmp_path / "sub" / "cases.csv")
    json_path = write_summary_json(summary, tmp_path / "summary.json")
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["cases.csv", "sub", "summary.json"]  # no temp left
    rows = list(csv.DictReader(csv_path.open()))
    assert len(rows) == 6 and rows[5]["dice"] == "nan"
    assert float(rows[1]["dice"]) == records[1]["dice"]
    loaded = json.loads(json_path.read_text())
    assert loaded["metrics"]["dice"]["n_undefined"] == 1
    # all-undefined statistics are written as null (strict JSON)
    nan_summary = summarize([{"case": "x", "class": 1, "class_name": "c", "dice": float("nan")}])
    write_summary_json(nan_summary, json_path)
    assert json.loads(json_path.read_text())["metrics"]["dice"]["mean"] is None
    with pytest.raises(ValueError, match="empty"):
        write_case_csv([], tmp_path / "x.csv")


def test_summary_markdown_table():
    records, _ = _cases()
    text = summary_markdown(summarize(records), digits=3)
    lines = text.strip().splitlines()
    assert lines[0] == "| metric | mean ± std | foreground mean | background | liver | tumour | undefined |"
    assert lines[2].startswith("| dice |") and lines[2].endswith("| 1/6 |")
    assert len(lines) == 4


def test_case_records_bad_input():
    with pytest.raises(ValueError, match="same shape"):
        case_records(np.zeros((4, 4)), np.zeros((4, 5)), "a", {1: "x"})
    with pytest.raises(ValueError, match="at least one class"):
        case_records(np.zeros((4, 4)), np.zeros((4, 4)), "a", {})


def test_case_records_valid_region():
    ref = np.zeros((6, 6), dtype=np.int64)
    ref[0:2, 0:2] = 1
    pred = ref.copy()
    valid = np.zeros((6, 6), dtype=bool)
    valid[3:, 3:] = True  # class 1 lies outside the valid region
    row = case_records(pred, ref, "v", {1: "x"}, valid=valid, metrics=("dice", "hd"))[0]
    assert row["empty"] == "both" and row["pred_voxels"] == row["ref_voxels"] == 0
    assert math.isnan(row["dice"]) and math.isnan(row["hd"])
    with pytest.raises(ValueError, match="valid must have the shape"):
        case_records(pred, ref, "v", {1: "x"}, valid=valid[:-1])


def test_lesion_and_topology_columns_in_case_csv(tmp_path):
    from everylabel.metrics import LESION_METRICS, compute_metrics

    ref = np.zeros((20, 20), dtype=np.int64)
    ref[2:6, 2:6] = 1
    ref[12:16, 12:16] = 1
    pred = np.zeros_like(ref)
    pred[3:7, 2:6] = 1  # one lesion found with box IoU 12/20, the other missed
    names = ("dice", "cldice", *LESION_METRICS)
    records = case_records(pred, ref, "c1", {1: "lesion"}, metrics=names)
    rows = list(csv.DictReader(write_case_csv(records, tmp_path / "cases.csv").open()))
    assert list(rows[0])[-len(names) :] == list(names)
    want = compute_metrics(pred == 1, ref == 1, metrics=names)
    assert float(rows[0]["box_iou"]) == want["box_iou"] == pytest.approx(12 / 20)
    assert float(rows[0]["lesion_sensitivity"]) == 0.5 and float(rows[0]["lesion_fp"]) == 0.0
