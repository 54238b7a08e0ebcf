"""Weak and partial supervision losses: WEAK_LOSSES contract, hand-computed values, masks, gradient directions."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from everylabel.losses import (
    LOSSES,
    WEAK_LOSSES,
    BoxPriorLoss,
    CRFLoss,
    EntropyLoss,
    MarginalLoss,
    MILLoss,
    MultilabelDeepSupervisionLoss,
    MutualInformationLoss,
    PartialDiceLoss,
    PriorKLLoss,
    SizeConstraintLoss,
    TagSizeLoss,
    box_prior_loss,
    crf_loss,
    dice_ce_loss,
    dice_loss,
    entropy_loss,
    extended_log_barrier,
    global_pool,
    marginal_log_softmax,
    marginal_loss,
    mil_loss,
    multilabel_deep_supervision_loss,
    multilabel_targets,
    mutual_information_loss,
    partial_dice_loss,
    prior_kl_loss,
    quadratic_penalty,
    size_constraint_loss,
    tag_size_loss,
)

N = 3


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny tensors: intra-op threads only add synchronisation cost (and fight other jobs for the cores)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _logits(ndim: int, b: int = 2, n: int = N, size: int = 6, dtype=torch.float64, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn((b, n) + (size,) * ndim, generator=g, dtype=dtype)


def _mask(shape: tuple[int, ...]) -> torch.Tensor:
    """(B, 1, *S) bool mask: True on the first half of the first spatial axis."""
    m = torch.zeros(shape[:1] + (1,) + shape[2:], dtype=torch.bool)
    m[:, :, : shape[2] // 2] = True
    return m


def _boxes(x: torch.Tensor) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    nd, size = x.ndim - 2, x.shape[2]
    box1 = torch.tensor([1.0] * nd + [size - 1.0] * nd)
    box2 = torch.tensor([0.0] * nd + [2.0] * nd)
    boxes = [torch.stack([box1, box2]), torch.zeros((0, 2 * nd))]
    labels = [torch.tensor([1, 2]), torch.zeros((0,), dtype=torch.long)]
    return boxes[: x.shape[0]], labels[: x.shape[0]]


def _tags(b: int) -> torch.Tensor:
    return torch.tensor([[1, 1, 0], [1, -1, 1]])[:b]


def _weak_case(name: str, x: torch.Tensor, reduction: str = "mean", masked: bool = True):
    """(module, function) computing the named loss of logits ``x`` with fixed annotations."""
    mask = _mask(x.shape) if masked else None
    b = x.shape[0]
    if name == "crf":
        image = torch.randn((b, 1) + tuple(x.shape[2:]), generator=torch.Generator().manual_seed(2),
                            dtype=torch.float64)
        return (CRFLoss(sigma_xy=2.0, sigma_intensity=0.5, reduction=reduction),
                lambda y: crf_loss(y, image, sigma_xy=2.0, sigma_intensity=0.5, mask=mask, reduction=reduction),
                lambda mod, y: mod(y, image, mask))
    if name == "entropy":
        return EntropyLoss(reduction=reduction), lambda y: entropy_loss(y, mask=mask, reduction=reduction), \
            lambda mod, y: mod(y, mask)
    if name == "mutual_information":
        return (MutualInformationLoss(batch=False, reduction=reduction),
                lambda y: mutual_information_loss(y, mask=mask, batch=False, reduction=reduction),
                lambda mod, y: mod(y, mask))
    if name == "prior_kl":
        prior = torch.tensor([0.6, 0.3, 0.1])
        return (PriorKLLoss(prior, reduction=reduction),
                lambda y: prior_kl_loss(y, prior=prior, mask=mask, reduction=reduction), lambda mod, y: mod(y, mask))
    if name == "size_constraint":
        lower, upper = torch.tensor([5.0, 2.0, float("nan")]), torch.tensor([float("inf"), 3.0, 0.5])
        return (SizeConstraintLoss(penalty="log_barrier", reduction=reduction),
                lambda y: size_constraint_loss(y, lower=lower, upper=upper, mask=mask, penalty="log_barrier",
                                               reduction=reduction),
                lambda mod, y: mod(y, lower=lower, upper=upper, mask=mask))
    if name == "tag_size":
        tags = _tags(b)
        return (TagSizeLoss(min_size=2.0, reduction=reduction),
                lambda y: tag_size_loss(y, tags=tags, mask=mask, min_size=2.0, reduction=reduction),
                lambda mod, y: mod(y, tags=tags, mask=mask))
    if name == "box_prior":
        boxes, labels = _boxes(x)
        kw = {"width": 2, "lambda_emptiness": 1.0, "lambda_tightness": 1.0, "size_bounds": (0.2, 0.9),
              "tight_at_border": True}
        return (BoxPriorLoss(reduction=reduction, **kw),
                lambda y: box_prior_loss(y, boxes=boxes, box_labels=labels, reduction=reduction, **kw),
                lambda mod, y: mod(y, boxes=boxes, box_labels=labels))
    if name == "mil":
        tags = _tags(b)
        return (MILLoss(r=3.0, reduction=reduction),
                lambda y: mil_loss(y, tags=tags, r=3.0, mask=mask, reduction=reduction),
                lambda mod, y: mod(y, tags=tags, mask=mask))
    if name == "multilabel_deep_supervision":
        nd = x.ndim - 2
        labels = torch.randint(0, N, (b, 1) + tuple(x.shape[2:]), generator=torch.Generator().manual_seed(1))
        valid = mask if mask is not None else torch.ones_like(labels, dtype=torch.bool)
        sizes = [tuple(x.shape[2:]), tuple(s // 2 for s in x.shape[2:]), (1,) * nd]
        targets, masks = multilabel_targets(labels, valid, num_classes=N, sizes=sizes, tags=_tags(b))
        every_other = (slice(None), slice(None)) + (slice(None, None, 2),) * nd

        def outs(y):
            return [y, y[every_other], y[every_other]]

        return (MultilabelDeepSupervisionLoss(reduction=reduction),
                lambda y: multilabel_deep_supervision_loss(outs(y), targets, masks, reduction=reduction),
                lambda mod, y: mod(outs(y), targets, masks))
    raise KeyError(name)


# ----------------------------------------------------------------------------------------------- contract


@pytest.mark.parametrize("name", sorted(WEAK_LOSSES))
@pytest.mark.parametrize("ndim", [2, 3])
def test_weak_contract(name, ndim):
    x = _logits(ndim, size=4).requires_grad_(True)
    module, fn, call = _weak_case(name, x)
    assert isinstance(module, WEAK_LOSSES[name])
    value = fn(x)
    assert value.ndim == 0 and torch.isfinite(value)
    assert torch.allclose(value, call(module, x))
    value.backward()
    assert torch.isfinite(x.grad).all()
    small = _logits(ndim, size=3, seed=3).requires_grad_(True)
    _, fn_small, _ = _weak_case(name, small)
    assert torch.autograd.gradcheck(fn_small, (small,), eps=1e-6, atol=1e-5, fast_mode=ndim == 3)


@pytest.mark.parametrize("name", sorted(WEAK_LOSSES))
@pytest.mark.parametrize("ndim", [2, 3])
def test_weak_reductions(name, ndim):
    x = _logits(ndim, size=4, dtype=torch.float32)
    values = {r: _weak_case(name, x, reduction=r)[1](x) for r in ("mean", "sum", "none")}
    assert values["mean"].ndim == values["sum"].ndim == 0
    assert all(v.dtype == torch.float32 for v in values.values())
    half = _weak_case(name, x.bfloat16())[1](x.bfloat16())  # half types are upcast, never computed in bfloat16
    assert half.dtype == torch.float32 and torch.isfinite(half)
    assert values["none"].ndim == x.ndim
    if name != "entropy":
        assert values["none"].shape[0] in (1, x.shape[0]) and all(s == 1 for s in values["none"].shape[2:])
    assert torch.isfinite(values["none"]).all()


@pytest.mark.parametrize("name", ["partial_ce", "partial_dice", "marginal"])
def test_partial_entries_in_losses(name):
    x = _logits(2, size=4)
    target = torch.randint(0, N, (2, 1, 4, 4))
    assert torch.isfinite(LOSSES[name]()(x, target, _mask(x.shape)))


# ----------------------------------------------------------------------------------------------- masks


def _masked_invariance(fn, x, mask):
    """fn(x) must not change, nor its gradient, when logits change where ``mask`` (B, 1, *S) is False."""
    changed = x.clone()
    noise = 10 * torch.randn_like(x)
    changed = torch.where(mask, changed, changed + noise)
    a, b = x.clone().requires_grad_(True), changed.clone().requires_grad_(True)
    la, lb = fn(a), fn(b)
    assert torch.allclose(la, lb, atol=1e-9)
    la.backward()
    lb.backward()
    assert torch.allclose(a.grad, b.grad, atol=1e-10)
    assert (a.grad * ~mask).abs().max() == 0


@pytest.mark.parametrize("name", ["entropy", "mutual_information", "prior_kl", "size_constraint", "tag_size", "mil",
                                  "crf"])
@pytest.mark.parametrize("ndim", [2, 3])
def test_masked_weak_losses_ignore_outside(name, ndim):
    x = _logits(ndim, size=4)
    _, fn, _ = _weak_case(name, x)
    _masked_invariance(fn, x, _mask(x.shape))


@pytest.mark.parametrize("ndim", [2, 3])
def test_masked_partial_and_marginal_ignore_outside(ndim):
    x = _logits(ndim, size=4)
    target = torch.randint(0, N, (2, 1) + (4,) * ndim, generator=torch.Generator().manual_seed(2))
    target[0][target[0] == 2] = 0  # sample 0 does not cover class 2
    classes = torch.tensor([[True, True, False], [True, True, True]])
    mask = _mask(x.shape)
    _masked_invariance(lambda y: partial_dice_loss(y, target, mask=mask), x, mask)
    _masked_invariance(lambda y: marginal_loss(y, target, classes=classes, mask=mask, lambda_exclusion=1.0), x, mask)


def test_multilabel_masks_ignore_invalid_entries():
    x = _logits(2, size=4)
    labels = torch.zeros((2, 1, 4, 4), dtype=torch.long)
    valid = _mask(x.shape)
    targets, masks = multilabel_targets(labels, valid, num_classes=N, sizes=[(4, 4)])

    def fn(y):
        return multilabel_deep_supervision_loss([y], targets, masks)

    _masked_invariance(fn, x, valid)


# ----------------------------------------------------------------------------------------------- partial


def test_partial_dice_is_dice_on_annotated_pixels():
    x = _logits(2, size=4)
    target = torch.randint(0, N, (2, 1, 4, 4))
    mask = _mask(x.shape)
    expected = dice_loss(x[:, :, :2], target[:, :, :2], to_onehot_y=True, softmax=True)
    assert torch.allclose(partial_dice_loss(x, target, mask=mask), expected)
    assert torch.allclose(PartialDiceLoss(batch=True)(x, target, mask),
                          dice_loss(x[:, :, :2], target[:, :, :2], to_onehot_y=True, softmax=True, batch=True))
    with pytest.raises(ValueError, match="sigmoid=True and softmax=True"):
        PartialDiceLoss(sigmoid=True)


# ----------------------------------------------------------------------------------------------- entropy family


def test_entropy_values():
    uniform = torch.zeros((1, 4, 2, 2))
    assert torch.isclose(entropy_loss(uniform), torch.tensor(math.log(4)))
    confident = torch.zeros((1, 2, 2, 2))
    confident[:, 0] = 50.0
    assert entropy_loss(confident) < 1e-15
    p = torch.tensor([0.7, 0.2, 0.1])
    x = p.log().view(1, 3, 1, 1).expand(1, 3, 2, 2)
    h = -(p * p.log()).sum()
    assert torch.allclose(entropy_loss(x), h)
    assert torch.allclose(entropy_loss(x, reduction="sum"), 4 * h)
    assert entropy_loss(x, reduction="none").shape == (1, 1, 2, 2)
    assert entropy_loss(x, mask=torch.zeros((1, 1, 2, 2), dtype=torch.bool)) == 0


@pytest.mark.parametrize("ndim", [2, 3])
def test_mutual_information_prefers_confident_diverse_predictions(ndim):
    shape = (1, 2) + (2,) * ndim
    uniform = torch.zeros(shape)
    assert abs(mutual_information_loss(uniform)) < 1e-6  # H(y|x) = H(y) = log 2
    same = torch.zeros(shape)
    same[:, 0] = 30.0
    assert abs(mutual_information_loss(same)) < 1e-6  # trivial solution: both entropies 0
    diverse = torch.zeros(shape)
    diverse[:, 0, 0] = 30.0
    diverse[:, 1, 1] = 30.0
    assert torch.isclose(mutual_information_loss(diverse), torch.tensor(-math.log(2)), atol=1e-6)
    # batch=False: one marginal per sample; two samples each all-one-class are diverse only over the batch
    two = torch.cat([same, same.flip(1)])
    assert abs(mutual_information_loss(two, batch=False)) < 1e-6
    assert torch.isclose(mutual_information_loss(two, batch=True), torch.tensor(-math.log(2)), atol=1e-6)


def test_prior_kl_values():
    prior = torch.tensor([0.5, 0.25, 0.25, 0.0])
    uniform = torch.zeros((2, 4, 3, 3), dtype=torch.float64)
    expected = (prior[:3] * (prior[:3] / 0.25).log()).sum().double()
    assert torch.isclose(prior_kl_loss(uniform, prior=prior), expected)
    matching = prior.clamp_min(1e-30).log().double().view(1, 4, 1, 1).expand(2, 4, 3, 3)
    assert prior_kl_loss(matching, prior=prior) < 1e-12
    per_sample = prior_kl_loss(uniform, prior=prior, batch=False, reduction="none")
    assert per_sample.shape == (2, 1, 1, 1) and torch.allclose(per_sample, expected.expand(2, 1, 1, 1))
    with pytest.raises(ValueError, match="summing to 1"):
        prior_kl_loss(uniform, prior=torch.tensor([0.5, 0.5, 0.5, 0.0]))
    with pytest.raises(ValueError, match="prior must have shape"):
        PriorKLLoss(torch.ones(2, 4) / 4)


# ----------------------------------------------------------------------------------------------- size constraints


def test_extended_log_barrier_formula():
    t = 5.0
    z = torch.tensor([-1.0, -0.5, -1 / t**2, 0.0, 1.0], dtype=torch.float64, requires_grad=True)
    psi = extended_log_barrier(z, t)
    const = (2 * math.log(t) + 1) / t  # -log(1/t^2)/t + 1/t
    expected = torch.tensor([0.0, -math.log(0.5) / t, -math.log(1 / t**2) / t, const, t + const],
                            dtype=torch.float64)
    assert torch.allclose(psi, expected)
    psi.sum().backward()
    assert torch.allclose(z.grad, torch.tensor([1 / t, 2 / t, t, t, t], dtype=torch.float64))  # -1/(t z) then t
    eps = 1e-9  # continuous across the switch
    at = torch.tensor([-1 / t**2 - eps, -1 / t**2 + eps], dtype=torch.float64)
    left, right = extended_log_barrier(at, t)
    assert abs(left - right) < 1e-7
    assert torch.equal(quadratic_penalty(torch.tensor([-2.0, 0.0, 3.0])), torch.tensor([0.0, 0.0, 9.0]))
    with pytest.raises(ValueError, match="t \\(the log-barrier parameter\\) must be > 0"):
        extended_log_barrier(z, 0.0)


def _two_class_logits(p1: float, shape: tuple[int, ...]) -> torch.Tensor:
    """(1, 2, *shape) logits with class-1 probability ``p1`` everywhere."""
    x = torch.zeros((1, 2) + shape, dtype=torch.float64)
    x[:, 1] = math.log(p1 / (1 - p1))
    return x


@pytest.mark.parametrize("shape", [(2, 2), (2, 1, 2)])
def test_size_penalty_hand_computed(shape):
    x = torch.zeros((1, 2) + shape, dtype=torch.float64)  # V_0 = V_1 = 2, |Omega| = 4
    nan = float("nan")
    q = size_constraint_loss(x, lower=torch.tensor([nan, 3.0]), reduction="sum")
    assert torch.isclose(q, torch.tensor(0.25, dtype=torch.float64))  # (3 - 2)^2 / 4
    q = size_constraint_loss(x, lower=1.0, upper=torch.tensor([1.5, 10.0]), reduction="none")
    assert q.shape == (1, 2) + (1,) * len(shape)
    assert torch.allclose(q.flatten(), torch.tensor([0.25**2 / 4 * 4, 0.0], dtype=torch.float64))
    lb = size_constraint_loss(x, lower=torch.tensor([nan, 3.0]), penalty="log_barrier", t=5.0, reduction="sum")
    assert torch.isclose(lb, extended_log_barrier(torch.tensor(1.0, dtype=torch.float64), 5.0) / 4)
    inside = size_constraint_loss(x, lower=0.0, upper=4.0, include_background=False, reduction="sum")
    assert inside == 0  # feasible: quadratic penalty is exactly 0


def test_tag_constraints_inclusion_suppression_unknown():
    x = torch.zeros((1, 3, 2, 2), dtype=torch.float64)  # V_k = 4/3 for every class, |Omega| = 4
    v = 4 / 3
    loss = tag_size_loss(x, tags=torch.tensor([[-1, 1, 0]]), min_size=2.0, reduction="none").flatten()
    assert loss[0] == 0  # unknown: unconstrained
    assert torch.isclose(loss[1], torch.tensor((2.0 - v) ** 2 / 4, dtype=torch.float64))  # inclusion
    assert torch.isclose(loss[2], torch.tensor(v**2 / 4, dtype=torch.float64))  # suppression
    frac = tag_size_loss(x, tags=torch.tensor([[-1, 1, -1]]), min_size=0.0, min_fraction=0.5, reduction="sum")
    assert torch.isclose(frac, torch.tensor((2.0 - v) ** 2 / 4, dtype=torch.float64))  # 0.5 * 4 voxels
    with pytest.raises(ValueError, match="min_fraction must be in"):
        TagSizeLoss(min_fraction=2.0)


def test_tag_suppression_descends_to_zero_mass():
    x = torch.zeros((1, 3, 4, 4), dtype=torch.float64, requires_grad=True)
    tags = torch.tensor([[1, 1, 0]])
    opt = torch.optim.SGD([x], lr=20.0)  # the penalty is divided by |Omega| = 16
    before = torch.softmax(x, 1)[:, 2].sum().item()
    for _ in range(30):
        opt.zero_grad()
        tag_size_loss(x, tags=tags, penalty="log_barrier", t=5.0, reduction="sum").backward()
        opt.step()
    assert torch.softmax(x, 1)[:, 2].sum().item() < 0.1 * before


# ----------------------------------------------------------------------------------------------- box prior


def test_box_tightness_hand_computed():
    # one 4 x 6 box away from the border, class-1 probability 0.1 everywhere, w = 2:
    # 2 slabs of 2 rows (12 px, z = 2 - 1.2) and 3 slabs of 2 columns (8 px, z = 2 - 0.8)
    x = _two_class_logits(0.1, (8, 10))
    boxes, labels = [torch.tensor([[2.0, 2.0, 6.0, 8.0]])], [torch.tensor([1])]
    loss = box_prior_loss(x, boxes=boxes, box_labels=labels, width=2, penalty="quadratic", lambda_emptiness=0.0,
                          lambda_tightness=1.0)
    assert torch.isclose(loss, torch.tensor(2 * 0.8**2 + 3 * 1.2**2, dtype=torch.float64))
    # box of length 5 along axis 0: slabs 2, 2 and a last one of width 1 (bound 1)
    boxes = [torch.tensor([[2.0, 2.0, 7.0, 4.0]])]
    loss = box_prior_loss(x, boxes=boxes, box_labels=labels, width=2, penalty="quadratic", lambda_emptiness=0.0,
                          lambda_tightness=1.0)
    expected = 2 * (2 - 0.4) ** 2 + (1 - 0.2) ** 2 + (2 - 1.0) ** 2  # rows: 2x2 px, 1x2 px; columns: 2x5 px
    assert torch.isclose(loss, torch.tensor(expected, dtype=torch.float64))


def test_box_prior_3d_slabs_hand_computed():
    x = _two_class_logits(0.1, (6, 6, 6))
    boxes, labels = [torch.tensor([[1.0, 1.0, 1.0, 5.0, 3.0, 4.0]])], [torch.tensor([1])]  # 4 x 2 x 3 voxels
    loss = box_prior_loss(x, boxes=boxes, box_labels=labels, width=2, penalty="quadratic", lambda_emptiness=0.0,
                          lambda_tightness=1.0)
    # axis 0: 2 slabs of 2x2x3 = 12 vx; axis 1: 1 slab of 4x2x3 = 24 vx (satisfied); axis 2: a slab of 4x2x2 = 16 vx
    # and a last one of width 1, 4x2x1 = 8 vx with bound 1
    expected = 2 * (2 - 1.2) ** 2 + 0 + (2 - 1.6) ** 2 + (1 - 0.8) ** 2
    assert torch.isclose(loss, torch.tensor(expected, dtype=torch.float64))


@pytest.mark.parametrize("ndim", [2, 3])
def test_box_prior_perfect_prediction(ndim):
    size = 8
    obj = torch.zeros((size,) * ndim, dtype=torch.bool)
    obj[(slice(2, 6),) * ndim] = True  # the box is tight on this object
    x = torch.zeros((1, 2) + (size,) * ndim, dtype=torch.float64)
    x[:, 1] = torch.where(obj, 40.0, -40.0)
    boxes, labels = [torch.tensor([[2.0] * ndim + [6.0] * ndim])], [torch.tensor([1])]
    kw = {"boxes": boxes, "box_labels": labels, "width": 2}
    quad = box_prior_loss(x, penalty="quadratic", lambda_emptiness=1.0, lambda_tightness=1.0, lambda_size=1.0,
                          size_bounds=(0.5, 1.0), **kw)
    assert quad < 1e-12  # tightness, emptiness and size all satisfied
    empty_only = box_prior_loss(x, penalty="log_barrier", t=5.0, lambda_emptiness=1.0, lambda_tightness=0.0, **kw)
    assert torch.isclose(empty_only, extended_log_barrier(torch.zeros((), dtype=torch.float64), 5.0) / size**ndim)
    bad = torch.zeros_like(x)
    assert box_prior_loss(x, **kw) < box_prior_loss(bad, **kw)


def test_box_prior_emptiness_zero_when_nothing_outside():
    x = _two_class_logits(0.5, (6, 6))
    x[:, 1] = -60.0
    x[:, 1, 1:4, 1:5] = 0.0
    boxes, labels = [torch.tensor([[1.0, 1.0, 4.0, 5.0]])], [torch.tensor([1])]
    loss = box_prior_loss(x, boxes=boxes, box_labels=labels, penalty="quadratic", lambda_tightness=0.0,
                          lambda_emptiness=1.0)
    assert loss < 1e-30
    x[:, 1, 0, 0] = 60.0  # one confident pixel outside: V_out = 1, penalty 1 / |Omega|
    loss = box_prior_loss(x, boxes=boxes, box_labels=labels, penalty="quadratic", lambda_tightness=0.0,
                          lambda_emptiness=1.0)
    assert torch.isclose(loss, torch.tensor(1 / 36, dtype=torch.float64))


def test_box_prior_border_and_errors():
    x = _two_class_logits(0.1, (6, 6))
    boxes, labels = [torch.tensor([[0.0, 2.0, 4.0, 4.0]])], [torch.tensor([1])]  # touches the border on axis 0
    kw = {"boxes": boxes, "box_labels": labels, "width": 2, "penalty": "quadratic", "lambda_emptiness": 0.0,
          "lambda_tightness": 1.0}
    # only the slabs perpendicular to axis 0 (2 rows x 2 columns = 4 px each, 2 of them) are kept
    assert torch.isclose(box_prior_loss(x, **kw), torch.tensor(2 * (2 - 0.4) ** 2, dtype=torch.float64))
    both = box_prior_loss(x, tight_at_border=True, **kw)
    assert torch.isclose(both, torch.tensor(2 * (2 - 0.4) ** 2 + (2 - 0.8) ** 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="box labels must be foreground classes"):
        box_prior_loss(x, boxes=boxes, box_labels=[torch.tensor([0])])
    with pytest.raises(ValueError, match="one entry per sample"):
        box_prior_loss(x, boxes=boxes * 2, box_labels=labels * 2)
    with pytest.raises(ValueError, match="width"):
        BoxPriorLoss(width=0)
    with pytest.raises(ValueError, match="size_bounds"):
        BoxPriorLoss(size_bounds=(0.9, 0.5))
    with pytest.raises(ValueError, match="penalty must be one of"):
        BoxPriorLoss(penalty="l2")


def test_box_prior_covered_class_without_a_box_is_absent():
    # two samples, 3 classes: sample 0 has a class-1 box, sample 1 (a slice no box crosses) none
    x = torch.zeros((2, 3, 4, 5), dtype=torch.float64, requires_grad=True)  # every class 1/3 everywhere
    boxes = [torch.tensor([[1.0, 1.0, 3.0, 4.0]]), torch.zeros((0, 4))]
    labels = [torch.tensor([1]), torch.zeros((0,), dtype=torch.int64)]
    kw = {"boxes": boxes, "box_labels": labels, "penalty": "quadratic", "lambda_tightness": 0.0,
          "lambda_emptiness": 1.0, "reduction": "none"}
    old = box_prior_loss(x, **kw).flatten()
    assert old[1] == 0  # without `classes` a sample without boxes is unconstrained
    covered = torch.tensor([[False, True, False], [False, True, True]])
    new = box_prior_loss(x, classes=covered, **kw).flatten()
    assert torch.isclose(new[0], old[0])  # class 2 is not covered in sample 0; class 1 has its box
    # sample 1: classes 1 and 2 are covered and unboxed, V = 20 / 3 each, quadratic penalty / |Omega| = 20
    assert torch.isclose(new[1], torch.tensor(2 * (20 / 3) ** 2 / 20, dtype=torch.float64))
    new.sum().backward()
    p_grad = x.grad[1, 1:]
    assert (p_grad > 0).all()  # descent lowers the covered classes' logits in the unboxed sample
    with pytest.raises(ValueError, match="classes must be a"):
        box_prior_loss(x, boxes=boxes, box_labels=labels, classes=covered[:, :2])
    module = BoxPriorLoss(penalty="quadratic", lambda_tightness=0.0, lambda_emptiness=1.0, reduction="none")
    assert torch.allclose(module(x, boxes=boxes, box_labels=labels, classes=covered).flatten(), new.detach())


@pytest.mark.parametrize("ndim", [2, 3])
def test_box_prior_descent_moves_mass_into_box(ndim):
    size = 8
    x = torch.zeros((1, 2) + (size,) * ndim, dtype=torch.float64, requires_grad=True)
    boxes, labels = [torch.tensor([[2.0] * ndim + [6.0] * ndim])], [torch.tensor([1])]
    inside = torch.zeros((size,) * ndim, dtype=torch.bool)
    inside[(slice(2, 6),) * ndim] = True
    module = BoxPriorLoss(width=2, lambda_emptiness=1.0, lambda_tightness=0.05)
    opt = torch.optim.SGD([x], lr=size**ndim / 16)  # emptiness is divided by |Omega|
    p0 = torch.softmax(x, 1)[0, 1].detach()
    for _ in range(40):
        opt.zero_grad()
        module(x, boxes=boxes, box_labels=labels).backward()
        opt.step()
        module.t *= 1.05  # the log-barrier schedule
    p = torch.softmax(x, 1)[0, 1].detach()
    assert p[~inside].sum() < 0.2 * p0[~inside].sum()
    assert p[inside].mean() > p0[inside].mean()


# ----------------------------------------------------------------------------------------------- MIL


def test_global_pool_values_and_limits():
    x = torch.tensor([0.0, 1.0, 2.0, 5.0], dtype=torch.float64).view(1, 1, 2, 2)
    assert torch.isclose(global_pool(x, pool="lse", r=1.0)[0, 0],
                         torch.tensor((1 + math.e + math.e**2 + math.e**5) / 4, dtype=torch.float64).log())
    assert torch.isclose(global_pool(x, pool="lse", r=1e3)[0, 0], torch.tensor(5.0, dtype=torch.float64), atol=2e-3)
    assert torch.isclose(global_pool(x, pool="lse", r=1e-6)[0, 0], torch.tensor(2.0, dtype=torch.float64), atol=1e-5)
    assert global_pool(x, pool="max")[0, 0] == 5 and global_pool(x, pool="mean")[0, 0] == 2
    const = torch.full((1, 2, 3, 3, 3), 0.7, dtype=torch.float64)
    assert torch.allclose(global_pool(const, r=5.0), torch.full((1, 2), 0.7, dtype=torch.float64))
    mask = torch.tensor([[True, False], [False, False]]).view(1, 1, 2, 2)
    assert global_pool(x, pool="lse", r=7.0, mask=mask)[0, 0] == 0.0  # a single pixel pools to itself
    with pytest.raises(ValueError, match="pool must be one of"):
        MILLoss(pool="avg")


def test_mil_loss_hand_computed_ignores_unknown():
    x = _logits(2, b=2, n=3, size=4)
    tags = torch.tensor([[1, 0, -1], [-1, 1, 0]])
    score = global_pool(x, pool="max")
    known = tags >= 0
    expected = F.binary_cross_entropy_with_logits(score[known], tags[known].double())
    assert torch.isclose(mil_loss(x, tags=tags, pool="max"), expected)
    none = mil_loss(x, tags=tags, pool="max", reduction="none")
    assert none.shape == (2, 3, 1, 1) and none[0, 2] == 0 and none[1, 0] == 0
    assert mil_loss(x, tags=torch.full((2, 3), -1)) == 0


def test_mil_descent_raises_present_and_lowers_absent_scores():
    x = torch.zeros((1, 3, 4, 4, 4), dtype=torch.float64, requires_grad=True)
    tags = torch.tensor([[-1, 1, 0]])
    opt = torch.optim.SGD([x], lr=100.0)  # LSE spreads the gradient over the 64 voxels
    for _ in range(10):
        opt.zero_grad()
        mil_loss(x, tags=tags).backward()
        opt.step()
    score = global_pool(x.detach())
    assert score[0, 1] > 1.0 and score[0, 2] < -1.0 and score[0, 0] == 0


# ----------------------------------------------------------------------------------------------- marginal


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("include_background", [True, False])
def test_marginal_equals_dice_ce_when_every_class_is_covered(ndim, include_background):
    x = _logits(ndim, size=4)
    target = torch.randint(0, N, (2, 1) + (4,) * ndim)
    mask = _mask(x.shape)
    ours = marginal_loss(x, target, mask=mask, include_background=include_background)
    ref = dice_ce_loss(x, target, mask=mask, include_background=include_background)
    assert torch.allclose(ours, ref)
    assert torch.allclose(MarginalLoss(include_background=include_background)(x, target, mask), ref)


def test_marginal_merges_uncovered_classes_into_background():
    classes = torch.tensor([[True, True, False]])
    target = torch.tensor([[[[0, 1]]]])
    p = torch.tensor([[0.2, 0.1, 0.7], [0.1, 0.6, 0.3]], dtype=torch.float64)  # two pixels
    x = p.t().log().view(1, 3, 1, 2)
    merged = marginal_log_softmax(x, classes).exp()
    assert torch.allclose(merged[0, :, 0, 0], torch.tensor([0.9, 0.1, 0.0], dtype=torch.float64))
    ce = marginal_loss(x, target, classes=classes, lambda_dice=0.0)
    assert torch.isclose(ce, -(math.log(0.9) + math.log(0.6)) / 2 * torch.ones((), dtype=torch.float64))
    # predicting the uncovered class where the partial mask says background costs nothing more than background
    swapped = x.clone()
    swapped[0, [0, 2], 0, 0] = swapped[0, [2, 0], 0, 0]
    assert torch.isclose(marginal_loss(swapped, target, classes=classes), marginal_loss(x, target, classes=classes))
    # Dice is averaged over covered classes only: background and class 1
    dice = marginal_loss(x, target, classes=classes, lambda_ce=0.0)
    d0 = 1 - (2 * 0.9 + 1e-5) / (0.9 + 0.4 + 1 + 1e-5)
    d1 = 1 - (2 * 0.6 + 1e-5) / (0.7 + 1 + 1e-5)
    assert torch.isclose(dice, torch.tensor((d0 + d1) / 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="do not cover"):
        marginal_loss(x, torch.tensor([[[[2, 1]]]]), classes=classes)


def test_marginal_exclusion_term():
    classes = torch.tensor([[True, True, False]])
    target = torch.tensor([[[[0, 1, 1, 0]]]])
    perfect = torch.full((1, 3, 1, 4), -30.0, dtype=torch.float64)
    perfect[0, 0, 0, [0, 3]] = 30.0
    perfect[0, 1, 0, [1, 2]] = 30.0
    base = marginal_loss(perfect, target, classes=classes)
    assert torch.isclose(marginal_loss(perfect, target, classes=classes, lambda_exclusion=2.0), base)
    wrong = perfect.clone()
    wrong[0, 2, 0, 1] = 60.0  # uncovered class predicted on a pixel labelled as covered class 1
    gap = marginal_loss(wrong, target, classes=classes, lambda_exclusion=1.0) - marginal_loss(wrong, target,
                                                                                              classes=classes)
    assert gap > 0.1
    with pytest.raises(ValueError, match="lambda_dice, lambda_ce and lambda_exclusion must be >= 0"):
        MarginalLoss(lambda_exclusion=-1.0)


# ----------------------------------------------------------------------------------------------- multi-label


def test_multilabel_targets_from_labels_boxes_tags():
    labels = torch.zeros((2, 1, 4, 4), dtype=torch.long)
    labels[0, 0, 0, 0] = 1
    valid = torch.ones_like(labels, dtype=torch.bool)
    valid[1] = False
    valid[1, 0, :2, :2] = True  # sample 1: only the top-left quarter annotated (background)
    boxes = [torch.zeros((0, 4)), torch.tensor([[2.0, 2.0, 4.0, 4.0]])]
    box_labels = [torch.zeros((0,), dtype=torch.long), torch.tensor([2])]
    tags = torch.tensor([[-1, -1, 0], [-1, -1, -1]])
    sizes = [(4, 4), (2, 2), (1, 1)]
    targets, masks = multilabel_targets(labels, valid, boxes, box_labels, N, sizes, tags=tags)
    assert [t.shape for t in targets] == [(2, N, *s) for s in sizes]
    # sample 0, fully labelled: the 2x2 cell at (0, 0) holds background and class 1
    assert targets[1][0, :, 0, 0].tolist() == [1.0, 1.0, 0.0] and masks[1][0].all()
    assert targets[2][0, :, 0, 0].tolist() == [1.0, 1.0, 0.0]
    # sample 1: annotated quarter is a known background / negative cell; the rest is unknown for classes 0 and 1
    assert targets[1][1, :2, 0, 0].tolist() == [1.0, 0.0] and masks[1][1, :2, 0, 0].all()
    assert not masks[1][1, :2, 1, 1].any()
    # box of class 2: outside known negative everywhere, inside positive only from scale 1 on
    assert masks[0][1, 2, 0, 0] and targets[0][1, 2, 0, 0] == 0
    assert not masks[0][1, 2, 3, 3]
    assert masks[1][1, 2, 1, 1] and targets[1][1, 2, 1, 1] == 1
    assert targets[2][1, 2, 0, 0] == 1
    # class 2 tagged absent in sample 0: negative everywhere
    assert masks[0][0, 2].all() and (targets[0][0, 2] == 0).all()
    # partial masks: uncovered class 2 learns nothing from sample 0's labels, background positives are not trusted
    classes = torch.tensor([[True, True, False], [True, True, True]])
    targets, masks = multilabel_targets(labels, valid, num_classes=N, sizes=sizes, classes=classes)
    assert not masks[0][0, 2].any()
    assert not masks[0][0, 0, 1, 1] and masks[0][0, 0, 0, 0]  # label-0 pixel unsure, class-1 pixel known not bg
    with pytest.raises(ValueError, match="sizes must be"):
        multilabel_targets(labels, valid, num_classes=N, sizes=[(8, 8)])


def test_multilabel_targets_3d_global_tags_without_labels():
    tags = torch.tensor([[1, 0, 1]])
    boxes = [torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0, 2.0]])]
    targets, masks = multilabel_targets(None, None, boxes, [torch.tensor([2])], N, [(4, 4, 4), (1, 1, 1)],
                                        tags=tags, spatial_shape=(4, 4, 4))
    assert targets[1][0].flatten().tolist() == [1.0, 0.0, 1.0] and masks[1].all()
    assert not masks[0][0, 0].any() and masks[0][0, 1].all()
    assert masks[0][0, 2, 3, 3, 3] and not masks[0][0, 2, 0, 0, 0]


def test_multilabel_loss_hand_computed():
    out = torch.tensor([[[[0.0, 2.0], [-1.0, 3.0]]]], dtype=torch.float64)  # (1, 1, 2, 2)
    t0 = torch.tensor([[[[1.0, 0.0], [0.0, 1.0]]]], dtype=torch.float64)
    m0 = torch.tensor([[[[True, True], [False, True]]]])
    t1, m1 = torch.ones((1, 1, 1, 1)), torch.ones((1, 1, 1, 1), dtype=torch.bool)

    def bce(x, y):
        return F.binary_cross_entropy_with_logits(torch.tensor(x, dtype=torch.float64),
                                                  torch.tensor(y, dtype=torch.float64)).item()

    s0 = (bce(0.0, 1.0) + bce(2.0, 0.0) + bce(3.0, 1.0)) / 3
    s1 = bce(3.0, 1.0)  # the global target max-pools the output
    loss = multilabel_deep_supervision_loss([out, out], [t0, t1], [m0, m1])
    assert math.isclose(loss.item(), (s0 + s1) / 2, rel_tol=1e-9)
    weighted = multilabel_deep_supervision_loss([out, out], [t0, t1], [m0, m1], weights=[3.0, 1.0])
    assert math.isclose(weighted.item(), (3 * s0 + s1) / 4, rel_tol=1e-9)
    total = multilabel_deep_supervision_loss([out, out], [t0, t1], [m0, m1], reduction="sum")
    assert math.isclose(total.item(), 3 * s0 + s1, rel_tol=1e-9)
    nothing = multilabel_deep_supervision_loss([out], [t0], [torch.zeros_like(m0)])
    assert nothing == 0
    with pytest.raises(ValueError, match="does not fit target"):
        multilabel_deep_supervision_loss([out[..., :1, :1]], [t0], [m0])


# ----------------------------------------------------------------------------------------------- flags


def test_weak_flags_raise():
    with pytest.raises(ValueError, match="reduction must be one of"):
        EntropyLoss(reduction="avg")
    with pytest.raises(ValueError, match="lambda_marginal must be >= 0"):
        MutualInformationLoss(lambda_marginal=-1.0)
    with pytest.raises(ValueError, match="penalty must be one of"):
        SizeConstraintLoss(penalty="hinge")
    with pytest.raises(ValueError, match="r \\(the LSE sharpness\\) must be > 0"):
        MILLoss(r=0.0)
    with pytest.raises(ValueError, match="weights must be non-negative"):
        MultilabelDeepSupervisionLoss(weights=[1.0, -1.0])
    with pytest.raises(ValueError, match="tags must be"):
        mil_loss(torch.zeros((1, 3, 2, 2)), tags=torch.zeros((1, 2)))
    with pytest.raises(ValueError, match="lower must broadcast"):
        size_constraint_loss(torch.zeros((1, 3, 2, 2)), lower=torch.zeros(4))


def test_box_prior_defaults_are_the_authors_weights():
    """Defaults = Kervadec et al.'s released PROMISE12 configuration: emptiness 1 and size 1 (both / |Omega|),
    tightness 1e-4 (unnormalised), w = 5, t = 5. Emptiness at 1e-2 (an earlier misreading) left LA box runs at a
    uniform low foreground probability."""
    p = torch.full((10, 10), 0.1, dtype=torch.float64)
    p[2:8, 2:8] = 0.6
    x = torch.stack([torch.zeros_like(p), torch.log(p / (1 - p))])[None]
    boxes, labels = [torch.tensor([[2.0, 2.0, 8.0, 8.0]])], [torch.tensor([1])]
    psi = lambda z: extended_log_barrier(torch.tensor(z, dtype=torch.float64), 5.0)  # noqa: E731
    # the 6-voxel box side splits into a 5-wide slab (5 x 6 x 0.6 = 18 >= 5) and a 1-wide one (3.6 >= 1), per axis
    tight = 2 * (psi(5 - 18.0) + psi(1 - 3.6))
    empty = psi(0.1 * 64)
    size = psi(0.5 * 36 - 28.0) + psi(28.0 - 0.9 * 36)  # sum of p = 21.6 + 6.4
    expected = empty / 100 + 1e-4 * tight + size / 100
    got = box_prior_loss(x, boxes=boxes, box_labels=labels, size_bounds=(0.5, 0.9))
    assert torch.isclose(got, expected, rtol=1e-10), (got, expected)
