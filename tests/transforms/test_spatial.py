"""Spatial transforms move image, dense labels, boxes and points with one geometry."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from everylabel.annotations.kinds import Kind
from everylabel.data.batch import Sample
from everylabel.transforms import RandomGamma, RandomScaleShift, flip, rot90, zoom


def _sample(shape=(12, 12)):
    nd = len(shape)
    img = torch.zeros((1,) + shape)
    lab = torch.zeros((1,) + shape, dtype=torch.int64)
    sl = (slice(None),) + tuple(slice(2, 5) if i == 0 else slice(3, 9) for i in range(nd))
    img[sl] = 1.0
    lab[sl] = 1
    box = torch.tensor([[2.0] + [3.0] * (nd - 1) + [5.0] + [9.0] * (nd - 1)])
    pts = torch.tensor([[3.0] + [4.0] * (nd - 1)])
    return Sample(image=img, labels=lab, valid=torch.ones_like(lab, dtype=torch.bool),
                  roi=torch.ones_like(lab, dtype=torch.bool), points=pts, point_labels=torch.tensor([1]),
                  boxes=box, box_labels=torch.tensor([1]), tags=torch.tensor([1, 1]),
                  classes=torch.tensor([True, True]), kinds=frozenset({Kind.MASK, Kind.BOXES, Kind.POINTS}))


def _bbox(lab: torch.Tensor) -> list[float]:
    idx = torch.nonzero(lab[0])
    return idx.min(0).values.float().tolist() + (idx.max(0).values + 1).float().tolist()


def _consistent(s: Sample):
    assert _bbox(s.labels) == s.boxes[0].tolist()
    p = s.points[0].round().long()
    assert s.labels[(0,) + tuple(p.tolist())] == 1
    assert torch.equal(s.labels.bool(), s.image.bool())


@pytest.mark.parametrize("shape", [(12, 12), (12, 12, 12)])
def test_flip_moves_everything(shape):
    s = _sample(shape)
    for axes in [(0,), (1,), (0, 1)]:
        _consistent(flip(s, axes))


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("shape", [(12, 12), (12, 12, 12)])
def test_rot90_moves_everything(k, shape):
    s = _sample(shape)
    _consistent(rot90(s, k, (0, 1)))
    if len(shape) == 3:
        _consistent(rot90(s, k, (1, 2)))


def test_rot90_unequal_axes_raises():
    s = _sample((12, 12))
    s.image = torch.zeros(1, 12, 10)
    with pytest.raises(ValueError, match="equal sizes"):
        rot90(s, 1, (0, 1))


def test_zoom_keeps_labels_nearest_and_boxes_close():
    s = _sample((16, 16))
    z = zoom(s, 1.25)
    assert set(torch.unique(z.labels).tolist()) <= {0, 1}
    assert z.labels.dtype == torch.int64 and z.valid.dtype == torch.bool
    assert np.allclose(_bbox(z.labels), z.boxes[0].tolist(), atol=1.01)
    out = zoom(s, 0.5)
    assert not out.valid[0, 0, 0]  # came from outside the patch: not annotated


def test_intensity_transforms_leave_annotations():
    s = _sample((12, 12))
    s.image = torch.rand(s.image.shape, generator=torch.Generator().manual_seed(0))
    rng = np.random.default_rng(0)
    for t in (RandomScaleShift(prob=1.0), RandomGamma(prob=1.0)):
        out = t(s, rng)
        assert torch.equal(out.labels, s.labels) and torch.equal(out.boxes, s.boxes)
        assert not torch.equal(out.image, s.image)
