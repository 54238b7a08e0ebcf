"""The report of a sweep: reads ``SWEEP_DIR/results/*.json`` only and writes Markdown, a self-contained HTML page
and PNG plots to ``SWEEP_DIR/report/``.

Definitions (also printed in the report):

- a run's score for a metric is the mean over its test cases of each case's mean over foreground classes
  (:func:`everylabel.experiments.results.run_score`; undefined values excluded);
- a table cell is ``mean ± std`` of the run scores of one method and one protocol over seeds (and folds), std the
  sample standard deviation (ddof = 1), with the number of runs, as in the label-budget tables of Reiß et al.
  (CVPR 2021);
- curves plot the cell means (error bars: std) against the number of full masks and against the annotation cost
  (annotator-hours, :mod:`everylabel.annotations.cost`); each protocol family (what the non-mask cases get) is one
  line per method, and the all-masks protocol ends every line;
- paired tests: for each protocol and each pair of methods, the two-sided Wilcoxon signed-rank test
  (``scipy.stats.wilcoxon``) over (seed, fold, case) pairs of case scores, or over (seed, fold) pairs of run scores,
  with the Bonferroni correction over every test of the report;
- overlays: the best, median and worst test case of the best run (image, reference, prediction; for 3D the slice
  with the most reference foreground), read from the run's predictions when they are still there.

The HTML opens offline: styles inline, images embedded as base64 PNG, no scripts.
"""

from __future__ import annotations

import base64
import html
import itertools
import json
import math
from pathlib import Path

import numpy as np

from everylabel.experiments.results import (
    atomic_write_bytes,
    atomic_write_text,
    case_scores,
    load_results,
    metric_names,
    run_score,
)

LOWER_IS_BETTER = {"hd", "hd95", "assd", "masd", "avg_hausdorff", "betti0_error", "betti1_error", "betti2_error",
                   "euler_error", "lesion_fp"}
"""Metrics where a smaller value is better (distances and errors)."""


def _fmt(value: float, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def _mean_std(values: list[float]) -> tuple[float, float, int]:
    arr = np.asarray([v for v in values if not math.isnan(v)], dtype=np.float64)
    if not arr.size:
        return math.nan, math.nan, 0
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else math.nan, int(arr.size)


def protocol_order(rows: list[dict]) -> list[str]:
    """Protocols ordered as budgets: by number of masks, then cost fraction, then name."""
    info: dict[str, list] = {}
    for r in rows:
        info.setdefault(r["protocol"], []).append((r.get("n_masks"), r.get("cost_fraction")))

    def key(name):
        masks = [m for m, _ in info[name] if m is not None]
        cost = [c for _, c in info[name] if c is not None]
        return (np.mean(masks) if masks else math.inf, np.mean(cost) if cost else math.inf, name)

    return sorted(info, key=key)


def budget_table(rows: list[dict], metric: str = "dice") -> dict:
    """Cells of the method x protocol table from the finished runs.

    Returns:
        ``{"methods", "protocols", "cells": {(method, protocol): {"mean", "std", "n", "scores"}},
        "protocol_info": {protocol: {"n_masks", "cost_hours", "cost_fraction", "family"}}}``.
    """
    ok = [r for r in rows if r["status"] == "ok"]
    methods = sorted({r["method"] for r in ok})
    protocols = protocol_order(ok)
    cells = {}
    for m, p in itertools.product(methods, protocols):
        scores = [run_score(r, metric) for r in ok if r["method"] == m and r["protocol"] == p]
        if scores:
            mean, std, n = _mean_std(scores)
            cells[(m, p)] = {"mean": mean, "std": std, "n": n, "scores": scores}
    info = {}
    for p in protocols:
        runs = [r for r in ok if r["protocol"] == p]
        info[p] = {"n_masks": float(np.mean([r.get("n_masks") or 0 for r in runs])),
                   "cost_hours": float(np.nanmean([_num(r.get("cost_seconds")) / 3600 for r in runs])),
                   "cost_fraction": float(np.nanmean([_num(r.get("cost_fraction")) for r in runs])),
                   "family": runs[0].get("protocol_family") or p,
                   "full": all(r.get("kinds") == {"mask": r.get("n_train_cases")} for r in runs)}
    return {"methods": methods, "protocols": protocols, "cells": cells, "protocol_info": info}


def _num(v) -> float:
    return math.nan if v is None else float(v)


def paired_tests(rows: list[dict], metric: str = "dice", unit: str = "case") -> list[dict]:
    """Wilcoxon signed-rank tests between every pair of methods at every protocol, Bonferroni-corrected.

    Args:
        unit: ``"case"`` pairs case scores by (seed, fold, case); ``"seed"`` pairs run scores by (seed, fold).

    Returns:
        One dict per test: ``protocol, a, b, n, mean_diff`` (a - b), ``median_diff, statistic, p, p_bonferroni,
        better`` (the method with the better mean, by the metric's direction) and ``m`` (number of tests).
    """
    from scipy.stats import wilcoxon

    if unit not in ("case", "seed"):
        raise ValueError(f"unit must be 'case' or 'seed', got {unit!r}")
    ok = [r for r in rows if r["status"] == "ok"]
    values: dict[tuple[str, str], dict] = {}
    for r in ok:
        store = values.setdefault((r["method"], r["protocol"]), {})
        if unit == "case":
            for case, v in case_scores(r, metric).items():
                store[(r["seed"], r.get("fold"), case)] = v
        else:
            store[(r["seed"], r.get("fold"))] = run_score(r, metric)
    methods = sorted({r["method"] for r in ok})
    tests = []
    for p in protocol_order(ok):
        for a, b in itertools.combinations(methods, 2):
            va, vb = values.get((a, p)), values.get((b, p))
            if not va or not vb:
                continue
            keys = sorted((k for k in set(va) & set(vb) if not (math.isnan(va[k]) or math.isnan(vb[k]))), key=str)
            if not keys:
                continue
            x = np.asarray([va[k] for k in keys])
            y = np.asarray([vb[k] for k in keys])
            d = x - y
            if np.all(d == 0):
                stat, pval = 0.0, 1.0
            else:
                res = wilcoxon(x, y)
                stat, pval = float(res.statistic), float(res.pvalue)
            lower = metric in LOWER_IS_BETTER
            better = a if (d.mean() < 0 if lower else d.mean() > 0) else b if d.mean() != 0 else "–"
            tests.append({"protocol": p, "a": a, "b": b, "n": len(keys), "mean_diff": float(d.mean()),
                          "median_diff": float(np.median(d)), "statistic": stat, "p": pval, "better": better})
    for t in tests:
        t["m"] = len(tests)
        t["p_bonferroni"] = min(1.0, t["p"] * len(tests))
    return tests


# --------------------------------------------------------------------------------------------------------- plots


def _figure(width: float = 6.0, height: float = 4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def plot_curves(table: dict, metric: str, x: str, path: Path) -> Path:
    """Cell means (error bars: std) against ``x`` = ``"n_masks"`` or ``"cost_hours"``; one line per method and
    protocol family, the all-masks protocol appended to each family's line."""
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    info = table["protocol_info"]
    families = sorted({i["family"] for i in info.values() if not i["full"]})
    full = [p for p, i in info.items() if i["full"]]
    styles = ["-", "--", ":", "-."]
    markers = ["o", "s", "^", "D", "v", "P", "X"]
    xs_all = []
    for mi, m in enumerate(table["methods"]):
        color = f"C{mi % 10}"
        own = [f for f in families if any((m, p) in table["cells"] for p in table["protocols"]
                                          if info[p]["family"] == f and not info[p]["full"])]
        for fam in own or [None]:
            fi = families.index(fam) if fam in families else 0
            protos = [p for p in table["protocols"] if fam is not None and info[p]["family"] == fam
                      and not info[p]["full"]] + full
            pts = [(info[p][x], table["cells"][(m, p)]) for p in protos if (m, p) in table["cells"]]
            pts = sorted(((px, c) for px, c in pts if not math.isnan(px) and not math.isnan(c["mean"])),
                         key=lambda t: t[0])
            if not pts:
                continue
            xs = [px for px, _ in pts]
            xs_all += xs
            ax.errorbar(xs, [c["mean"] for _, c in pts], yerr=[0 if math.isnan(c["std"]) else c["std"] for _, c in pts],
                        color=color, linestyle=styles[fi % len(styles)], marker=markers[fi % len(markers)],
                        capsize=3, label=m if fam is None or len(families) <= 1 else f"{m} ({fam})")
    positive = [v for v in xs_all if v > 0]
    if x == "cost_hours" and positive and len(positive) == len(xs_all) and max(positive) / min(positive) > 20:
        ax.set_xscale("log")
    ax.set_xlabel("full masks in the training set" if x == "n_masks" else "annotation cost (annotator-hours)")
    ax.set_ylabel(f"{metric} (mean over test cases)")
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return path


def _save(fig, path: Path) -> None:
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    atomic_write_bytes(path, buffer.getvalue())


def _find_prediction(pred_dir: Path, case: str) -> Path | None:
    for f in sorted(pred_dir.glob(f"{case}.*")):
        if "_probabilities" not in f.name:
            return f
    return None


def _display_slice(image: np.ndarray, ref: np.ndarray, pred: np.ndarray):
    """2D arrays to show: channel 0; for 3D the slice (last axis) with the most reference foreground."""
    img = image[0]
    if ref.ndim == 3:
        k = int(np.argmax((ref > 0).reshape(-1, ref.shape[-1]).sum(0)))
        return img[..., k], ref[..., k], pred[..., k], k
    return img, ref, pred, None


def plot_overlays(sweep_dir: Path, row: dict, metric: str, path: Path) -> tuple[Path | None, str]:
    """Best, median and worst test case of ``row``: image, reference and prediction side by side.

    Returns:
        (path or None, a note saying what is shown or why nothing is).
    """
    from everylabel.data.io import read_image, read_label
    from everylabel.data.manifest import load_manifest

    paths = row.get("paths") or {}
    pred_dir = sweep_dir / paths.get("pred_dir", "")
    ref_path = sweep_dir / paths.get("reference", "")
    if not paths or not pred_dir.is_dir() or not ref_path.is_file():
        return None, f"overlays skipped: the predictions or references of run {row['name']} are not in {sweep_dir}"
    scores = {c: v for c, v in case_scores(row, metric).items() if not math.isnan(v)}
    if not scores:
        return None, f"overlays skipped: run {row['name']} has no defined {metric}"
    ranked = sorted(scores, key=lambda c: scores[c], reverse=metric not in LOWER_IS_BETTER)
    picks = [("best", ranked[0]), ("median", ranked[len(ranked) // 2]), ("worst", ranked[-1])]
    picks = [(label, cid) for i, (label, cid) in enumerate(picks) if cid not in [c for _, c in picks[:i]]]
    manifest = load_manifest(ref_path)
    cases = {c.id: c for c in manifest.cases}
    fig = _figure(9.0, 3.0 * len(picks))
    import matplotlib

    cmap = matplotlib.colormaps["tab10"]
    for i, (label, cid) in enumerate(picks):
        case, pred_file = cases.get(cid), _find_prediction(pred_dir, cid)
        if case is None or case.mask is None or pred_file is None:
            return None, f"overlays skipped: case {cid} of run {row['name']} has no reference or prediction"
        image, _ = read_image(case.images, key=case.image_key)
        mapping, threshold = manifest.label_options(case)
        ref, _ = read_label(case.mask, key=case.label_key, mapping=mapping, threshold=threshold)
        pred, _ = read_label(pred_file)
        img, r, p, k = _display_slice(image, ref, pred)
        lo, hi = np.percentile(img, [1, 99])
        where = f", slice {k}" if k is not None else ""
        for j, (title, lab) in enumerate((("image", None), ("reference", r), ("prediction", p))):
            ax = fig.add_subplot(len(picks), 3, 3 * i + j + 1)
            ax.imshow(img, cmap="gray", vmin=lo, vmax=hi if hi > lo else lo + 1, interpolation="nearest")
            if lab is not None:
                ax.imshow(np.ma.masked_equal(lab, 0), cmap=cmap, vmin=0, vmax=9, alpha=0.5, interpolation="nearest")
            ax.set_axis_off()
            name = f"{label}: {cid}{where} ({metric} {scores[cid]:.3f})" if j == 0 else title
            ax.set_title(name, fontsize=8)
    fig.tight_layout()
    _save(fig, path)
    return path, f"best, median and worst test case of the best run {row['name']} ({metric})"


# -------------------------------------------------------------------------------------------------------- output


def _md_table(header: list[str], body: list[list[str]], left: int = 1) -> str:
    align = ["---"] * left + ["---:"] * (len(header) - left)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in body]) + "\n"


def _html_table(header: list[str], body: list[list[str]]) -> str:
    e = html.escape
    head = "".join(f"<th>{e(h)}</th>" for h in header)
    rows = "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row) + "</tr>" for row in body)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


_CSS = ("body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}"
        "table{border-collapse:collapse;margin:1em 0;font-size:14px}th,td{border:1px solid #ccc;padding:4px 8px;"
        "text-align:right}th:first-child,td:first-child{text-align:left}th{background:#f3f3f3}"
        "img{max-width:100%}figure{margin:1em 0}figcaption{font-size:13px;color:#555}")


def _render(title: str, blocks: list[tuple], out: Path) -> tuple[str, str]:
    """Blocks: ("h2", text) / ("p", text) / ("table", header, body) / ("img", path, caption)."""
    md, page = [f"# {title}\n"], []
    e = html.escape
    for block in blocks:
        kind = block[0]
        if kind == "h2":
            md.append(f"## {block[1]}\n")
            page.append(f"<h2>{e(block[1])}</h2>")
        elif kind == "p":
            md.append(f"{block[1]}\n")
            page.append(f"<p>{e(block[1])}</p>")
        elif kind == "table":
            md.append(_md_table(block[1], block[2], block[3] if len(block) > 3 else 1))
            page.append(_html_table(block[1], block[2]))
        elif kind == "img":
            path, caption = block[1], block[2]
            md.append(f"![{caption}]({path.relative_to(out).as_posix()})\n")
            data = base64.b64encode(path.read_bytes()).decode("ascii")
            page.append(f'<figure><img alt="{e(caption)}" src="data:image/png;base64,{data}"/>'
                        f"<figcaption>{e(caption)}</figcaption></figure>")
    doc = ('<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"/>'
           f"<title>{e(title)}</title><style>{_CSS}</style></head><body><h1>{e(title)}</h1>"
           + "\n".join(page) + "</body></html>\n")
    return "\n".join(md), doc


def sweep_rows(sweep_dir: str | Path) -> list[dict]:
    """The stored rows of the sweep last started in ``sweep_dir``: several sweep files may share one directory (and
    so their common runs); ``sweep.json`` lists the runs of the last one. Without it, every stored row."""
    sweep_dir = Path(sweep_dir)
    rows = load_results(sweep_dir)
    info = sweep_dir / "sweep.json"
    if info.is_file():
        names = set(json.loads(info.read_text(encoding="utf-8")).get("runs", []))
        if names:
            rows = [r for r in rows if r["name"] in names]
    return rows


def write_report(sweep_dir: str | Path, out: str | Path | None = None, *, metric: str = "dice",
                 test_unit: str = "case", alpha: float = 0.05) -> dict:
    """Write ``report.md``, ``report.html`` and PNG plots for the sweep in ``sweep_dir`` (results only).

    Returns:
        ``{"markdown", "html", "images": [...]}`` paths.

    Raises:
        ValueError: no results, or ``metric`` was not recorded.
    """
    sweep_dir = Path(sweep_dir)
    rows = sweep_rows(sweep_dir)
    ok = [r for r in rows if r["status"] == "ok"]
    if not ok:
        raise ValueError(f"{sweep_dir} has no finished run yet ({len(rows)} failed)")
    metrics = metric_names(ok)
    if metric not in metrics:
        raise ValueError(f"metric {metric!r} was not recorded; the runs have {', '.join(metrics)}")
    metrics = [metric] + [m for m in metrics if m != metric]
    out = Path(out) if out else sweep_dir / "report"
    out.mkdir(parents=True, exist_ok=True)
    blocks: list[tuple] = []
    images: list[Path] = []
    failed = [r for r in rows if r["status"] != "ok"]
    blocks.append(("p", f"{len(rows)} run(s): {len(ok)} finished, {len(failed)} failed. A run's score is the mean "
                        "over its test cases of each case's mean over foreground classes; a cell is mean ± sample "
                        "std (ddof 1) over seeds and folds, n = runs."))

    table = budget_table(rows, metric)
    info = table["protocol_info"]
    blocks.append(("h2", "Annotation budgets"))
    blocks.append(("table", ["protocol", "family", "full masks", "cost (annotator-hours)", "cost / full masks"],
                   [[p, info[p]["family"], f"{info[p]['n_masks']:g}", _fmt(info[p]["cost_hours"], 2),
                     f"{100 * info[p]['cost_fraction']:.1f}%" if not math.isnan(info[p]["cost_fraction"]) else "–"]
                    for p in table["protocols"]], 2))
    for m in metrics:
        t = table if m == metric else budget_table(rows, m)
        direction = "lower is better" if m in LOWER_IS_BETTER else "higher is better"
        blocks.append(("h2", f"{m} by method and budget ({direction})"))
        body = []
        for meth in t["methods"]:
            cells = []
            for p in t["protocols"]:
                c = t["cells"].get((meth, p))
                cells.append("" if c is None else f"{_fmt(c['mean'])} ± {_fmt(c['std'])} (n={c['n']})")
            body.append([meth, *cells])
        blocks.append(("table", ["method", *t["protocols"]], body))
        for x, what in (("n_masks", "number of full masks"), ("cost_hours", "annotation cost")):
            path = plot_curves(t, m, x, out / f"curve_{m}_{'masks' if x == 'n_masks' else 'cost'}.png")
            images.append(path)
            blocks.append(("img", path, f"{m} against the {what}"))

    tests = paired_tests(rows, metric, test_unit)
    blocks.append(("h2", f"Paired tests ({metric})"))
    pairs = "(seed, fold, case) pairs of case scores" if test_unit == "case" else "(seed, fold) pairs of run scores"
    if tests:
        blocks.append(("p", f"Two-sided Wilcoxon signed-rank test over {pairs}; Bonferroni over m = {tests[0]['m']} "
                            f"tests; * = significant at family-wise alpha = {alpha}."))
        blocks.append(("table", ["protocol", "A", "B", "n", "mean A−B", "median A−B", "p", "p (Bonferroni)",
                                 "better"],
                       [[t["protocol"], t["a"], t["b"], str(t["n"]), _fmt(t["mean_diff"], 4),
                         _fmt(t["median_diff"], 4), f"{t['p']:.3g}",
                         f"{t['p_bonferroni']:.3g}" + (" *" if t["p_bonferroni"] < alpha else ""), t["better"]]
                        for t in tests], 3))
    else:
        blocks.append(("p", "No protocol has two methods with finished runs to compare."))

    blocks.append(("h2", "Examples"))
    scored = [(run_score(r, metric), r) for r in ok]
    scored = [(s, r) for s, r in scored if not math.isnan(s)]
    if scored:
        best = (min if metric in LOWER_IS_BETTER else max)(scored, key=lambda t: t[0])[1]
        path, note = plot_overlays(sweep_dir, best, metric, out / "overlays.png")
        blocks.append(("p", note))
        if path is not None:
            images.append(path)
            blocks.append(("img", path, note))
    if failed:
        blocks.append(("h2", "Failed runs"))
        blocks.append(("table", ["run", "error"],
                       [[r["name"], str(r.get("error", "")).splitlines()[0] if r.get("error") else "?"]
                        for r in failed], 2))
    md, page = _render(f"Sweep report: {sweep_dir.name}", blocks, out)
    atomic_write_text(out / "report.md", md)
    atomic_write_text(out / "report.html", page)
    return {"markdown": out / "report.md", "html": out / "report.html", "images": images}


__all__ = ["LOWER_IS_BETTER", "budget_table", "paired_tests", "plot_curves", "plot_overlays", "protocol_order",
           "write_report"]
