"""Mean-taught deep supervision (Reiß et al. 2021, Eq. 10): restricted teacher targets, open entries, EMA teacher."""

from __future__ import annotations

import pytest
import torch

from everylabel.methods import MeanTaughtDeepSupervision, MultilabelDeepSupervision
from everylabel.methods.mean_taught import allowed_classes, mean_taught_targets
from everylabel.methods.mean_teacher import ema_decay_at
from everylabel.networks import UNet


def test_targets_zero_outside_boxes_and_for_absent_tags():
    torch.manual_seed(0)
    logits = [torch.randn(2, 3, 8, 8), torch.randn(2, 3, 4, 4)]
    boxes = [torch.tensor([[2.0, 2.0, 5.0, 6.0]]), torch.zeros(0, 4)]
    box_labels = [torch.tensor([1]), torch.zeros(0, dtype=torch.long)]
    tags = torch.tensor([[-1, -1, -1], [1, 0, -1]])
    targets = mean_taught_targets(logits, (8, 8), boxes=boxes, box_labels=box_labels, tags=tags)
    inside = torch.zeros(8, 8, dtype=torch.bool)
    inside[2:5, 2:6] = True
    full, coarse = targets
    assert (full[0, 1][~inside] == 0).all()
    assert torch.allclose(full[0, 1][inside], torch.sigmoid(logits[0][0, 1])[inside])
    # at 4 x 4 a cell is allowed when it overlaps the box (rows 1-2, columns 1-2)
    cells = torch.zeros(4, 4, dtype=torch.bool)
    cells[1:3, 1:3] = True
    assert (coarse[0, 1][~cells] == 0).all() and (coarse[0, 1][cells] > 0).all()
    # unboxed classes, and every class of the sample without boxes, follow the teacher except absent tags
    assert torch.allclose(full[0, [0, 2]], torch.sigmoid(logits[0][0, [0, 2]]))
    assert (full[1, 1] == 0).all() and (coarse[1, 1] == 0).all()
    assert torch.allclose(full[1, [0, 2]], torch.sigmoid(logits[0][1, [0, 2]]))
    assert torch.equal(mean_taught_targets(logits, (8, 8))[0], torch.sigmoid(logits[0]))
    with pytest.raises(ValueError, match="needs boxes or tags"):
        allowed_classes([(8, 8)], (8, 8), 3)


def test_teacher_fills_only_what_annotations_leave_open(make_sample, make_batch):
    torch.manual_seed(0)
    net = UNet(2, 1, 3, features=(4, 8))
    method = MeanTaughtDeepSupervision(MultilabelDeepSupervision(), noise_std=0.0, rampup_fraction=0.0)
    method.setup(net)
    labels = torch.randint(0, 3, (8, 8))
    full = make_batch(make_sample(torch.randn(1, 8, 8), labels=labels))
    out = method(net, full)
    assert out["teacher"] == 0 and out["multilabel"] > 0  # a full mask leaves nothing to the teacher
    unlabelled = make_batch(make_sample(torch.randn(1, 8, 8)))
    out = method(net, unlabelled)
    assert out["multilabel"] == 0 and out["teacher"] > 0
    out["loss"].backward()
    # soft-target BCE pulls sigmoid(student) towards sigmoid(teacher): no gradient while they agree ...
    assert all(p.grad is None or p.grad.abs().max() < 1e-6 for p in net.parameters())
    with torch.no_grad():
        net.heads[0].conv.bias.add_(torch.tensor([0.5, -0.5, 0.0]))
    net.zero_grad()
    method(net, unlabelled)["loss"].backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.parameters())  # ... and one once they differ


def test_teacher_is_updated_in_place_on_the_network_device():
    torch.manual_seed(0)
    net = UNet(2, 1, 3, features=(4, 8))
    method = MeanTaughtDeepSupervision(MultilabelDeepSupervision(), ema_decay=0.9)
    method.setup(net)
    before = {k: (v.clone(), v.data_ptr()) for k, v in method.teacher.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(1.0)
    method.after_step(net, 50)
    decay = ema_decay_at(50, 0.9)
    assert decay == 0.9 and ema_decay_at(0, 0.9) == 0.0 and ema_decay_at(1, 0.9) == 0.5  # Tarvainen's warm-up
    student = net.state_dict()
    for name, p in method.teacher.named_parameters():
        old, ptr = before[name]
        assert p.data_ptr() == ptr and p.device == student[name].device and not p.requires_grad
        assert torch.allclose(p, decay * old + (1 - decay) * student[name])
    assert method.inference_network(net) is method.teacher
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\)"):
        MeanTaughtDeepSupervision(MultilabelDeepSupervision(), ema_decay=1.0)
    with pytest.raises(ValueError, match="infer_with"):
        MeanTaughtDeepSupervision(MultilabelDeepSupervision(), infer_with="both")
