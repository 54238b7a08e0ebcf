"""Losses on the softmax distribution without pixel labels: entropy, mutual information, prior-aware KL.

* Entropy minimisation (Grandvalet & Bengio, "Semi-supervised learning by entropy minimization", NIPS 2005):
  the mean Shannon entropy ``H(y|x) = mean_p -sum_k s_{p,k} log s_{p,k}`` of the pixels (e.g. unannotated ones).
* Mutual information (information maximisation: Krause, Perona & Gomes, "Discriminative clustering by regularized
  information maximization", NIPS 2010; Boudiaf, ..., Dolz, Ben Ayed, "Information maximization for few-shot
  learning", NeurIPS 2020): ``L = H(y|x) - lambda * H(y)`` with ``H(y) = -sum_k sbar_k log sbar_k`` the
  entropy of the mean prediction ``sbar``; maximising the marginal entropy rules out the trivial solution where
  every pixel confidently takes the same class.
* Prior-aware KL (Zhou, Li, Bai, Wang, Chen, Han, Fishman, Yuille, "Prior-aware neural network for partially-
  supervised multi-organ segmentation", ICCV 2019): ``KL(q || sbar) = sum_k q_k log(q_k / sbar_k)`` between
  prior class proportions ``q`` (e.g. estimated on labelled scans) and the mean predicted probabilities.

The mean prediction ``sbar`` is a dataset-level quantity in both papers, hence ``batch=True`` by default (one
``sbar`` over every pixel of the batch); ``batch=False`` gives one per sample (MONAI's meaning of the flag).
Log-means are computed as a log-sum-exp of log-softmax, so they stay finite for confident predictions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from everylabel.losses.constraints import check_mask, check_reduction, reduce_entries
from everylabel.losses.dice import upcast


def _groups(input: torch.Tensor, mask: torch.Tensor | None, batch: bool):
    """log-softmax (G, N, P) and mask (G, 1, P) bool, with G = 1 (batch) or B, plus (G,) "has pixels"."""
    x = upcast(input)
    logp = F.log_softmax(x, 1).flatten(2)  # (B, N, P)
    if mask is None:
        m = torch.ones_like(logp[:, :1], dtype=torch.bool)
    else:
        m = check_mask(mask, x).flatten(2) > 0  # (B, 1, P)
    if batch:
        logp = logp.transpose(0, 1).reshape(1, logp.shape[1], -1)  # (1, N, B*P)
        m = m.transpose(0, 1).reshape(1, 1, -1)
    has = m.any(-1)[:, 0]  # (G,)
    return logp, m, has


def _log_mean_prob(logp: torch.Tensor, m: torch.Tensor, has: torch.Tensor) -> torch.Tensor:
    """(G, N) log of the mean probability over the masked pixels (over all pixels for groups without any)."""
    m = m | ~has[:, None, None]
    count = m.sum(-1).to(logp.dtype)  # (G, 1)
    return torch.logsumexp(logp.masked_fill(~m, float("-inf")), -1) - torch.log(count)


def _mean_entropy(logp: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """(G,) mean pixel entropy over the masked pixels (0 for groups without any)."""
    mf = m[:, 0].to(logp.dtype)
    ent = -(logp.exp() * logp).sum(1)  # (G, P)
    return (ent * mf).sum(-1) / mf.sum(-1).clamp_min(1.0)


def entropy_loss(input: torch.Tensor, *, mask: torch.Tensor | None = None, reduction: str = "mean") -> torch.Tensor:
    """Shannon entropy of the softmax, averaged over the pixels in ``mask`` (Grandvalet & Bengio 2005).

    Args:
        input: logits.
        mask: optional (B, 1, *S) bool; other pixels contribute neither value nor gradient.
        reduction: "mean" (over masked pixels; 0 if none), "sum", or "none" ((B, 1, *S) map, 0 outside the mask).

    Shapes:
        input: (B, N, *S); mask: (B, 1, *S).

    Returns:
        The entropy in nats (at most ``log N`` per pixel), reduced as asked.
    """
    check_reduction(reduction)
    x = upcast(input)
    m = check_mask(mask, x)
    logp = F.log_softmax(x, 1)
    ent = -(logp.exp() * logp).sum(1, keepdim=True)  # (B, 1, *S)
    if m is not None:
        ent = ent * m
    if reduction == "none":
        return ent
    if reduction == "sum":
        return ent.sum()
    return ent.sum() / (m.sum().clamp_min(1.0) if m is not None else ent.numel())


def _check_batch_args(lambda_marginal: float = 1.0) -> None:
    if lambda_marginal < 0:
        raise ValueError(f"lambda_marginal must be >= 0, got {lambda_marginal}")


def mutual_information_loss(input: torch.Tensor, *, mask: torch.Tensor | None = None, batch: bool = True,
                            lambda_marginal: float = 1.0, reduction: str = "mean") -> torch.Tensor:
    """Negative mutual information ``H(y|x) - lambda_marginal * H(y)`` between pixels and predicted classes.

    Args:
        input: logits.
        mask: optional (B, 1, *S) bool; other pixels contribute neither value nor gradient.
        batch: one marginal ``sbar`` (and one conditional entropy) over the whole batch; False: one per sample.
        lambda_marginal: weight of the marginal entropy (1 = mutual information).
        reduction: "mean" / "sum" over groups (the batch, or the samples with ``batch=False``; groups without
            masked pixels are skipped) or "none" ((G, 1, ...)).

    Shapes:
        input: (B, N, *S); mask: (B, 1, *S).

    Returns:
        The loss (between ``-lambda log N`` and ``log N``), reduced as asked.
    """
    check_reduction(reduction)
    _check_batch_args(lambda_marginal)
    logp, m, has = _groups(input, mask, batch)
    log_mean = _log_mean_prob(logp, m, has)  # (G, N)
    marginal = -(log_mean.exp() * log_mean).sum(1)
    loss = _mean_entropy(logp, m) - lambda_marginal * marginal
    return reduce_entries(loss, has.to(loss.dtype), reduction, input.ndim)


def _check_prior(prior: torch.Tensor, n: int, b: int, batch: bool) -> None:
    ok = prior.shape == (n,) or (not batch and prior.shape == (b, n))
    if not ok:
        want = f"({n},)" if batch else f"({n},) or ({b}, {n})"
        raise ValueError(f"prior must have shape {want}, got {tuple(prior.shape)}")
    if (prior < 0).any() or not torch.allclose(prior.sum(-1), torch.ones_like(prior.sum(-1)), atol=1e-4):
        raise ValueError(f"prior must hold non-negative class proportions summing to 1, got {prior.tolist()}")


def prior_kl_loss(input: torch.Tensor, *, prior: torch.Tensor, mask: torch.Tensor | None = None,
                  batch: bool = True, reduction: str = "mean") -> torch.Tensor:
    """``KL(prior || sbar)``: prior class proportions against the mean predicted probabilities (Zhou et al. 2019).

    Args:
        input: logits.
        prior: (N,) class proportions summing to 1 (or (B, N) with ``batch=False``); classes with proportion 0
            contribute nothing (``0 log 0 = 0``).
        mask: optional (B, 1, *S) bool region over which ``sbar`` is averaged.
        batch: one ``sbar`` over the whole batch (the paper's dataset-level average); False: one per sample.
        reduction: "mean" / "sum" over groups (groups without masked pixels are skipped) or "none" ((G, 1, ...)).

    Shapes:
        input: (B, N, *S); mask: (B, 1, *S).

    Returns:
        The KL divergence in nats (>= 0), reduced as asked.
    """
    check_reduction(reduction)
    logp, m, has = _groups(input, mask, batch)
    q = torch.as_tensor(prior, dtype=logp.dtype, device=logp.device)
    _check_prior(q, input.shape[1], input.shape[0], batch)
    log_mean = _log_mean_prob(logp, m, has)  # (G, N)
    loss = (torch.xlogy(q, q) - q * log_mean).sum(-1)
    return reduce_entries(loss, has.to(loss.dtype), reduction, input.ndim)


class EntropyLoss(nn.Module):
    """Module form of :func:`entropy_loss`."""

    def __init__(self, reduction: str = "mean"):
        super().__init__()
        check_reduction(reduction)
        self.reduction = reduction

    def forward(self, input: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return entropy_loss(input, mask=mask, reduction=self.reduction)


class MutualInformationLoss(nn.Module):
    """Module form of :func:`mutual_information_loss`."""

    def __init__(self, batch: bool = True, lambda_marginal: float = 1.0, reduction: str = "mean"):
        super().__init__()
        check_reduction(reduction)
        _check_batch_args(lambda_marginal)
        self.batch, self.lambda_marginal, self.reduction = batch, lambda_marginal, reduction

    def forward(self, input: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return mutual_information_loss(input, mask=mask, batch=self.batch, lambda_marginal=self.lambda_marginal,
                                       reduction=self.reduction)


class PriorKLLoss(nn.Module):
    """Module form of :func:`prior_kl_loss` with a fixed (N,) ``prior`` (a buffer)."""

    def __init__(self, prior: torch.Tensor, batch: bool = True, reduction: str = "mean"):
        super().__init__()
        check_reduction(reduction)
        prior = torch.as_tensor(prior, dtype=torch.float64)
        _check_prior(prior, prior.shape[-1], 1, True)
        self.register_buffer("prior", prior)
        self.batch, self.reduction = batch, reduction

    def forward(self, input: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return prior_kl_loss(input, prior=self.prior, mask=mask, batch=self.batch, reduction=self.reduction)
