"""Prediction with a trained run: preprocess as in training, sliding window, map back, write in the input's format.

Outputs are named by case id as nnU-Net names predictions (``drive_21_0000.png`` -> ``drive_21.png``,
``ct_007_0000.nii.gz`` -> ``ct_007.nii.gz``) and keep the input's shape and geometry (a NIfTI prediction has the
input's affine, so it overlays in ITK-SNAP or 3D Slicer).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from everylabel.annotations.kinds import Annotations
from everylabel.data.preprocess import preprocess_case, restore_probabilities
from everylabel.engine.checkpoint import load_checkpoint
from everylabel.engine.inference import infer_logits
from everylabel.engine.planning import RunPlan
from everylabel.experiments.config import config_from_dict
from everylabel.networks import build_network


@dataclass
class InputCase:
    """An image to predict: its id, channel files, (for HDF5) dataset key and the manifest's spacing override."""

    case_id: str
    images: list[str]
    key: str | None = None
    spacing: tuple[float, ...] | None = None


def find_inputs(path: str | Path, split: str | None = None) -> list[InputCase]:
    """Cases to predict from a folder of images (nnU-Net channel files grouped by case id) or a manifest.

    Args:
        split: with a manifest, only the cases of this split (e.g. "test").
    """
    from everylabel.data.io import IMAGE_SUFFIXES, case_id_from_filename

    path = Path(path)
    if path.is_file() or (path.is_dir() and (path / "dataset.json").is_file()):
        from everylabel.data.manifest import load_dataset

        manifest = load_dataset(path)
        cases = [InputCase(c.id, list(c.images), getattr(c, "image_key", None), manifest.spacing_for(c))
                 for c in manifest.cases if split is None or c.split == split]
        if not cases:
            raise ValueError(f"{path} has no cases" + (f" in split {split!r}" if split else ""))
        return cases
    if not path.is_dir():
        raise ValueError(f"--input {path} is neither a folder of images nor a manifest file")
    groups: dict[str, list[str]] = defaultdict(list)
    for f in sorted(path.iterdir()):
        if f.is_file() and f.name.lower().endswith(tuple(IMAGE_SUFFIXES)) and not f.name.startswith("."):
            groups[case_id_from_filename(f.name)].append(str(f))
    if not groups:
        raise ValueError(f"--input {path} holds no images (expected one of {', '.join(IMAGE_SUFFIXES)})")
    return [InputCase(cid, files) for cid, files in sorted(groups.items())]


LOSSY_TO_LOSSLESS = {".jpg": ".png", ".jpeg": ".png"}


def output_name(case: InputCase) -> str:
    """``<case_id><suffix of the first channel file>``; lossy JPEG inputs give PNG label maps."""
    from everylabel.data.io import image_suffix, split_key

    first, _ = split_key(case.images[0])
    suffix = image_suffix(first)
    return case.case_id + LOSSY_TO_LOSSLESS.get(suffix.lower(), suffix)


class Predictor:
    """A trained run loaded for inference.

    Args:
        run_dir: a directory written by ``everylabel train``.
        checkpoint: "best" or "last".
        device: torch device (default CPU, or CUDA when available).
    """

    def __init__(self, run_dir: str | Path, checkpoint: str = "best", device: str | torch.device | None = None):
        run_dir = Path(run_dir)
        path = run_dir / "checkpoints" / f"{checkpoint}.pt"
        if not path.is_file():
            raise ValueError(f"{run_dir} has no {checkpoint} checkpoint ({path}); is it a training run directory?")
        state = load_checkpoint(path)
        self.plan = RunPlan.from_dict(state["plan"])
        self.cfg = config_from_dict(state["config"])
        self.device = torch.device(device) if device else torch.device("cuda" if torch.cuda.is_available() else
                                                                         "cpu")
        self.network = build_network(self.cfg.network.name, **self.plan.network)
        self.network.load_state_dict(state.get("inference_model", state["model"]))
        self.network.to(self.device).eval()
        self.step = state["step"]

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self.network, "predict_logits"):
            return self.network.predict_logits(x)
        out = self.network(x)
        return out[0] if isinstance(out, (list, tuple)) else out

    def predict_array(self, image: np.ndarray, spacing: tuple[float, ...], *, tta: bool | None = None
                      ) -> torch.Tensor:
        """Probabilities (N, *S) in the original grid of a raw (C, *S) image.

        Raises:
            ValueError: when the channel count or dimensionality differs from training.
        """
        p = self.plan
        if image.ndim - 1 != p.image_dims or image.shape[0] != p.in_channels:
            raise ValueError(f"image of shape {image.shape} does not fit the model ({p.in_channels} channel(s), "
                             f"{p.image_dims}D images)")
        img, _, geom = preprocess_case(image, Annotations(), tuple(spacing), p.preprocess)
        x = torch.from_numpy(img)[None].to(self.device)
        inf = self.cfg.inference
        use_bf16 = inf.precision == "bf16"
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=use_bf16):
            logits = infer_logits(x, p.patch_size, self._forward, p.slice_axis, p.slice_context, overlap=inf.overlap,
                                  sw_batch_size=inf.sw_batch_size, mode=inf.mode,
                                  tta_flips=inf.tta if tta is None else tta)
        probs = torch.softmax(logits[0].float(), 0).cpu()
        return restore_probabilities(probs, geom)

    def predict_case(self, case: InputCase, out_dir: str | Path, *, save_probabilities: bool = False,
                     tta: bool | None = None) -> Path:
        """Predict one case and write its label map (and probabilities) into ``out_dir``."""
        from everylabel.data.io import read_image, write_image, write_label
        from everylabel.data.manifest import with_spacing

        image, meta = read_image(case.images if len(case.images) > 1 else case.images[0], key=case.key)
        # the network sees the spacing the manifest declares (as in training); the file keeps its own geometry
        probs = self.predict_array(image, with_spacing(meta, case.spacing, case.case_id).spacing, tta=tta)
        labels = probs.argmax(0).numpy().astype(np.uint8 if self.plan.num_classes < 256 else np.int32)
        out_dir = Path(out_dir)
        out = write_label(out_dir / output_name(case), labels, meta)
        if save_probabilities:
            suffix = ".nii.gz" if meta.format == "nifti" or self.plan.image_dims == 3 else ".tif"
            write_image(out_dir / f"{case.case_id}_probabilities{suffix}", probs.numpy().astype(np.float32), meta)
        return out


def predict(run_dir: str | Path, inputs: str | Path, out_dir: str | Path, *, checkpoint: str = "best",
            save_probabilities: bool = False, tta: bool | None = None, progress: bool = True,
            split: str | None = None) -> list[Path]:
    """Predict every case found at ``inputs`` (folder or manifest, optionally one split) with the run at ``run_dir``."""
    cases = find_inputs(inputs, split)
    predictor = Predictor(run_dir, checkpoint)
    outs = []
    Path(out_dir).mkdir(parents=True, exist_ok=True)
    if progress:
        from rich.progress import track

        it = track(cases, description="predict")
    else:
        it = cases
    for case in it:
        outs.append(predictor.predict_case(case, out_dir, save_probabilities=save_probabilities, tta=tta))
    return outs
