"""What a supervision method is: a module that turns (network, batch) into a dict of loss terms.

One training loop serves every method (``engine.trainer``); a method declares which annotation kinds it learns
from so the engine can check the dataset at start-up.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from everylabel.annotations.kinds import Kind


class Method(nn.Module):
    """Base class of supervision strategies.

    Subclasses set ``uses`` (kinds they learn from; the dataset must contain at least one) and implement
    :meth:`forward`, returning ``{"loss": total, "<term>": value, ..., "output": full-resolution logits}``.
    """

    uses: frozenset[Kind] = frozenset()
    uses_unlabelled: bool = False
    """True when the method learns from samples without any annotation (they are then included in training)."""

    def forward(self, network: nn.Module, batch, step: int = 0, total_steps: int = 1) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def setup(self, network: nn.Module) -> None:
        """Called once with the network before training (e.g. to create an EMA teacher)."""

    def after_step(self, network: nn.Module, step: int) -> None:
        """Called after every optimiser step with the number of completed steps (e.g. an EMA update)."""

    def inference_network(self, network: nn.Module) -> nn.Module:
        """The network used for validation and prediction (a mean teacher may answer with its teacher)."""
        return network

    def check_dataset(self, kinds_present: set[Kind], dataset_name: str = "the dataset") -> None:
        """Raise ValueError when no case carries a kind this method learns from."""
        if self.uses and not (self.uses & set(kinds_present)):
            have = ", ".join(sorted(k.value for k in kinds_present)) or "no annotations"
            need = ", ".join(sorted(k.value for k in self.uses))
            raise ValueError(f"method {self.name!r} learns from {need}, but {dataset_name} has {have}")

    @property
    def name(self) -> str:
        return type(self).__name__.lower()


def deep_supervision_weights(n: int) -> list[float]:
    """nnU-Net's weights for n output scales: 1, 1/2, 1/4, ... with the coarsest set to 0, normalised to sum 1."""
    if n == 1:
        return [1.0]
    w = [1.0 / (2**i) for i in range(n)]
    w[-1] = 0.0
    s = sum(w)
    return [x / s for x in w]


def downsample_nearest(t: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Nearest-neighbour resize of a label-like (B, 1, *S) tensor, keeping its dtype."""
    if tuple(t.shape[2:]) == tuple(size):
        return t
    return F.interpolate(t.float(), size=size, mode="nearest").to(t.dtype)
