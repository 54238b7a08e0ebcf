"""Peer baseline for the LA_heart_h5 benchmarks: a plain MONAI + PyTorch script, no everylabel code.

A MONAI ``UNet`` trained on random 128 x 128 crops of random axial slices of the 16 training volumes with
``DiceCELoss``, Adam, fp32, then applied slice by slice (MONAI ``sliding_window_inference``) to the 4 test volumes
and scored with 3D Dice. This is the "for scale" figure the LA issues quote (a MONAI UNet on 2D slices, 2,000 steps,
batch 8, 128^2). Everylabel's own LA sweeps are compared with it.

    python benchmarks/la_monai_peer.py [--steps 2000] [--seeds 0 1 2] [--lr 1e-3] [--fg-fraction 0]

Ends with ``RESULT monai_peer_dice=<mean 3D test Dice over seeds>``.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import h5py
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "LA_heart_h5"


def load(case: str) -> tuple[np.ndarray, np.ndarray]:
    with h5py.File(ROOT / "2018LA_Seg_Training Set" / case / "mri_norm2.h5", "r") as f:
        return f["image"][()].astype(np.float32), f["label"][()].astype(np.int64)


def sample(vols, rng, patch, fg_fraction):
    img, lab = vols[rng.integers(len(vols))]
    if rng.random() < fg_fraction:
        zs = np.flatnonzero(lab.any(axis=(0, 1)))
        z = int(rng.choice(zs))
    else:
        z = int(rng.integers(img.shape[2]))
    im, lb = img[:, :, z], lab[:, :, z]
    pads = [(max(0, patch - s) // 2, max(0, patch - s) - max(0, patch - s) // 2) for s in im.shape]
    im, lb = np.pad(im, pads), np.pad(lb, pads)
    x0 = int(rng.integers(im.shape[0] - patch + 1))
    y0 = int(rng.integers(im.shape[1] - patch + 1))
    return im[x0:x0 + patch, y0:y0 + patch], lb[x0:x0 + patch, y0:y0 + patch]


def run(seed: int, steps: int, lr: float, fg_fraction: float, train, test) -> float:
    from monai.inferers import sliding_window_inference
    from monai.losses import DiceCELoss
    from monai.networks.nets import UNet

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    net = UNet(2, 1, 2, channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    t0 = time.perf_counter()
    net.train()
    for _ in range(steps):
        pairs = [sample(train, rng, 128, fg_fraction) for _ in range(8)]
        x = torch.from_numpy(np.stack([p[0] for p in pairs])[:, None])
        y = torch.from_numpy(np.stack([p[1] for p in pairs])[:, None])
        opt.zero_grad()
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
    train_s = time.perf_counter() - t0
    net.eval()
    dices = []
    with torch.no_grad():
        for img, lab in test:
            x = torch.from_numpy(np.moveaxis(img, 2, 0)[:, None].copy())
            logits = sliding_window_inference(x, (128, 128), 8, net, overlap=0.5, mode="gaussian")
            pred = np.moveaxis(logits.argmax(1).numpy(), 0, 2)
            inter = np.logical_and(pred == 1, lab == 1).sum()
            dices.append(2 * inter / ((pred == 1).sum() + (lab == 1).sum()))
    print(f"seed {seed}: train {train_s:.0f} s, 3D test Dice " + " ".join(f"{d:.4f}" for d in dices)
          + f" mean {np.mean(dices):.4f}", flush=True)
    return float(np.mean(dices))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--fg-fraction", type=float, default=0.0,
                    help="probability of drawing a slice that contains foreground (0 = uniform slices)")
    args = ap.parse_args()
    train = [load(c) for c in (ROOT / "train.list").read_text().split()]
    test = [load(c) for c in (ROOT / "test.list").read_text().split()]
    print(f"torch {torch.__version__}, threads {torch.get_num_threads()}, steps {args.steps}, lr {args.lr}, "
          f"fg_fraction {args.fg_fraction}")
    scores = [run(s, args.steps, args.lr, args.fg_fraction, train, test) for s in args.seeds]
    sd = statistics.stdev(scores) if len(scores) > 1 else 0.0
    print(f"MONAI UNet peer, {len(scores)} seed(s): 3D test Dice {statistics.mean(scores):.4f} +- {sd:.4f}")
    print(f"RESULT monai_peer_dice={statistics.mean(scores):.4f}")


if __name__ == "__main__":
    main()
