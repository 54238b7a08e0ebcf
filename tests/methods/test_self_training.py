"""Self-training (FixMatch-style): the confidence threshold (value and gradient), restrictions, strong augmentation."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from everylabel.methods import SelfTraining, StrongAugment, Supervised
from everylabel.methods.self_training import pseudo_label_loss
from everylabel.methods.strong_augment import cutout, gamma, gaussian_blur, scale_shift
from everylabel.networks import UNet


def _teacher():
    """Three pixels with confidences sigmoid(3) = 0.953 (class 0), sigmoid(2) = 0.881 (class 1), 0.525 (class 0)."""
    return torch.tensor([[[[3.0, 0.0, 0.1]], [[0.0, 2.0, 0.0]]]])  # (1, 2, 1, 3)


def test_pseudo_labels_respect_tau_in_value_and_gradient():
    teacher = _teacher()
    tau = float(torch.softmax(teacher, 1)[0, 1, 0, 1])  # exactly the confidence of pixel 1: not above tau
    student = torch.randn(1, 2, 1, 3, requires_grad=True)
    loss, confident = pseudo_label_loss(student, teacher, threshold=tau)
    assert confident.flatten().tolist() == [True, False, False]
    expected = F.cross_entropy(student[..., :1], torch.zeros(1, 1, 1, dtype=torch.long)) / 3  # mean over all pixels
    assert torch.allclose(loss, expected)
    loss.backward()
    g = student.grad
    assert (g[..., 1:] == 0).all() and (g[..., 0] != 0).all()
    moved = student.detach().clone()
    moved[..., 1:] += torch.randn(1, 2, 1, 2) * 5
    assert torch.allclose(pseudo_label_loss(moved, teacher, threshold=tau)[0], loss)
    # a lower threshold takes pixel 1 in as well
    assert pseudo_label_loss(student, teacher, threshold=0.8)[1].flatten().tolist() == [True, True, False]


def test_mask_and_allowed_classes():
    teacher, student = _teacher(), torch.zeros(1, 2, 1, 3)
    mask = torch.tensor([[[[False, True, True]]]])
    loss, confident = pseudo_label_loss(student, teacher, threshold=0.5, mask=mask)
    assert confident.flatten().tolist() == [False, True, True]
    assert torch.allclose(loss, torch.tensor(2 * 0.6931471805599453 / 2))  # CE of a uniform student is log 2
    allowed = torch.ones(1, 2, 1, 3)
    allowed[0, 0, 0, 0] = 0  # class 0 ruled out at pixel 0: the pseudo-label flips to class 1 (renormalised: 1.0)
    allowed[0, :, 0, 2] = 0  # no class allowed at pixel 2: no pseudo-label
    student = torch.tensor([[[[0.0, 0.0, 0.0]], [[5.0, 0.0, 0.0]]]], requires_grad=True)
    loss, confident = pseudo_label_loss(student, teacher, threshold=0.5, allowed=allowed)
    assert confident.flatten().tolist() == [True, True, False]
    loss.backward()
    assert student.grad[0, :, 0, 0].abs().sum() < 0.1  # student already says class 1 at pixel 0
    with pytest.raises(ValueError, match="pseudo_threshold must be in"):
        pseudo_label_loss(student, teacher, threshold=1.0)


def test_strong_augmentation_is_photometric_and_cutout_is_reported():
    torch.manual_seed(0)
    x = torch.randn(3, 1, 16, 16)
    aug = StrongAugment(cutout_size=0.5)
    torch.manual_seed(1)
    a, kept = aug(x)
    torch.manual_seed(1)
    b, _ = aug(x)
    assert a.shape == x.shape and a.dtype == x.dtype and kept.shape == (3, 1, 16, 16) and torch.equal(a, b)
    assert (a[~kept.expand_as(a)] == 0).all()
    img, k = cutout(torch.ones(1, 1, 6, 6), [((1, 3), (2, 5))])
    assert img.sum() == 36 - 6 and k.sum() == 30 and not k[0, 0, 1:3, 2:5].any()
    const = torch.full((2, 1, 8, 8, 8), 3.0)
    assert torch.allclose(gaussian_blur(const, torch.tensor([1.0, 0.0])), const)
    assert torch.allclose(gaussian_blur(x, torch.zeros(3)), x)
    assert torch.allclose(gamma(x, torch.ones(3)), x, atol=1e-5)
    assert torch.allclose(scale_shift(x, torch.full((3,), 2.0), torch.ones(3)), 2 * x + 1)
    with pytest.raises(ValueError, match="strong_cutout must be in"):
        StrongAugment(cutout_size=2.0)


def test_method_pseudo_labels_only_samples_without_masks(make_sample, make_batch):
    torch.manual_seed(0)
    net = UNet(2, 1, 3, features=(4, 8))
    method = SelfTraining(Supervised(), threshold=0.0)
    method.setup(net)
    labelled = make_sample(torch.randn(1, 8, 8), labels=torch.randint(0, 3, (8, 8)))
    out = method(net, make_batch(labelled, make_sample(torch.randn(1, 8, 8))))
    assert out["output"].shape == (2, 3, 8, 8) and out["pseudo"] > 0 and out["pseudo_confident"] > 0
    out["loss"].backward()
    out = method(net, make_batch(labelled))
    assert "pseudo" not in out and torch.isclose(out["loss"], out["supervised"])
    assert method.teacher is None and method.inference_network(net) is net


def test_teacher_variant_and_bad_arguments():
    net = UNet(2, 1, 3, features=(4, 8))
    method = SelfTraining(Supervised(), pseudo_labels_from="teacher")
    method.setup(net)
    assert method.inference_network(net) is method.teacher and not any(p.requires_grad for p in
                                                                       method.teacher.parameters())
    with pytest.raises(ValueError, match="pseudo_labels_from must be"):
        SelfTraining(Supervised(), pseudo_labels_from="oracle")
    with pytest.raises(ValueError, match="unlabelled_weight must be >= 0"):
        SelfTraining(Supervised(), unlabelled_weight=-1)
    with pytest.raises(ValueError, match=r"ema_decay must be in \[0, 1\)"):
        SelfTraining(Supervised(), ema_decay=1.5)
