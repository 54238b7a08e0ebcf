"""DRIVE full-mask benchmark: everylabel's 2D U-Net layouts vs MONAI's UNet, trained the same way in one script.

everylabel's U-Net layouts (``LAYOUTS``; ``--layouts`` picks them, the first one feeds the RESULT line):
  nnunet - the nnU-Net layout, two 3x3 convolutions per stage from full resolution on, features (8, ..., 256);
  stem   - a strided first convolution as in MONAI's UNet, features (16, 32, 64, 128, 256) from half resolution
           on, a transposed convolution back to a 4-channel full-resolution map (``network.stem_stride=2``).

Parts (train, step and infer by default):
  train  - train each layout (budget B minutes and B/2 minutes) and MONAI's UNet (B minutes) with the same loop,
           loss (Dice + CE, deep supervision where the network has it), augmentation, optimiser (AdamW, poly LR),
           128x128 patches, batch 8, precision "auto" (bf16 autocast on a CPU with native bf16); evaluate on
           DRIVE's 20 test images inside the field of view (1st observer), with flip test-time augmentation for
           all. A budget is the trainer's wall-clock budget (``train.minutes``): the LR schedule follows the
           fraction of the time spent, and the run stops when it is spent.
  train_ref - (not run by default) the train part in step budgets that stand for wall-clock minutes on the issue's
           reference machine, where MONAI's UNet trained this way took 9.7 minutes for 6,000 steps (97 ms a step),
           so that machines of other speeds can check the wall-clock targets. MONAI's B minutes are B*60/0.097
           steps; everylabel's are that times the ratio of the two networks' seconds per step in the training loop,
           measured first in this run (one process alternating single steps of the two, medians); B/2 minutes are
           half of those.
           The poly schedule runs over the steps. Only the first layout is trained. --ref-steps OURS,MONAI gives
           the budgets instead of probing them; a run that finished in --workdir with the same budget and seed is
           reused and one stopped part-way resumed, so seeds can be added later to a table with the same budgets.
  train3d - (not run by default) each layout in 3D on LA_heart_h5 (16 training volumes, the planner's 64^3 patches
           and batch 2, budget --minutes-3d), test Dice on the 4 test volumes without TTA.
  step   - median time of one training step (forward + backward + AdamW) of each layout at everylabel's training
           defaults (channels_last, fused AdamW as its trainer builds it, bf16 autocast where precision "auto"
           picks it: a CPU with native bf16) and of MONAI's UNet at its
           defaults (fp32, torch's default AdamW), similar parameter
           counts, same batch: 2D (8, 3, 128, 128) and 3D (2, 1, 64, 64, 64); interleaved repeats.
  infer  - sliding-window inference of MONAI's 3D UNet (``monai_unet``, random weights; the same network on both
           sides) on a 256x256x128 volume with 64^3 windows, overlap 0.5, Gaussian blending: MONAI's
           sliding_window_inference at its default (one window per call, fp32) vs everylabel's with
           convention="monai" in fp32 (4 windows per call, its default), in fp32 with 8 windows per call and a
           channels_last_3d network, and in bf16 autocast likewise; logits and labels compared with MONAI's. The
           "fast mode" is the quickest of these whose labels are >= 99.9% equal to MONAI's. Interleaved repeats,
           after a warm-up on a 128x128x64 crop that also checks, one window per call on both sides, that the two
           give identical logits.
  infer_unet - (not run by default) the same comparison with everylabel's default 3D U-Net as the network and
           everylabel's default window placement (4 windows per call, fp32 and bf16).
  infer_trained - (not run by default) the infer comparison with a trained network on real data: the 3D U-Net of a
           train3d run (--infer-model, or train3d in the same invocation) on the 4 LA_heart_h5 test volumes,
           MONAI's placement on both sides. Random weights on noise (infer) put many voxels within float rounding
           of a tie between the two logits; a trained network's labels show whether batching changes any.

Usage:
  python benchmarks/drive_supervised.py                      # train, step, infer (~60 min on 2 cores)
  python benchmarks/drive_supervised.py --parts step,infer   # the speed parts only (~4 min)
  python benchmarks/drive_supervised.py --parts train3d      # 3D layouts on LA_heart_h5 (~35 min)
  python benchmarks/drive_supervised.py --parts train_ref --layouts stem --seeds 0,1,2   # reference-machine budgets
  python benchmarks/drive_supervised.py --parts train3d,infer_trained --layouts stem --no-monai --workdir W
Ends with: RESULT drive_dice=... train_minutes=... drive_dice_half_budget=... monai_drive_dice=...
step_ratio_vs_monai=... step_ratio_3d_vs_monai=... [la3d_dice_<layout>=...]
[ref_drive_dice=... ref_drive_dice_half_budget=... ref_monai_drive_dice=... ref_steps=... ref_half_steps=...
ref_monai_steps=... ref_inloop_ratio_vs_monai=...]
infer_ratio_vs_monai=... infer_ratio_bf16_vs_monai=... infer_label_agreement_fp32=... infer_label_agreement_bf16=...
infer_ratio_fast_vs_monai=... [infer_trained_ratio_vs_monai=... infer_trained_ratio_cl3_vs_monai=...
infer_trained_differing_voxels_fp32=... infer_trained_differing_voxels_cl3=... infer_trained_differing_voxels_bf16=...]
"""

from __future__ import annotations

import argparse
import copy
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from everylabel.engine.checkpoint import atomic_write_json
from everylabel.engine.trainer import autocast_dtype
from everylabel.networks.unet import DEFAULT_FEATURES, STEM_FEATURES

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "examples" / "manifests" / "drive.yaml"
LA_MANIFEST = REPO / "examples" / "manifests" / "la_heart.yaml"
DRIVE_BASE = ("data.patch_size=[128, 128]", "data.batch_size=8")
# The issue's reference machine: MONAI's UNet, trained as in the train part, took 9.7 minutes for 6,000 steps.
REF_MONAI_STEP_S = 9.7 * 60 / 6000
LA_BASE = ("optim.lr=0.003",)  # 3D: the planner's defaults (64^3 patches, batch 2); the LR of the recorded runs
# everylabel U-Net layouts compared (constructor arguments; the training runs get the same as config overrides).
# Each layout spelled out (stride and channels), so that a run does not depend on the config's default layout.
LAYOUTS = {
    "stem": {"stem_stride": 2, "features": STEM_FEATURES},  # the training default: strided stem, MONAI's channels
    "nnunet": {"stem_stride": 1, "features": DEFAULT_FEATURES},  # two 3x3 convs per stage from full resolution on
}


def layout_overrides(name: str) -> tuple[str, ...]:
    """The ``--set`` overrides that give a training run the constructor arguments of ``LAYOUTS[name]``."""
    return tuple(f"network.{k}={list(v) if isinstance(v, tuple) else v}" for k, v in LAYOUTS[name].items())


# ----------------------------------------------------------------------------------------------------------------
def monai_unet(spatial_dims: int, in_channels: int, out_channels: int, **_ignored):
    """MONAI's UNet with the channels of the issue's reference run (about 1.6 M parameters in 2D)."""
    from monai.networks.nets import UNet as MonaiUNet

    return MonaiUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels,
                     channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)


def n_params(m: torch.nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


# ----------------------------------------------------------------------------------------------------------------
def train_and_evaluate(network: str, minutes: float, seed: int, workdir: Path,
                       overrides: tuple[str, ...] = (), tag: str = "", manifest: Path = MANIFEST,
                       base: tuple[str, ...] = DRIVE_BASE, tta: bool = True, steps: int | None = None) -> dict:
    """Train for a wall-clock budget (``train.minutes``: the poly schedule follows the fraction of the budget spent
    and the run stops when it is spent), predict the test split, Dice.

    With ``steps``, train for that many steps instead (``train.steps``, the poly schedule over them); ``minutes``
    is then the reference-machine budget the steps stand for, kept in the row as ``budget_min``.
    """
    from everylabel.engine.evaluation import evaluate
    from everylabel.engine.predictor import predict
    from everylabel.engine.trainer import train
    from everylabel.experiments.config import load_config
    from everylabel.networks import NETWORKS

    NETWORKS.setdefault("monai_unet", monai_unet)
    common = [f"network.name={network}", *base, "data.val_fraction=0", f"train.seed={seed}", "train.log_every=100",
              "train.checkpoint_every=100000", *overrides]
    name = network + (f"_{tag}" if tag else "")
    budget = [f"train.minutes={minutes}"] if steps is None else [f"train.steps={steps}"]
    run = workdir / (f"{name}_{minutes:g}min_seed{seed}" if steps is None else f"{name}_{steps}steps_seed{seed}")
    done = run / "bench_row.json"
    if steps is not None and done.is_file():
        # a step-budget run does not depend on the machine's speed: a finished one is reused (same workdir)
        print(f"reusing {done}", flush=True)
        return json.loads(done.read_text())
    resumed = (run / "checkpoints" / "last.pt").is_file()
    t0 = time.perf_counter()
    # a step-budget run that was stopped part-way continues where it stopped (exact resume)
    m = train(manifest, run, load_config(None, common + budget), progress=False, resume=steps is not None)
    wall = time.perf_counter() - t0
    if not m["completed"]:  # stopped by SIGTERM: its checkpoint is kept, the benchmark stops without a row
        raise SystemExit(f"{run} stopped at step {m['steps']} before its budget; run the same command to resume it")
    pred = workdir / f"{run.name}_pred"
    t1 = time.perf_counter()
    predict(run, manifest, pred, progress=False, split="test", tta=tta)
    infer_s = time.perf_counter() - t1
    summary = evaluate(pred, manifest, split="test", metrics=("dice",))
    dice = summary["metrics"]["dice"]["foreground_mean"]
    row = {"network": name, "budget_min": minutes, "budget": f"{minutes:g} min" if steps is None else
           f"{minutes:g} ref-min", "steps": m["steps"], "train_min": m["train_seconds"] / 60,
           "wall_min": wall / 60, "test_dice": float(dice), "predict_s": infer_s,
           "sec_per_step": m["train_seconds"] / m["steps"], "inloop_s": inloop_seconds(m["history"]),
           "resumed": resumed}
    if steps is not None:
        atomic_write_json(done, row)
    return row


def inloop_seconds(history: list) -> float:
    """Seconds per step between the first and the last log record of a run (the first steps' warm-up left out)."""
    logs = [h for h in history if "lr" in h]
    if len(logs) < 2:
        return float("nan")
    return (logs[-1]["time"] - logs[0]["time"]) / (logs[-1]["step"] - logs[0]["step"])


def inloop_probe(layout: str, seed: int, overrides: tuple[str, ...], steps: int) -> dict:
    """Seconds per training step in the training loop of everylabel's layout and of MONAI's UNet, set up the way
    the trainer sets up the train part's runs (plan, patch sampler, augmentation, collate, channels_last, bf16
    autocast where native, the method's loss, the configured optimiser). One process alternates single steps of
    the two, each timed from drawing its batch to the optimiser step; medians over ``steps`` alternations, so the
    machine's drift and spikes hit both alike (short separate runs on a busy 2-core machine did not agree)."""
    from everylabel.data.batch import collate
    from everylabel.data.manifest import load_case, load_dataset
    from everylabel.data.sampling import PatchSampler
    from everylabel.engine.planning import plan_run, prepare
    from everylabel.engine.trainer import batch_groups, build_optimizer, split_cases
    from everylabel.experiments.config import load_config
    from everylabel.methods import build_method
    from everylabel.networks import NETWORKS, build_network
    from everylabel.transforms import build_augmentation

    NETWORKS.setdefault("monai_unet", monai_unet)
    manifest = load_dataset(MANIFEST)
    runners = {}
    for key, network, lay in (("ours", "unet", layout_overrides(layout)), ("monai", "monai_unet", ())):
        cfg = load_config(None, [f"network.name={network}", *DRIVE_BASE, "data.val_fraction=0",
                                 f"train.seed={seed}", *lay, *overrides])
        specs, _ = split_cases(manifest, cfg)
        raw = [load_case(manifest, c) for c in specs]
        plan = plan_run(cfg, manifest, raw)
        cases = [prepare(r, c.id, plan) for r, c in zip(raw, specs)]
        torch.manual_seed(seed)
        net = build_network(network, **plan.network).to(memory_format=torch.channels_last)
        method = build_method(cfg.method, deep_supervision=cfg.network.deep_supervision)
        method.setup(net)
        rng = np.random.default_rng(seed)
        runners[key] = dict(
            net=net, method=method, opt=build_optimizer(cfg, net.parameters()), rng=rng,
            aug=build_augmentation(cfg.augment),
            sampler=PatchSampler(cases, plan.sample_patch, cfg.data.foreground_oversample, rng,
                                 slice_axis=plan.slice_axis, slice_context=plan.slice_context),
            groups=batch_groups(cfg.data.labelled_fraction, plan.batch_size, 1, cases),
            amp=autocast_dtype(cfg.train.precision, torch.device("cpu")))

    def one_step(r: dict, step: int) -> float:
        t = time.perf_counter()
        batch = collate([r["aug"](r["sampler"].sample(g), r["rng"]) for g in r["groups"]])
        batch.image = batch.image.contiguous(memory_format=torch.channels_last)
        with torch.autocast("cpu", dtype=r["amp"], enabled=r["amp"] is not None):
            loss = r["method"](r["net"], batch, step=step, total_steps=steps)["loss"]
        r["opt"].zero_grad(set_to_none=True)
        loss.backward()
        r["opt"].step()
        return time.perf_counter() - t

    times: dict = {k: [] for k in runners}
    for step in range(steps + 5):
        for key, r in runners.items():
            dt = one_step(r, step)
            if step >= 5:  # warm-up left out
                times[key].append(dt)
    ours, monai = statistics.median(times["ours"]), statistics.median(times["monai"])
    return {"ours_s": ours, "monai_s": monai, "ratio": monai / ours, "steps": steps}


# ----------------------------------------------------------------------------------------------------------------
def time_steps(makers, x, y, repeats: int, warmup: int = 3) -> list[float]:
    """Interleaved median step times (seconds), one per maker; a maker returns (model, bf16 autocast, memory format)
    and optionally whether AdamW is torch's fused kernel (everylabel's trainer uses it)."""
    from everylabel.losses import dice_ce_loss

    def step_fn(model, opt, amp, cl):
        xi = x.contiguous(memory_format=cl) if cl is not None else x
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = model(xi)
            outs = out if isinstance(out, (list, tuple)) else [out]
            loss = sum(dice_ce_loss(o, torch.nn.functional.interpolate(y.float(), size=o.shape[2:]).long())
                       for o in outs[:-1] or outs)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    runners = []
    for make in makers:
        model, amp, cl, *fused = make()
        opt = torch.optim.AdamW(model.parameters(), 1e-3, fused=bool(fused and fused[0]) or None)
        runners.append((model, opt, amp, cl))
    times: list[list[float]] = [[] for _ in runners]
    for i in range(warmup + repeats):
        for j, (model, opt, amp, cl) in enumerate(runners):
            t = time.perf_counter()
            step_fn(model, opt, amp, cl)
            if i >= warmup:
                times[j].append(time.perf_counter() - t)
    return [statistics.median(t) for t in times]


def step_benchmark(repeats: int) -> dict:
    """Step times of every everylabel layout and of MONAI's UNet, interleaved in one loop per dimensionality."""
    from everylabel.networks import UNet

    amp = autocast_dtype("auto", torch.device("cpu")) is not None  # the trainer's default: bf16 where it is native
    out = {"bf16": amp}
    for dims, shape in ((2, (8, 3, 128, 128)), (3, (2, 1, 64, 64, 64))):
        torch.manual_seed(0)
        x = torch.randn(shape)
        y = torch.randint(0, 2, (shape[0], 1) + shape[2:])
        cl = torch.channels_last if dims == 2 else torch.channels_last_3d

        def ours(kwargs, dims=dims, cl=cl, shape=shape):
            return lambda: (UNet(dims, shape[1], 2, **kwargs).to(memory_format=cl), amp, cl, True)

        def theirs(dims=dims, shape=shape):
            return monai_unet(dims, shape[1], 2), False, None

        makers = [ours(kwargs) for kwargs in LAYOUTS.values()] + [theirs]
        *t_ours, t_monai = time_steps(makers, x, y, repeats)
        out[dims] = {"monai_ms": 1000 * t_monai, "monai_params": n_params(theirs()[0]), "layouts": {
            name: {"ours_ms": 1000 * t, "ratio": t_monai / t, "ours_params": n_params(make()[0])}
            for name, t, make in zip(LAYOUTS, t_ours, makers)}}
    return out


INFER_VOLUME = (1, 1, 256, 256, 128)
INFER_ROI = (64, 64, 64)
INFER_CROP = (slice(None), slice(None), slice(0, 128), slice(0, 128), slice(0, 64))  # 9 windows
INFER_RUNS = {  # everylabel runs with convention="monai": (windows per call, channels_last_3d network, bf16 autocast)
    "fp32": (4, False, False),  # the library's default batching
    "fp32_cl1": (1, True, False),  # MONAI's one window per call, channels-last weights
    "fp32_cl2": (2, True, False),  # 2 windows per call was the cheapest per window for this network here
    "fp32_cl3": (3, True, False),
    "fp32_fast": (8, True, False),
    "bf16": (8, True, True),
}
INFER_TRAINED_RUNS = {name: INFER_RUNS[name] for name in ("fp32", "fp32_cl2", "fp32_cl3", "bf16")}
FAST_MIN_AGREEMENT = 0.999  # "fast mode": the quickest run whose labels stay this close to MONAI's


def time_runners(runners: dict, repeats: int) -> tuple[dict, dict]:
    """Interleaved repeats of argument-less callables; returns median seconds and the last output of each."""
    times: dict = {name: [] for name in runners}
    outputs = {}
    for _ in range(repeats):
        for name, run in runners.items():
            t = time.perf_counter()
            outputs[name] = run()
            times[name].append(time.perf_counter() - t)
    return {name: statistics.median(v) for name, v in times.items()}, outputs


def compare_labels(ref: torch.Tensor, out: torch.Tensor) -> dict:
    equal = ref.argmax(1) == out.argmax(1)
    return {"agreement": float(equal.float().mean()), "differing_voxels": int((~equal).sum()),
            "max_abs_logit_diff": float((ref - out).abs().max())}


def infer_benchmark(repeats: int) -> dict:
    from monai.inferers import sliding_window_inference as monai_swi

    from everylabel.engine.inference import sliding_window_inference

    torch.manual_seed(0)
    net = monai_unet(3, 1, 2).eval()
    net_cl = copy.deepcopy(net).to(memory_format=torch.channels_last_3d)
    vol = torch.randn(INFER_VOLUME)

    def monai(x):
        return monai_swi(x, INFER_ROI, 1, net, overlap=0.5, mode="gaussian")

    def ours(x, sw_batch_size, channels_last, amp):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            return sliding_window_inference(x, INFER_ROI, net_cl if channels_last else net, overlap=0.5,
                                            sw_batch_size=sw_batch_size, convention="monai")

    with torch.inference_mode():
        crop = vol[INFER_CROP]
        exact = compare_labels(monai(crop), ours(crop, 1, False, False))  # also the warm-up of both
        for config in INFER_RUNS.values():
            ours(crop, *config)
        runners = {"monai": lambda: monai(vol)}
        runners.update({name: lambda config=config: ours(vol, *config) for name, config in INFER_RUNS.items()})
        med, out = time_runners(runners, repeats)
    runs = {name: {"seconds": med[name], "ratio": med["monai"] / med[name], "sw_batch_size": config[0],
                   "channels_last_3d": config[1], "bf16": config[2], **compare_labels(out["monai"], out[name])}
            for name, config in INFER_RUNS.items()}
    passing = [name for name, run in runs.items() if run["agreement"] >= FAST_MIN_AGREEMENT]
    fast = max(passing, key=lambda name: runs[name]["ratio"], default=None)
    return {"monai_s": med["monai"], "runs": runs, "fast": fast, "exact_crop": exact, "repeats": repeats}


def infer_unet_benchmark(repeats: int) -> dict:
    from monai.inferers import sliding_window_inference as monai_swi

    from everylabel.engine.inference import sliding_window_inference
    from everylabel.networks import UNet

    torch.manual_seed(0)
    net = UNet(3, 1, 2).eval()
    vol = torch.randn(INFER_VOLUME)

    def ours(amp):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            return sliding_window_inference(vol, INFER_ROI, net.predict_logits, overlap=0.5, sw_batch_size=4)

    with torch.inference_mode():
        med, out = time_runners({"monai": lambda: monai_swi(vol, INFER_ROI, 1, net.predict_logits, overlap=0.5,
                                                            mode="gaussian"),
                                 "fp32": lambda: ours(False), "bf16": lambda: ours(True)}, repeats)
    return {"monai_s": med["monai"], "ours_fp32_s": med["fp32"], "ours_bf16_s": med["bf16"],
            "ratio_fp32": med["monai"] / med["fp32"], "ratio_bf16": med["monai"] / med["bf16"],
            "fp32": compare_labels(out["monai"], out["fp32"]), "bf16": compare_labels(out["monai"], out["bf16"])}


def infer_trained_benchmark(run_dir: Path, repeats: int) -> dict:
    """A trained 3D U-Net (a train3d run) on LA_heart_h5's 4 test volumes, preprocessed as its predictor does:
    MONAI's sliding_window_inference at its defaults vs everylabel's runs of ``INFER_TRAINED_RUNS``; the times are
    sums over the volumes of interleaved medians, the label comparison counts every voxel of the four."""
    from monai.inferers import sliding_window_inference as monai_swi

    from everylabel.annotations.kinds import Annotations
    from everylabel.data.io import read_image
    from everylabel.data.preprocess import preprocess_case
    from everylabel.engine.inference import sliding_window_inference
    from everylabel.engine.predictor import Predictor, find_inputs

    predictor = Predictor(run_dir, "last", device="cpu")
    net = predictor.network
    net_cl = copy.deepcopy(net).to(memory_format=torch.channels_last_3d)
    roi = tuple(predictor.plan.patch_size)

    def ours(x, sw_batch_size, channels_last, amp):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            return sliding_window_inference(x, roi, (net_cl if channels_last else net).predict_logits, overlap=0.5,
                                            sw_batch_size=sw_batch_size, convention="monai").float()

    totals = {name: 0.0 for name in ("monai", *INFER_TRAINED_RUNS)}
    counts = {name: {"differing_voxels": 0, "max_abs_logit_diff": 0.0} for name in INFER_TRAINED_RUNS}
    voxels, shapes = 0, []
    with torch.inference_mode():
        for case in find_inputs(LA_MANIFEST, split="test"):
            image, meta = read_image(case.images[0], key=case.key)
            img, _, _ = preprocess_case(image, Annotations(), tuple(case.spacing or meta.spacing),
                                        predictor.plan.preprocess)
            x = torch.from_numpy(np.ascontiguousarray(img))[None]
            shapes.append(tuple(x.shape[2:]))
            runners = {"monai": lambda x=x: monai_swi(x, roi, 1, net.predict_logits, overlap=0.5, mode="gaussian")}
            runners.update({name: lambda x=x, config=config: ours(x, *config)
                            for name, config in INFER_TRAINED_RUNS.items()})
            for run in runners.values():  # warm-up
                run()
            med, out = time_runners(runners, repeats)
            voxels += out["monai"][0, 0].numel()
            for name in totals:
                totals[name] += med[name]
            for name in INFER_TRAINED_RUNS:
                c = compare_labels(out["monai"], out[name])
                counts[name]["differing_voxels"] += c["differing_voxels"]
                counts[name]["max_abs_logit_diff"] = max(counts[name]["max_abs_logit_diff"], c["max_abs_logit_diff"])
    runs = {name: {"seconds": totals[name], "ratio": totals["monai"] / totals[name], "sw_batch_size": config[0],
                   "channels_last_3d": config[1], "bf16": config[2],
                   "agreement": 1 - counts[name]["differing_voxels"] / voxels, **counts[name]}
            for name, config in INFER_TRAINED_RUNS.items()}
    return {"monai_s": totals["monai"], "runs": runs, "voxels": voxels, "shapes": shapes, "run_dir": str(run_dir),
            "step": predictor.step, "repeats": repeats}


def print_train_table(rows: list) -> None:
    print("| network | budget | steps | train time | test Dice | predict |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['network']} | {r['budget']} | {r['steps']} | {r['train_min']:.1f} min"
              f"{' (resumed: this session)' if r.get('resumed') else ''} | "
              f"{r['test_dice']:.4f} | {r['predict_s']:.1f} s |")
    groups: dict = {}
    for r in rows:
        groups.setdefault((r["network"], r["budget"]), []).append(r["test_dice"])
    if any(len(d) > 1 for d in groups.values()):
        print("\n| network | budget | seeds | test Dice, mean +- std (sample) |")
        print("|---|---:|---:|---:|")
        for (network, budget), dice in groups.items():
            std = f"{np.std(dice, ddof=1):.4f}" if len(dice) > 1 else "-"
            print(f"| {network} | {budget} | {len(dice)} | {np.mean(dice):.4f} +- {std} |")


def print_infer_table(rows: list, monai_s: float) -> None:
    print("| runner | time | speed-up vs MONAI | labels equal to MONAI's | differing voxels | max abs logit diff |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, sec, cmp in rows:
        equal = "-" if cmp is None else f"{100 * cmp['agreement']:.4f}%"
        differing = "-" if cmp is None else f"{cmp['differing_voxels']}"
        diff = "-" if cmp is None else f"{cmp['max_abs_logit_diff']:.1e}"
        print(f"| {name} | {sec:.2f} s | {monai_s / sec:.2f}x | {equal} | {differing} | {diff} |")


def print_infer_runs(r: dict) -> None:
    """The table of an infer / infer_trained result: MONAI's runner, then everylabel's runs with convention="monai"."""
    rows = [("MONAI `sliding_window_inference` (sw_batch_size=1, fp32)", r["monai_s"], None)]
    for run in r["runs"].values():
        label = (f'everylabel, convention="monai", {run["sw_batch_size"]} windows/call, '
                 f'{"bf16" if run["bf16"] else "fp32"}{", channels_last_3d" if run["channels_last_3d"] else ""}')
        rows.append((label, run["seconds"], run))
    print_infer_table(rows, r["monai_s"])


# ----------------------------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--parts", default="train,step,infer")
    ap.add_argument("--minutes", type=float, default=10.0, help="training budget of the main runs")
    ap.add_argument("--seeds", default="0", help="comma-separated training seeds")
    ap.add_argument("--repeats", type=int, default=10, help="repeats of the timed parts (medians reported)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--layouts", default=",".join(LAYOUTS),
                    help=f"everylabel U-Net layouts to train, the first one is the RESULT's (of {', '.join(LAYOUTS)})")
    ap.add_argument("--no-monai", action="store_true", help="train everylabel's layouts only")
    ap.add_argument("--budgets", default="full,half",
                    help="train: everylabel's budgets, 'full' (--minutes) and/or 'half'; empty for MONAI's runs only")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                    help="a config override for every training run, both networks (e.g. optim.lr=0.005)")
    ap.add_argument("--ref-steps", default=None, metavar="OURS,MONAI",
                    help="train_ref: everylabel's and MONAI's step budgets for --minutes, given instead of probed "
                         "(to add seeds to an earlier run with the same budgets; half budgets are half of OURS)")
    ap.add_argument("--probe-steps", type=int, default=300,
                    help="train_ref: steps of each network in the in-loop step-time probe")
    ap.add_argument("--minutes-3d", type=float, default=15.0, help="training budget of the train3d runs")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--infer-model", default=None,
                    help="infer_trained: a trained 3D run directory (default: the train3d run of the first layout, "
                         "seed 0, in --workdir)")
    ap.add_argument("--json", default=None, help="also write all numbers to this JSON file")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    parts = set(args.parts.split(","))
    unknown = [x for x in args.layouts.split(",") if x not in LAYOUTS] + [
        x for x in parts if x not in ("train", "train_ref", "train3d", "step", "infer", "infer_unet", "infer_trained")]
    if unknown:
        ap.error(f"unknown part or layout {', '.join(unknown)}; parts: train, train_ref, train3d, step, infer, "
                 f"infer_unet, infer_trained; "
                 f"layouts: {', '.join(LAYOUTS)}")
    budgets = [b for b in args.budgets.split(",") if b]
    if any(b not in ("full", "half") for b in budgets):
        ap.error(f"--budgets takes 'full' and/or 'half', got {args.budgets!r}")
    extra = tuple(args.overrides)
    if not MANIFEST.is_file():
        print(f"missing {MANIFEST}", file=sys.stderr)
        return 1
    results: dict = {"machine": {"threads": torch.get_num_threads(), "torch": torch.__version__}}
    tmp = tempfile.TemporaryDirectory(prefix="drive-bench-") if args.workdir is None else None
    workdir = Path(args.workdir or tmp.name)
    workdir.mkdir(parents=True, exist_ok=True)

    if "step" in parts:
        s = step_benchmark(args.repeats)
        results["step"] = s
        print("\n## Training step (median of interleaved repeats; everylabel at its training defaults: "
              f"{'bf16 autocast' if s.pop('bf16') else 'fp32'} + channels_last with "
              "fused AdamW; MONAI at its defaults, fp32)")
        print("| dims | everylabel layout | time | params | MONAI UNet | params | ratio (MONAI / ours) |")
        print("|---|---|---:|---:|---:|---:|---:|")
        for d, r in s.items():
            for name, lay in r["layouts"].items():
                print(f"| {d}D | {name} | {lay['ours_ms']:.1f} ms | {lay['ours_params'] / 1e6:.2f} M | "
                      f"{r['monai_ms']:.1f} ms | {r['monai_params'] / 1e6:.2f} M | {lay['ratio']:.2f}x |")
    if "infer" in parts:
        r = infer_benchmark(max(1, args.repeats // 4))
        results["infer"] = r
        print(f"\n## Sliding-window inference, MONAI's 3D UNet on both sides, 256x256x128 volume, 64^3 windows, "
              f"overlap 0.5, Gaussian (median of {r['repeats']})")
        print_infer_runs(r)
        print(f"fast mode (quickest with labels >= {100 * FAST_MIN_AGREEMENT:g}% equal to MONAI's): {r['fast']}")
        e = r["exact_crop"]
        print(f"exactness check, 128x128x64 crop, one window per call on both sides: labels "
              f"{100 * e['agreement']:.4f}% equal, max |logit difference| {e['max_abs_logit_diff']:.1e}")
    if "infer_unet" in parts:
        r = infer_unet_benchmark(max(1, args.repeats // 4))
        results["infer_unet"] = r
        print("\n## Sliding-window inference, everylabel's default 3D U-Net on both sides, default placement")
        print_infer_table([("MONAI `sliding_window_inference` (sw_batch_size=1, fp32)", r["monai_s"], None),
                           ("everylabel, 4 windows/call, fp32", r["ours_fp32_s"], r["fp32"]),
                           ("everylabel, 4 windows/call, bf16", r["ours_bf16_s"], r["bf16"])], r["monai_s"])
    if "train" in parts:
        rows = []
        for seed in [int(s) for s in args.seeds.split(",")]:
            for layout in args.layouts.split(","):
                for minutes in [{"full": args.minutes, "half": args.minutes / 2}[b] for b in budgets]:
                    rows.append(train_and_evaluate("unet", minutes, seed, workdir,
                                                   layout_overrides(layout) + extra, tag=layout))
            if not args.no_monai:
                rows.append(train_and_evaluate("monai_unet", args.minutes, seed, workdir, extra))
        results["train"] = rows
        results["peak_rss_mb"] = peak_rss_mb()
        print("\n## DRIVE test Dice (20 test images, inside the FOV, 1st observer)")
        print_train_table(rows)
        print(f"peak memory (RSS) {results['peak_rss_mb']:.0f} MB")
    if "train_ref" in parts:
        layout = args.layouts.split(",")[0]
        if args.ref_steps:
            full, monai_steps = (int(x) for x in args.ref_steps.split(","))
            probe = {"ratio": full / monai_steps, "given": True}
            print(f"\n## Step budgets given (--ref-steps): {args.minutes:g} reference minutes are {monai_steps} MONAI "
                  f"steps and {full} everylabel steps (in-loop ratio {probe['ratio']:.2f})", flush=True)
        else:
            probe = inloop_probe(layout, 0, extra, args.probe_steps)
            monai_steps = round(args.minutes * 60 / REF_MONAI_STEP_S)
            full = round(monai_steps * probe["ratio"])
            print(f"\n## In-loop seconds per step (medians of {probe['steps']} alternating steps): everylabel "
                  f"{layout} {1e3 * probe['ours_s']:.1f} ms, MONAI UNet "
                  f"{1e3 * probe['monai_s']:.1f} ms, ratio {probe['ratio']:.2f}; on the reference machine (MONAI "
                  f"{1e3 * REF_MONAI_STEP_S:.0f} ms a step) {args.minutes:g} minutes are {monai_steps} MONAI steps "
                  f"and {full} everylabel steps", flush=True)
        ref_steps = {"full": (args.minutes, full), "half": (args.minutes / 2, round(full / 2))}
        rows = []
        for seed in [int(s) for s in args.seeds.split(",")]:
            for b in budgets:
                minutes, steps = ref_steps[b]
                rows.append(train_and_evaluate("unet", minutes, seed, workdir, layout_overrides(layout) + extra,
                                               tag=layout, steps=steps))
            if not args.no_monai:
                rows.append(train_and_evaluate("monai_unet", args.minutes, seed, workdir, extra, steps=monai_steps))
        results["train_ref"] = {"probe": probe, "monai_steps": monai_steps, "steps": full, "rows": rows}
        print("\n## DRIVE test Dice in reference-machine step budgets (ref-min: minutes on the reference machine)")
        print_train_table(rows)
        ours_s = [r["inloop_s"] for r in rows if r["network"] == f"unet_{layout}"]
        monai_s = [r["inloop_s"] for r in rows if r["network"] == "monai_unet"]
        if ours_s and monai_s:
            print(f"in-loop seconds per step over these runs (medians): everylabel "
                  f"{1e3 * statistics.median(ours_s):.1f} ms, MONAI {1e3 * statistics.median(monai_s):.1f} ms, "
                  f"ratio {statistics.median(monai_s) / statistics.median(ours_s):.2f}")
    if "train3d" in parts:
        rows = []
        for seed in [int(s) for s in args.seeds.split(",")]:
            for layout in args.layouts.split(","):
                rows.append(train_and_evaluate("unet", args.minutes_3d, seed, workdir,
                                               layout_overrides(layout) + extra,
                                               tag=f"{layout}_3d", manifest=LA_MANIFEST, base=LA_BASE, tta=False))
        results["train3d"] = rows
        print("\n## LA_heart_h5 in 3D, test Dice (4 test volumes, 64^3 patches, batch 2, no TTA)")
        print_train_table(rows)
    if "infer_trained" in parts:
        run_dir = args.infer_model or workdir / f"unet_{args.layouts.split(',')[0]}_3d_{args.minutes_3d:g}min_seed0"
        if not (Path(run_dir) / "checkpoints" / "last.pt").is_file():
            ap.error(f"infer_trained needs a trained 3D run: --infer-model RUN_DIR, or the train3d part first "
                     f"(no checkpoint in {run_dir})")
        r = infer_trained_benchmark(Path(run_dir), max(1, args.repeats // 4))
        results["infer_trained"] = r
        print(f"\n## Sliding-window inference, trained 3D U-Net ({run_dir}, step {r['step']}) on the 4 LA_heart_h5 "
              f"test volumes {r['shapes']}, {r['voxels']} voxels, 64^3 windows, overlap 0.5, Gaussian "
              f"(sums of medians of {r['repeats']})")
        print_infer_runs(r)
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2, default=float))

    fields = []
    main_layout = args.layouts.split(",")[0]
    def dice_of(rows, network, minutes):
        return [r["test_dice"] for r in rows if r["network"] == network and r["budget_min"] == minutes]

    if "train" in results:
        def rows_of(network, minutes):
            return dice_of(results["train"], network, minutes)

        main_rows = [r for r in results["train"] if r["network"] == f"unet_{main_layout}"
                     and r["budget_min"] == args.minutes]
        if main_rows:
            fields += [f"drive_dice={np.mean(rows_of(f'unet_{main_layout}', args.minutes)):.4f}",
                       f"train_minutes={np.mean([r['train_min'] for r in main_rows]):.2f}"]
        if rows_of(f"unet_{main_layout}", args.minutes / 2):
            fields.append(f"drive_dice_half_budget={np.mean(rows_of(f'unet_{main_layout}', args.minutes / 2)):.4f}")
        if not args.no_monai:
            fields.append(f"monai_drive_dice={np.mean(rows_of('monai_unet', args.minutes)):.4f}")
    if "train_ref" in results:
        ref = results["train_ref"]

        def ref_dice(network, minutes):
            return np.mean(dice_of(ref["rows"], network, minutes))

        ours = f"unet_{main_layout}"
        if "full" in budgets:
            fields.append(f"ref_drive_dice={ref_dice(ours, args.minutes):.4f}")
        if "half" in budgets:
            fields.append(f"ref_drive_dice_half_budget={ref_dice(ours, args.minutes / 2):.4f}")
        if not args.no_monai:
            fields.append(f"ref_monai_drive_dice={ref_dice('monai_unet', args.minutes):.4f}")
        fields += [f"ref_steps={ref['steps']}", f"ref_half_steps={round(ref['steps'] / 2)}",
                   f"ref_monai_steps={ref['monai_steps']}", f"ref_inloop_ratio_vs_monai={ref['probe']['ratio']:.2f}"]
    if "step" in results:
        fields += [f"step_ratio_vs_monai={results['step'][2]['layouts'][main_layout]['ratio']:.2f}",
                   f"step_ratio_3d_vs_monai={results['step'][3]['layouts'][main_layout]['ratio']:.2f}"]
    if "train3d" in results:
        for layout in args.layouts.split(","):
            dice = [r["test_dice"] for r in results["train3d"] if r["network"] == f"unet_{layout}_3d"]
            fields.append(f"la3d_dice_{layout}={np.mean(dice):.4f}")
    if "infer" in results:
        runs = results["infer"]["runs"]
        fields += [f"infer_ratio_vs_monai={runs['fp32']['ratio']:.2f}",
                   f"infer_ratio_bf16_vs_monai={runs['bf16']['ratio']:.2f}",
                   f"infer_label_agreement_fp32={runs['fp32']['agreement']:.7f}",
                   f"infer_label_agreement_bf16={runs['bf16']['agreement']:.7f}"]
        if results["infer"]["fast"] is not None:
            fields.append(f"infer_ratio_fast_vs_monai={runs[results['infer']['fast']]['ratio']:.2f}")
    if "infer_unet" in results:
        fields += [f"infer_unet_ratio_vs_monai={results['infer_unet']['ratio_fp32']:.2f}",
                   f"infer_unet_ratio_bf16_vs_monai={results['infer_unet']['ratio_bf16']:.2f}"]
    if "infer_trained" in parts:
        runs = results["infer_trained"]["runs"]
        fields += [f"infer_trained_ratio_vs_monai={runs['fp32']['ratio']:.2f}",
                   f"infer_trained_ratio_cl3_vs_monai={runs['fp32_cl3']['ratio']:.2f}",
                   f"infer_trained_differing_voxels_fp32={runs['fp32']['differing_voxels']}",
                   f"infer_trained_differing_voxels_cl3={runs['fp32_cl3']['differing_voxels']}",
                   f"infer_trained_differing_voxels_bf16={runs['bf16']['differing_voxels']}"]
    print("RESULT " + " ".join(fields))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
