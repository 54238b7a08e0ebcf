"""A small, seeded synthetic 2D dataset for the demo and tests: blob organs and curvilinear vessels.

Each image holds one or two smooth blob-shaped "organs" (class 2) and a few thin branching "vessels" (class 1)
over a textured background, with a multiplicative low-frequency intensity inhomogeneity (bias field), Gaussian
noise and partial-volume blur, so a network has to learn shape and context rather than a threshold. The dataset is
written in nnU-Net v2 raw format (dataset.json, imagesTr/<id>_0000.png, labelsTr, imagesTs, labelsTs).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image
from scipy import ndimage

CLASS_NAMES = {0: "background", 1: "vessel", 2: "organ"}


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, int], sigma: float) -> np.ndarray:
    n = ndimage.gaussian_filter(rng.standard_normal(shape), sigma)
    return (n - n.mean()) / (n.std() + 1e-8)


def _blob(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """A smooth star-convex blob: an ellipse whose radius is modulated by low-order harmonics."""
    h, w = shape
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    r0 = rng.uniform(0.12, 0.22) * min(h, w)
    yy, xx = np.mgrid[:h, :w]
    ang = np.arctan2(yy - cy, xx - cx)
    ecc = rng.uniform(0.7, 1.3)
    r = r0 * (1 + sum(rng.uniform(-0.15, 0.15) * np.cos(k * ang + rng.uniform(0, 2 * np.pi)) for k in (2, 3, 4)))
    dist = np.sqrt(((yy - cy) * ecc) ** 2 + ((xx - cx) / ecc) ** 2)
    return dist < r


def _vessels(rng: np.random.Generator, shape: tuple[int, int], n: int) -> np.ndarray:
    """Thin branching curves: smooth random walks with occasional branches, 1-3 px wide."""
    h, w = shape
    canvas = np.zeros(shape, bool)
    stack = []
    for _ in range(n):
        side = rng.integers(4)
        y, x = [(0, rng.uniform(0, w)), (h - 1, rng.uniform(0, w)), (rng.uniform(0, h), 0),
                (rng.uniform(0, h), w - 1)][side]
        theta = np.arctan2(h / 2 - y, w / 2 - x) + rng.uniform(-0.6, 0.6)
        stack.append((y, x, theta, rng.uniform(1.0, 1.8), int(rng.integers(60, 160))))
    while stack:
        y, x, theta, width, length = stack.pop()
        for _ in range(length):
            theta += rng.normal(0, 0.12)
            y, x = y + np.sin(theta), x + np.cos(theta)
            if not (0 <= y < h and 0 <= x < w):
                break
            r = int(np.ceil(width))
            y0, y1, x0, x1 = max(0, int(y) - r), min(h, int(y) + r + 1), max(0, int(x) - r), min(w, int(x) + r + 1)
            yy, xx = np.mgrid[y0:y1, x0:x1]
            canvas[y0:y1, x0:x1] |= (yy - y) ** 2 + (xx - x) ** 2 <= width**2
            if rng.random() < 0.02 and width > 1.1:
                stack.append((y, x, theta + rng.choice([-1, 1]) * rng.uniform(0.4, 0.9), width * 0.75,
                              int(length * 0.5)))
    return canvas


def make_case(rng: np.random.Generator, shape: tuple[int, int] = (128, 128)) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic (image uint8 (H, W), labels uint8 (H, W)) pair."""
    labels = np.zeros(shape, np.uint8)
    for _ in range(int(rng.integers(1, 3))):
        labels[_blob(rng, shape)] = 2
    vessels = _vessels(rng, shape, int(rng.integers(2, 5)))
    labels[vessels] = 1
    img = 0.35 + 0.06 * _smooth_noise(rng, shape, 3.0)                # textured background
    organ_level = rng.uniform(0.55, 0.7)
    img = np.where(labels == 2, organ_level + 0.05 * _smooth_noise(rng, shape, 2.0), img)
    img = np.where(vessels, rng.uniform(0.05, 0.18), img)           # dark vessels (as in fundus green channel)
    img = ndimage.gaussian_filter(img, 0.7)                         # partial-volume blur
    bias = np.exp(0.25 * _smooth_noise(rng, shape, min(shape) / 4))  # intensity inhomogeneity
    img = img * bias + rng.normal(0, 0.05, shape)
    img = np.clip(img * 255, 0, 255).astype(np.uint8)
    return img, labels


def make_dataset(root: str | Path, n_train: int = 24, n_test: int = 8, shape: tuple[int, int] = (128, 128),
                 seed: int = 0, name: str = "Dataset001_Synthetic") -> Path:
    """Write a synthetic nnU-Net v2 raw dataset to ``root/name`` and return its folder.

    Test labels go to ``labelsTs`` so predictions can be evaluated.
    """
    rng = np.random.default_rng(seed)
    folder = Path(root) / name
    for sub in ("imagesTr", "labelsTr", "imagesTs", "labelsTs"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    for i in range(n_train + n_test):
        img, lab = make_case(rng, shape)
        split = ("imagesTr", "labelsTr") if i < n_train else ("imagesTs", "labelsTs")
        cid = f"synth_{i:03d}"
        Image.fromarray(img).save(folder / split[0] / f"{cid}_0000.png")
        Image.fromarray(lab).save(folder / split[1] / f"{cid}.png")
    meta = {
        "name": name,
        "description": "everylabel synthetic demo data: blob organs and curvilinear vessels (seeded)",
        "channel_names": {"0": "synthetic"},
        "labels": {v: k for k, v in CLASS_NAMES.items()},
        "numTraining": n_train,
        "file_ending": ".png",
        "seed": seed,
    }
    (folder / "dataset.json").write_text(json.dumps(meta, indent=2))
    return folder
