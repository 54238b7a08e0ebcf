"""Batch mixes samples of any kinds; patch sampling pads, crops and oversamples foreground."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from everylabel.annotations.kinds import Annotations, Kind
from everylabel.data.batch import collate
from everylabel.data.sampling import PatchSampler, PreparedCase, case_to_sample


def _case(cid: str, ann: Annotations, shape=(20, 24)) -> PreparedCase:
    img = np.random.default_rng(0).standard_normal((1,) + shape).astype(np.float32)
    return PreparedCase(image=img, ann=ann, case_id=cid, num_classes=3)


def _mask(shape=(20, 24)):
    lab = np.zeros(shape, np.int64)
    lab[5:9, 6:12] = 1
    lab[12:15, 3:5] = 2
    return lab


def test_batch_mixes_kinds_and_unlabelled():
    full = _case("full", Annotations(labels=_mask(), dense_kind=Kind.MASK))
    boxes = _case("boxes", Annotations(boxes=np.array([[5, 6, 9, 12]]), box_labels=np.array([1])))
    tags = _case("tags", Annotations(tags=np.array([1, 1, 0])))
    partial = _case("partial", Annotations(labels=np.where(_mask() == 2, 0, _mask()), dense_kind=Kind.PARTIAL,
                                           classes=(0, 1)))
    none = _case("none", Annotations())
    batch = collate([case_to_sample(c) for c in (full, boxes, tags, partial, none)])
    assert batch.image.shape == (5, 1, 20, 24) and batch.labels.shape == (5, 1, 20, 24)
    assert batch.has[Kind.MASK].tolist() == [True, False, False, False, False]
    assert batch.has[Kind.BOXES].tolist() == [False, True, False, False, False]
    assert batch.has[Kind.TAGS].tolist() == [False, False, True, False, False]
    assert batch.has[Kind.PARTIAL].tolist() == [False, False, False, True, False]
    assert batch.valid[0].all() and not batch.valid[1:3].any() and not batch.valid[4].any()
    assert batch.tags[2].tolist() == [1, 1, 0] and batch.tags[0].tolist() == [-1, -1, -1]
    assert batch.classes[3].tolist() == [True, True, False] and batch.classes[0].all()
    assert len(batch.boxes[1]) == 1 and len(batch.boxes[0]) == 0
    sub = batch.select(batch.has[Kind.BOXES] | batch.has[Kind.TAGS])
    assert sub.case_ids == ["boxes", "tags"] and sub.image.shape[0] == 2


def test_collate_rejects_different_shapes():
    a = case_to_sample(_case("a", Annotations(), (8, 8)))
    b = case_to_sample(_case("b", Annotations(), (8, 9)))
    with pytest.raises(ValueError, match="cannot batch samples of different shapes"):
        collate([a, b])


def test_crop_outside_pads_and_marks_invalid():
    case = _case("c", Annotations(labels=_mask(), dense_kind=Kind.MASK, roi=np.ones((20, 24), bool)))
    s = case_to_sample(case, np.array([-4, 16]), (16, 16))
    assert s.image.shape == (1, 16, 16)
    assert not s.valid[0, :4].any() and not s.roi[0, :, 8:].any()
    assert torch.equal(s.labels[0, 4:, :8], torch.from_numpy(_mask()[:12, 16:24]))


def test_boxes_and_points_follow_the_crop():
    ann = Annotations(boxes=np.array([[5.0, 6.0, 9.0, 12.0]]), box_labels=np.array([1]),
                      points=np.array([[6.0, 8.0], [19.0, 0.0]]), point_labels=np.array([1, 0]))
    s = case_to_sample(_case("c", ann), np.array([4, 4]), (8, 8))
    assert s.boxes.tolist() == [[1.0, 2.0, 5.0, 8.0]]
    assert s.points.tolist() == [[2.0, 4.0]] and s.point_labels.tolist() == [1]


def test_sampler_oversamples_foreground():
    lab = np.zeros((64, 64), np.int64)
    lab[2:4, 2:4] = 1
    case = _case("c", Annotations(labels=lab, dense_kind=Kind.MASK), (64, 64))
    rng = np.random.default_rng(0)
    always = PatchSampler([case], (16, 16), 1.0, rng)
    assert all(always.sample().labels.any() for _ in range(20))
    never = PatchSampler([case], (16, 16), 0.0, np.random.default_rng(0))
    hits = sum(bool(never.sample().labels.any()) for _ in range(200))
    assert hits < 60
    with pytest.raises(ValueError, match="foreground_oversample must be in"):
        PatchSampler([case], (16, 16), 1.5, rng)
