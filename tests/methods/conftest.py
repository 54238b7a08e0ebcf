"""Fixtures of the method tests: tiny synthetic datasets (semi-supervised, mixed kinds) and hand-made batches."""

from __future__ import annotations

import pytest
import torch
import yaml

from everylabel.annotations import simulate_manifest
from everylabel.annotations.kinds import Kind
from everylabel.data.batch import Sample, collate
from everylabel.data.synthetic import make_dataset

CLASSES = {0: "background", 1: "vessel", 2: "organ"}

@pytest.fixture(scope="session")
def semi_manifest(tmp_path_factory):
    """2 masks + 3 unlabelled 32 x 32 cases."""
    root = tmp_path_factory.mktemp("semi")
    data = make_dataset(root, n_train=5, n_test=0, shape=(32, 32), seed=3)
    cases = []
    for i, img in enumerate(sorted((data / "imagesTr").iterdir())):
        cid = img.name[: -len("_0000.png")]
        c = {"id": cid, "images": [f"imagesTr/{img.name}"]}
        if i < 2:
            c["mask"] = f"labelsTr/{cid}.png"
        else:
            c["split"] = "unlabelled"
        cases.append(c)
    path = data / "semi.yaml"
    path.write_text(yaml.safe_dump({"name": "semi", "labels": CLASSES, "cases": cases}))
    return path


MIXED_KINDS = ["mask", "mask", "boxes", "tags", "unlabelled", "unlabelled"]


@pytest.fixture(scope="session")
def mixed_kinds_manifest(tmp_path_factory):
    """Masks, boxes, tags and unlabelled 32 x 32 cases in one dataset (simulated from full masks)."""
    root = tmp_path_factory.mktemp("mixed")
    data = make_dataset(root, n_train=len(MIXED_KINDS), n_test=0, shape=(32, 32), seed=5)
    ids = [p.name[: -len("_0000.png")] for p in sorted((data / "imagesTr").iterdir())]
    cases = [{"id": cid, "images": [f"imagesTr/{cid}_0000.png"], "mask": f"labelsTr/{cid}.png"} for cid in ids]
    full = data / "full.yaml"
    full.write_text(yaml.safe_dump({"name": "synth", "labels": CLASSES, "cases": cases}))
    return simulate_manifest(full, root / "simulated", {"cases": dict(zip(ids, MIXED_KINDS))}, seed=0)


def _sample(image: torch.Tensor, *, labels: torch.Tensor | None = None, valid: torch.Tensor | None = None,
           boxes: list[list[float]] | None = None, box_labels: list[int] | None = None,
           tags: list[int] | None = None, num_classes: int = 3, case_id: str = "c") -> Sample:
    """A Sample from a (C, *S) image and optional (*S) labels, boxes and tags; kinds follow from what is given."""
    shape = image.shape[1:]
    nd = len(shape)
    kinds = set()
    if labels is not None:
        kinds.add(Kind.MASK)
        valid = torch.ones(shape, dtype=torch.bool) if valid is None else valid
    else:
        labels, valid = torch.zeros(shape, dtype=torch.long), torch.zeros(shape, dtype=torch.bool)
    if boxes:
        kinds.add(Kind.BOXES)
    if tags is not None:
        kinds.add(Kind.TAGS)
    return Sample(image=image, labels=labels[None].long(), valid=valid[None], roi=torch.ones((1, *shape), dtype=bool),
                  points=torch.zeros((0, nd)), point_labels=torch.zeros(0, dtype=torch.long),
                  boxes=torch.tensor(boxes or [], dtype=torch.float32).reshape(-1, 2 * nd),
                  box_labels=torch.tensor(box_labels or [], dtype=torch.long),
                  tags=torch.tensor(tags if tags is not None else [-1] * num_classes),
                  classes=torch.full((num_classes,), Kind.MASK in kinds), kinds=frozenset(kinds), case_id=case_id)


@pytest.fixture
def make_sample():
    """The :func:`_sample` factory."""
    return _sample


@pytest.fixture
def make_batch():
    """``make_batch(*samples)``: collate Samples made with ``make_sample``."""
    return lambda *samples: collate(list(samples))
