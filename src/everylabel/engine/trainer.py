"""The one training loop, for every method, on one process or under ``torchrun`` (DistributedDataParallel).

Read top to bottom: load and check the data, plan, build network/method/optimiser, (resume), then
``sample patches -> augment -> method(network, batch) -> step`` with validation and atomic checkpoints.
"""

from __future__ import annotations

import logging
import math
import os
import random
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn

from everylabel.data.batch import collate
from everylabel.data.sampling import PatchSampler, PreparedCase
from everylabel.engine.checkpoint import (
    atomic_write_json,
    atomic_write_text,
    code_version,
    load_checkpoint,
    save_checkpoint,
)
from everylabel.engine.inference import infer_logits
from everylabel.engine.planning import RunPlan, plan_run, prepare
from everylabel.experiments.config import DEFAULT_LR, Config, effective_lr
from everylabel.methods import build_method
from everylabel.networks import build_network
from everylabel.transforms import build_augmentation

log = logging.getLogger("everylabel")


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False
    """True when :func:`setup_distributed` created the process group (train then destroys it at the end)."""

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> DistInfo:
    """Initialise torch.distributed when launched by torchrun (gloo on CPU, nccl on CUDA)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    owned = not dist.is_initialized()
    if owned:
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend=backend)
    return DistInfo(rank=dist.get_rank(), world_size=dist.get_world_size(),
                    local_rank=int(os.environ.get("LOCAL_RANK", "0")), owns_group=owned)


def pick_device(info: DistInfo) -> torch.device:
    if torch.cuda.is_available():
        torch.cuda.set_device(info.local_rank)
        return torch.device("cuda", info.local_rank)
    return torch.device("cpu")


# oneDNN instruction-set caps (``ONEDNN_MAX_CPU_ISA``) below AVX512_CORE_BF16: no bf16 dot products
_ONEDNN_ISAS_WITHOUT_BF16 = {"SSE41", "AVX", "AVX2", "AVX2_VNNI", "AVX2_VNNI_2", "AVX512_CORE", "AVX512_CORE_VNNI"}


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes in bfloat16 natively: oneDNN's bf16 kernels are available and not capped below
    AVX512_CORE_BF16 by ``ONEDNN_MAX_CPU_ISA``, and on x86 the CPU has AVX512-BF16 or AMX (elsewhere, e.g. ARM,
    oneDNN's check covers the bf16 instructions).

    Without them oneDNN emulates bf16, and bf16 autocast makes a training step slower than fp32. Measured with
    oneDNN and ATen capped on a 2-core AVX512-BF16 machine (``benchmarks/cpu_precision.py``, BENCHMARKS.md), the
    default U-Net's bf16 step time over fp32's, two runs: 0.84-0.85 (2D) and 0.77-0.80 (3D) uncapped; 2.2-2.4 at
    AVX512 without BF16 (Skylake to Cascade Lake servers); 9.8-10.1 (2D) at AVX2, the instruction set of most laptops
    and desktops.
    """
    import platform

    cap = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "").upper()
    if cap in _ONEDNN_ISAS_WITHOUT_BF16:
        return False
    try:
        if not torch.ops.mkldnn._is_mkldnn_bf16_supported():
            return False
        if platform.machine().lower() in ("x86_64", "amd64", "x86", "i386", "i686"):
            amx = getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)
            return bool(torch.cpu._is_avx512_bf16_supported() or amx())
        return True
    except (AttributeError, RuntimeError):  # an older torch without these checks: no autocast by default
        return False


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for a precision setting (None = fp32).

    "auto": bf16 on a CPU with native bf16 (:func:`cpu_has_native_bf16`) and on CUDA devices that support it, fp16 on
    other CUDA devices, fp32 on other CPUs.
    """
    if precision == "fp32":
        return None
    if precision == "auto":
        if device.type == "cpu":
            return torch.bfloat16 if cpu_has_native_bf16() else None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise ValueError("train.precision='fp16' needs CUDA; use 'bf16' or 'fp32' on CPU")
        return torch.float16
    raise ValueError(f"precision must be 'auto', 'bf16', 'fp16' or 'fp32', got {precision!r}")


def lr_lambda(schedule: str, total: int, warmup: int, progress: Callable[[], float] | None = None):
    """Multiplier of the base learning rate at a step: poly (exponent 0.9, nnU-Net), cosine or constant.

    ``progress``, when given, returns how far the run is through its schedule (0-1; a wall-clock budget's fraction
    spent, see ``TrainClock``) and replaces ``step / total``; the linear warm-up stays counted in steps."""
    if schedule not in ("poly", "cosine", "constant"):
        raise ValueError(f"optim.schedule must be 'poly', 'cosine' or 'constant', got {schedule!r}")

    def f(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if progress is not None:
            t = min(1.0, progress())
        else:
            t = min(1.0, (step - warmup) / max(1, total - warmup))
        if schedule == "poly":
            return (1 - t) ** 0.9
        if schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * t))
        return 1.0

    return f


class TrainClock:
    """Where a run is in its schedule: ``step / train.steps``, or with ``train.minutes`` the fraction of that
    wall-clock budget spent (training time summed over resumed sessions).

    ``tick`` reads the clock once per step (under DDP rank 0's reading, broadcast, so that every rank takes the same
    learning rate and stops at the same step); ``fraction``, ``finished`` and ``projected_steps`` use that reading.
    """

    def __init__(self, total_steps: int, minutes: float | None, spent_s: float = 0.0):
        if minutes is not None and not minutes > 0:
            raise ValueError(f"train.minutes must be > 0 (or null for a step schedule), got {minutes!r}")
        self.total_steps = total_steps
        self.budget_s = None if minutes is None else float(minutes) * 60.0
        self.spent_s = spent_s  # training time of earlier sessions of this run
        self.now_s = spent_s  # the last reading
        self._t0: float | None = None

    def start(self) -> None:
        self._t0 = time.perf_counter()

    def tick(self, world_size: int = 1) -> None:
        now = self.spent_s + (time.perf_counter() - self._t0 if self._t0 is not None else 0.0)
        if world_size > 1 and self.budget_s is not None:
            t = torch.tensor([now], dtype=torch.float64)
            dist.broadcast(t, 0)
            now = float(t)
        self.now_s = now

    def fraction(self, step: int | None = None) -> float:
        """Progress through the schedule, 0-1 (the step count when the schedule is in steps)."""
        if self.budget_s is None:
            return min(1.0, (step or 0) / max(1, self.total_steps))
        return min(1.0, self.now_s / self.budget_s)

    def finished(self, step: int) -> bool:
        return self.now_s >= self.budget_s if self.budget_s is not None else step >= self.total_steps

    def projected_steps(self, step: int) -> int:
        """The schedule's length in steps, for methods whose ramps are counted in steps (a wall-clock budget
        projects it from the steps taken so far)."""
        if self.budget_s is None:
            return self.total_steps
        f = self.fraction()
        return max(step + 1, round(step / f)) if f > 0 else step + 1


def build_optimizer(cfg, params) -> torch.optim.Optimizer:
    """AdamW or SGD per ``cfg.optim``. AdamW is torch's fused implementation where it exists (CPU from torch 2.4): the
    same update in one kernel, 2-3x faster than the per-tensor loop on 2 cores for the default U-Net (1.4 vs 4.7 ms
    per step in 2D, 5.0 vs 10.6 ms in 3D), equal up to float rounding."""
    o = cfg.optim
    if o.name not in DEFAULT_LR:
        raise ValueError(f"optim.name must be 'adamw' or 'sgd', got {o.name!r}")
    lr = effective_lr(o.name, o.lr)
    if o.name == "adamw":
        params = list(params)
        try:
            return torch.optim.AdamW(params, lr=lr, weight_decay=o.weight_decay, fused=True)
        except (RuntimeError, TypeError, ValueError):  # older torch or a device without the fused kernel
            return torch.optim.AdamW(params, lr=lr, weight_decay=o.weight_decay)
    return torch.optim.SGD(params, lr=lr, momentum=o.momentum, nesterov=True, weight_decay=o.weight_decay)


def split_cases(manifest, cfg: Config) -> tuple[list, list]:
    """Training and validation case specs: the "val" split if present, else a seeded fraction of "train"."""
    train = manifest.split(cfg.data.train_split)
    val = manifest.split(cfg.data.val_split)
    if not train:
        raise ValueError(f"{manifest.source}: no cases in split {cfg.data.train_split!r}")
    if not val and cfg.data.val_fraction > 0 and len(train) >= 5:
        labelled = [c for c in train if c.mask is not None or getattr(c, "masks_per_class", None)]
        n_val = max(1, int(round(cfg.data.val_fraction * len(train))))
        rng = random.Random(cfg.train.seed)
        pool = sorted(labelled, key=lambda c: c.id)
        rng.shuffle(pool)
        val_ids = {c.id for c in pool[:n_val]}
        val = [c for c in train if c.id in val_ids]
        train = [c for c in train if c.id not in val_ids]
    return train, val


def batch_groups(labelled_fraction: float | None, batch_size: int, world_size: int,
                 cases: list[PreparedCase]) -> list[str | None]:
    """Which group ("labelled" / "unlabelled" / None = any) each sample of the global batch is drawn from.

    Every rank's shard (``rank::world_size``) gets the same labelled : unlabelled mix.

    Raises:
        ValueError: when the fraction leaves no labelled sample in a batch or a needed group has no case.
    """
    total = batch_size * world_size
    if labelled_fraction is None:
        return [None] * total
    if not 0 < labelled_fraction <= 1:
        raise ValueError(f"data.labelled_fraction must be in (0, 1], got {labelled_fraction}")
    n_lab = int(round(labelled_fraction * batch_size))
    if n_lab == 0:
        raise ValueError(f"data.labelled_fraction={labelled_fraction} with batch size {batch_size} leaves no "
                         "labelled sample in a batch")
    n_labelled_cases = sum(not c.ann.is_unlabelled for c in cases)
    if n_labelled_cases == 0:
        raise ValueError("data.labelled_fraction is set but no training case carries an annotation")
    if n_lab < batch_size and n_labelled_cases == len(cases):
        raise ValueError(f"data.labelled_fraction={labelled_fraction} asks for unlabelled samples but every "
                         "training case is annotated")
    return ["labelled" if j < n_lab else "unlabelled" for j in range(batch_size) for _ in range(world_size)]


class _Stop:
    """Turns SIGTERM into a flag the loop checks, so a kill leaves a consistent checkpoint."""

    def __init__(self):
        self.requested = False

    def __call__(self, signum, frame):
        self.requested = True


def _open_log(run_dir: Path) -> logging.FileHandler:
    """Log to ``run_dir/train.log`` for the duration of one ``train`` call (removed again by the caller)."""
    log.setLevel(logging.INFO)
    fh = logging.FileHandler(run_dir / "train.log")
    fh.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    log.addHandler(fh)
    return fh


def validate_cases(network: nn.Module, cases: list[PreparedCase], plan: RunPlan, cfg: Config,
                   device: torch.device) -> dict:
    """Sliding-window prediction of validation cases in the preprocessed grid; Dice per foreground class."""
    from everylabel.metrics import compute_dice

    network.eval()
    per_case = []
    with torch.inference_mode():
        for case in cases:
            img = torch.from_numpy(case.image)[None].to(device)
            logits = infer_logits(img, plan.patch_size, network, plan.slice_axis, plan.slice_context,
                                  overlap=cfg.inference.overlap,
                                  sw_batch_size=cfg.inference.sw_batch_size, mode=cfg.inference.mode)
            pred = logits.argmax(1, keepdim=True).cpu()
            ann = case.ann
            ref = torch.from_numpy(ann.labels.astype(np.int64))[None, None]
            valid = None
            if ann.valid is not None or ann.roi is not None:
                v = np.ones(case.spatial_shape, bool)
                if ann.valid is not None:
                    v &= ann.valid
                if ann.roi is not None:
                    v &= ann.roi
                valid = torch.from_numpy(v)[None, None]
            d = compute_dice(pred, ref, num_classes=plan.num_classes, valid=valid, include_background=False)
            per_case.append(np.asarray(d, dtype=np.float64).reshape(-1))
    network.train()
    arr = np.stack(per_case) if per_case else np.zeros((0, plan.num_classes - 1))
    with np.errstate(all="ignore"):
        mean = float(np.nanmean(arr)) if arr.size and not np.all(np.isnan(arr)) else float("nan")
    return {"val_dice": mean, "val_cases": len(cases)}


def train(data: str | Path, out_dir: str | Path, cfg: Config, *, resume: bool = False,
          progress: bool = True, stop_at: int | None = None) -> dict:
    """Train ``cfg.method`` on the dataset at ``data`` (manifest or nnU-Net raw folder) into ``out_dir``.

    Args:
        resume: continue the run in ``out_dir`` from its last checkpoint (exactly: same batches, same weights;
            with a wall-clock budget, ``train.minutes``, the same batches but learning rates that follow the time
            each step happens to take, so not bit for bit).
        stop_at: stop (with a checkpoint) after this step although the schedule runs to ``cfg.train.steps``;
            for time-boxed sessions, continued later with ``resume``.

    Returns:
        The final metrics dict (also written to ``out_dir/metrics.json``).
    """
    from everylabel.data.manifest import load_case, load_dataset
    from everylabel.data.validate import validate_manifest

    info = setup_distributed()
    device = pick_device(info)
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    run_dir = Path(out_dir)
    ckpt_dir = run_dir / "checkpoints"

    # --- data: load and check everything before any work starts --------------------------------------
    manifest = load_dataset(data)
    problems = validate_manifest(manifest, deep=True)
    if problems:
        raise ValueError(f"{len(problems)} problem(s) in {manifest.source}:\n  - " + "\n  - ".join(problems))
    train_specs, val_specs = split_cases(manifest, cfg)
    method = build_method(cfg.method, deep_supervision=cfg.network.deep_supervision)
    if method.uses_unlabelled:
        train_specs = train_specs + manifest.split("unlabelled")
    raw_train = [load_case(manifest, c) for c in train_specs]
    if not method.uses_unlabelled:
        # a method that cannot learn from unannotated cases would only waste batch slots on them
        keep = [i for i, r in enumerate(raw_train) if not r[1].is_unlabelled]
        train_specs, raw_train = [train_specs[i] for i in keep], [raw_train[i] for i in keep]
        if not raw_train:
            raise ValueError(f"{manifest.source}: no annotated training case for method {method.name!r}")
    kinds = set().union(*[r[1].kinds for r in raw_train])
    method.check_dataset(kinds, manifest.source)

    if resume and (ckpt_dir / "last.pt").is_file():
        state = load_checkpoint(ckpt_dir / "last.pt")
        plan = RunPlan.from_dict(state["plan"])
    else:
        if not resume and (ckpt_dir / "last.pt").is_file():
            raise ValueError(f"{run_dir} already holds a run; use --resume to continue it or choose another --out")
        state = None
        plan = plan_run(cfg, manifest, raw_train)
    clock = TrainClock(int(cfg.train.steps), cfg.train.minutes,
                       spent_s=state.get("elapsed", 0.0) if state is not None else 0.0)
    train_cases = [prepare(r, c.id, plan) for r, c in zip(raw_train, train_specs)]
    val_cases = [prepare(load_case(manifest, c), c.id, plan) for c in val_specs]
    val_cases = [c for c in val_cases if c.ann.labels is not None]
    del raw_train

    amp = autocast_dtype(cfg.train.precision, device)
    amp_name = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[amp]

    # --- run directory ---------------------------------------------------------------------------------
    log_handler = None
    if info.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        log_handler = _open_log(run_dir)
        atomic_write_text(run_dir / "config.yaml", cfg.to_yaml())
        atomic_write_json(run_dir / "plan.json", plan.to_dict())
        atomic_write_json(run_dir / "run.json", {
            "data": str(data), "seed": cfg.train.seed, "code": code_version(), "world_size": info.world_size,
            "train_cases": [c.case_id for c in train_cases], "val_cases": [c.case_id for c in val_cases],
            "kinds": sorted(k.value for k in kinds), "precision": amp_name})
        log.info("training in %s (train.precision=%s)", amp_name, cfg.train.precision)
        if amp is torch.bfloat16 and device.type == "cpu" and not cpu_has_native_bf16():
            log.warning("train.precision=bf16 on a CPU without native bf16: oneDNN emulates it, and a step can take "
                        "2-10x longer than in fp32 (train.precision=auto picks fp32 here)")

    # --- model, optimiser, schedule ----------------------------------------------------------------------
    torch.manual_seed(cfg.train.seed)
    network = build_network(cfg.network.name, **plan.network).to(device)
    channels_last = cfg.train.channels_last
    if channels_last:
        network = network.to(memory_format=torch.channels_last if plan.spatial_dims == 2 else
                             torch.channels_last_3d)
    model = network
    if info.world_size > 1:
        # find_unused_parameters: a method may leave some heads unused (nnU-Net weights the coarsest scale 0)
        model = nn.parallel.DistributedDataParallel(network, device_ids=None if device.type == "cpu" else
                                                    [device.index], find_unused_parameters=True)
    method.setup(network)
    method.to(device)
    optimizer = build_optimizer(cfg, network.parameters())
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(
        cfg.optim.schedule, clock.total_steps, cfg.optim.warmup_steps,
        progress=clock.fraction if clock.budget_s is not None else None))
    rng = np.random.default_rng(cfg.train.seed)
    sampler = PatchSampler(train_cases, plan.sample_patch, cfg.data.foreground_oversample, rng,
                           slice_axis=plan.slice_axis, slice_context=plan.slice_context)
    groups = batch_groups(cfg.data.labelled_fraction, plan.batch_size, info.world_size, train_cases)
    augment = build_augmentation(cfg.augment)
    # fp16 (CUDA without bf16) needs loss scaling; bf16 and fp32 do not
    scaler = torch.amp.GradScaler(device.type, enabled=amp is torch.float16)

    start_step, best, history = 0, -math.inf, []
    if state is not None:
        network.load_state_dict(state["model"])
        method.load_state_dict(state["method"])
        optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        scheduler.load_state_dict(state["scheduler"])
        rng.bit_generator.state = state["rng"]
        torch.set_rng_state(state["torch_rng"])
        start_step, best, history = state["step"], state["best"], state["history"]
        log.info("resumed at step %d", start_step)

    def checkpoint_state(step: int) -> dict:
        return {"model": network.state_dict(), "method": method.state_dict(),
                "inference_model": method.inference_network(network).state_dict(),
                "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
                "scheduler": scheduler.state_dict(), "rng": rng.bit_generator.state,
                "torch_rng": torch.get_rng_state(), "step": step, "best": best, "history": history,
                "elapsed": clock.now_s,
                "plan": plan.to_dict(), "config": cfg.to_dict()}

    stop = _Stop()
    old_handler = signal.signal(signal.SIGTERM, stop)
    bar = None
    if progress and info.is_main:
        from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        if clock.budget_s is None:
            bar = Progress(TextColumn("[bold]train"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                           TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn())
            task = bar.add_task("train", total=clock.total_steps, completed=start_step, info="")
        else:  # a wall-clock budget: the bar counts seconds of it
            bar = Progress(TextColumn("[bold]train"), BarColumn(),
                           TextColumn("{task.completed:.0f}/{task.total:.0f} s"), TextColumn("{task.fields[info]}"),
                           TimeElapsedColumn(), TimeRemainingColumn())
            task = bar.add_task("train", total=clock.budget_s, completed=clock.now_s, info="")
        bar.start()

    network.train()
    t0 = time.perf_counter()
    clock.start()
    step = start_step
    running: dict[str, float] = {}
    try:
        while not clock.finished(step) and (not stop_at or step < stop_at) and not stop.requested:
            # Every rank draws the same global batch and keeps its shard, so DDP sees the batch one process would.
            samples = [augment(sampler.sample(g), rng) for g in groups]
            batch = collate(samples[info.rank::info.world_size]).to(device)
            if channels_last:
                batch.image = batch.image.contiguous(memory_format=torch.channels_last if plan.spatial_dims == 2
                                                     else torch.channels_last_3d)
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                terms = method(model, batch, step=step, total_steps=clock.projected_steps(step))
            loss = terms["loss"]
            if not torch.isfinite(loss):
                raise FloatingPointError(f"loss became {loss.item()} at step {step}; lower optim.lr or check data")
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            if cfg.optim.grad_clip:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(network.parameters(), cfg.optim.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            clock.tick(info.world_size)
            scheduler.step()
            step += 1
            last = clock.finished(step)
            method.after_step(network, step)
            for k, v in terms.items():
                if k != "output" and torch.is_tensor(v) and v.numel() == 1:
                    val = v.detach().float()
                    if info.world_size > 1:
                        dist.all_reduce(val)
                        val /= info.world_size
                    running[k] = running.get(k, 0.0) + float(val)
            running["_n"] = running.get("_n", 0) + 1
            if step % cfg.train.log_every == 0 or last:
                n = running.pop("_n")
                rec = {"step": step, "lr": scheduler.get_last_lr()[0], "time": time.perf_counter() - t0}
                rec.update({k: v / n for k, v in running.items()})
                running = {}
                history.append(rec)
                if info.is_main:
                    log.info(" ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in rec.items()))
            if info.is_main and val_cases and (step % cfg.train.val_every == 0 or last):
                v = validate_cases(method.inference_network(network), val_cases, plan, cfg, device)
                history.append({"step": step, **v})
                log.info("step %d val_dice=%.4f", step, v["val_dice"])
                if v["val_dice"] > best:
                    best = v["val_dice"]
                    save_checkpoint(ckpt_dir / "best.pt", checkpoint_state(step))
            if info.is_main and (step % cfg.train.checkpoint_every == 0 or last):
                save_checkpoint(ckpt_dir / "last.pt", checkpoint_state(step))
            if bar is not None:
                bar.update(task, completed=step if clock.budget_s is None else clock.now_s,
                           info=f"loss {float(loss):.3f}")
    except KeyboardInterrupt:
        if info.is_main:
            save_checkpoint(ckpt_dir / "last.pt", checkpoint_state(step))
            log.info("interrupted at step %d; checkpoint saved, continue with --resume", step)
        if log_handler is not None:
            log.removeHandler(log_handler)
            log_handler.close()
        raise
    finally:
        if bar is not None:
            bar.stop()
        signal.signal(signal.SIGTERM, old_handler)

    metrics = {"steps": step, "completed": clock.finished(step), "train_seconds": time.perf_counter() - t0,
               "best_val_dice": None if best == -math.inf else best, "history": history}
    if info.is_main:
        save_checkpoint(ckpt_dir / "last.pt", checkpoint_state(step))
        if not val_cases or not (ckpt_dir / "best.pt").exists():
            # without validation cases the best model is the last one
            save_checkpoint(ckpt_dir / "best.pt", checkpoint_state(step))
        atomic_write_json(run_dir / "metrics.json", metrics)
    if info.world_size > 1:
        dist.barrier()
        if info.owns_group:
            # an undestroyed gloo group can abort the process at exit ("terminate called without an active exception")
            dist.destroy_process_group()
    if stop.requested:
        log.info("stopped by SIGTERM at step %d; continue with --resume", step)
    if log_handler is not None:
        log.removeHandler(log_handler)
        log_handler.close()
    return metrics
