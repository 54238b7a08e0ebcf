"""Results store: atomic one-JSON-per-run rows, concurrent writers, NaN round trip, scores, pandas frames."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from everylabel.experiments.results import (
    case_scores,
    cases_frame,
    is_finished,
    load_results,
    result_path,
    run_score,
    runs_frame,
    write_result,
)


def _row(name: str, status: str = "ok", **extra) -> dict:
    cases = [
        {"case": "a", "class": 1, "class_name": "x", "dice": 0.8, "hd95": 2.0},
        {"case": "a", "class": 2, "class_name": "y", "dice": 0.6, "hd95": 4.0},
        {"case": "b", "class": 1, "class_name": "x", "dice": float("nan"), "hd95": float("nan")},
        {"case": "b", "class": 2, "class_name": "y", "dice": 0.2, "hd95": 8.0},
    ]
    return {"name": name, "status": status, "method": "m", "protocol": "p", "seed": 0, "fold": None,
            "metrics": ["dice", "hd95"], "cases": cases if status == "ok" else [], "cost_seconds": 10.0,
            "cost_fraction": 0.5, "n_masks": np.int64(2), **extra}


def test_round_trip_nan_and_atomic(tmp_path):
    path = write_result(tmp_path, _row("r1"))
    assert path == result_path(tmp_path, "r1") and path.parent.name == "results"
    text = path.read_text()
    assert "NaN" not in text and json.loads(text)["cases"][2]["dice"] is None  # strict JSON
    assert not [p for p in path.parent.iterdir() if p.name.startswith(".")], "temporary file left behind"
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask  # readable by collaborators as the umask allows
    rows = load_results(tmp_path)
    assert [r["name"] for r in rows] == ["r1"] and rows[0]["n_masks"] == 2
    frame = cases_frame(tmp_path)
    assert len(frame) == 4 and math.isnan(frame.loc[2, "dice"]) and frame["dice"].dtype.kind == "f"
    with pytest.raises(ValueError, match="needs a 'name'"):
        write_result(tmp_path, {"status": "ok"})


def test_scores_by_hand():
    row = _row("r")
    # case a: mean(0.8, 0.6) = 0.7; case b: the NaN class is excluded -> 0.2
    assert case_scores(row) == pytest.approx({"a": 0.7, "b": 0.2})
    assert run_score(row) == pytest.approx(0.45)
    assert run_score(row, "hd95") == pytest.approx((3.0 + 8.0) / 2)
    with pytest.raises(ValueError, match="has no metric 'nsd'"):
        case_scores(row, "nsd")


def test_status_and_frames(tmp_path):
    write_result(tmp_path, _row("ok_run"))
    write_result(tmp_path, _row("bad_run", status="failed", error="ValueError: boom"))
    assert is_finished(tmp_path, "ok_run") and not is_finished(tmp_path, "bad_run")
    assert not is_finished(tmp_path, "missing")
    assert [r["name"] for r in load_results(tmp_path, status="failed")] == ["bad_run"]
    runs = runs_frame(tmp_path).set_index("name")
    assert runs.loc["ok_run", "dice"] == pytest.approx(0.45) and math.isnan(runs.loc["bad_run", "dice"])
    assert runs.loc["bad_run", "error"] == "ValueError: boom"
    assert len(cases_frame(tmp_path)) == 4  # failed runs have no case rows


def test_unreadable_files_are_named_and_hidden_files_ignored(tmp_path):
    write_result(tmp_path, _row("r1"))
    (tmp_path / "results" / ".r2.json.abc.tmp").write_text("{half")  # a writer's temporary file
    assert len(load_results(tmp_path)) == 1
    (tmp_path / "results" / "broken.json").write_text("{half")
    with pytest.raises(ValueError, match="broken.json: not a readable result file"):
        load_results(tmp_path)
    with pytest.raises(ValueError, match="has no results/ folder"):
        load_results(tmp_path / "nowhere")


WRITER = """
import sys
from everylabel.experiments.results import write_result
worker = int(sys.argv[2])
for i in range(15):
    write_result(sys.argv[1], {"name": f"w{worker}_r{i}", "status": "ok", "payload": "x" * 20000,
                               "cases": [], "metrics": []})
    write_result(sys.argv[1], {"name": "shared", "status": "ok", "writer": worker, "payload": "y" * 50000,
                               "cases": [], "metrics": []})
"""


def test_concurrent_writers(tmp_path):
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(tmp_path), str(w)]) for w in range(3)]
    assert all(p.wait(timeout=60) == 0 for p in procs)
    rows = load_results(tmp_path)
    assert len(rows) == 3 * 15 + 1
    assert all(len(r["payload"]) == (50000 if r["name"] == "shared" else 20000) for r in rows)
    assert not [p for p in (tmp_path / "results").iterdir() if p.name.startswith(".")]
