"""Multi-label deep supervision (Reiß et al. 2021, Eq. 9): targets max-pooled per scale, boxes, tags, known entries."""

from __future__ import annotations

import math

import pytest
import torch

from everylabel.methods import MultilabelDeepSupervision


@pytest.fixture
def batch(make_sample, make_batch):
    labels = torch.zeros(4, 4, dtype=torch.long)
    labels[0, 0], labels[3, 2] = 1, 2
    valid = torch.ones(4, 4, dtype=torch.bool)
    valid[0, 1] = False
    image = torch.zeros(1, 4, 4)
    return make_batch(make_sample(image, labels=labels, valid=valid),
                      make_sample(image, boxes=[[0, 0, 2, 2]], box_labels=[2]),
                      make_sample(image, tags=[1, 0, 1]))


def test_targets_are_max_pooled_per_scale_by_hand(batch):
    method = MultilabelDeepSupervision(box_min_scale=1)
    outs, sizes = method.scales([torch.zeros(3, 3, 4, 4), torch.zeros(3, 3, 2, 2)], batch)
    assert sizes == [(4, 4), (2, 2), (1, 1)] and outs[2] is outs[1]  # tags add a global scale on the coarsest output
    targets, known = method.targets(sizes, batch, 3)
    t, k = targets[1][0], known[1][0]  # the mask sample at 2 x 2
    assert torch.equal(t[0], torch.ones(2, 2))
    assert torch.equal(t[1], torch.tensor([[1.0, 0], [0, 0]]))
    assert torch.equal(t[2], torch.tensor([[0.0, 0], [0, 1]]))
    # cell (0, 0) holds the unannotated pixel (0, 1): class 2 is not known to be absent there, classes 0 and 1 are
    # known present
    assert k[0].all() and k[1].all() and torch.equal(k[2], torch.tensor([[False, True], [True, True]]))
    # full resolution: the one-hot mask, unknown at the unannotated pixel
    onehot = torch.nn.functional.one_hot(batch.labels[0, 0], 3).permute(2, 0, 1).float()
    assert torch.equal(targets[0][0][known[0][0]], onehot[known[0][0]])
    assert not known[0][0, :, 0, 1].any() and known[0][0].sum() == 3 * 15

    # box sample: class 2 negative outside its box at every scale; its inside is positive only from scale 1 on
    tb, kb = targets[0][1], known[0][1]
    assert not kb[2, :2, :2].any() and kb[2].sum() == 12 and tb[2].sum() == 0
    assert torch.equal(targets[1][1][2], torch.tensor([[1.0, 0], [0, 0]])) and known[1][1][2].all()
    assert not kb[:2].any() and not known[1][1][:2].any()  # unboxed classes learn nothing from the boxes

    # tag sample: absent class 1 is a negative everywhere; present classes are positive in the global cell only
    for s in range(3):
        assert known[s][2, 1].all() and targets[s][2, 1].sum() == 0
    assert not known[0][2, [0, 2]].any() and not known[1][2, [0, 2]].any()
    assert torch.equal(targets[2][2, :, 0, 0], torch.tensor([1.0, 0, 1])) and known[2][2].all()


def test_loss_is_mean_bce_and_ignores_unknown_entries(batch):
    method = MultilabelDeepSupervision()
    logits = [torch.zeros(3, 3, 4, 4, requires_grad=True), torch.zeros(3, 3, 2, 2, requires_grad=True)]
    out = method(lambda x: logits, batch)
    assert out["loss"].item() == pytest.approx(math.log(2.0))  # BCE of sigmoid(0) against 0 or 1 is log 2
    out["loss"].backward()
    g = logits[0].grad
    assert (g[0, :, 0, 1] == 0).all() and (g[1, 2, :2, :2] == 0).all() and (g[1, :2] == 0).all()
    assert (g[0, :, 2, 2] != 0).all() and (g[1, 2, 3, 3] != 0)


def test_deep_supervision_off_uses_full_resolution_only(batch):
    method = MultilabelDeepSupervision(deep_supervision=False, tags=False)
    outs, sizes = method.scales([torch.zeros(3, 3, 4, 4), torch.zeros(3, 3, 2, 2)], batch)
    assert sizes == [(4, 4)] and len(outs) == 1


def test_bad_arguments():
    with pytest.raises(ValueError, match="box_min_scale must be >= 0"):
        MultilabelDeepSupervision(box_min_scale=-1)
