"""What a supervision method is: a module that turns (network, batch) into a dict of loss terms.

One training loop serves every method (``engine.trainer``); a method declares which annotation kinds it learns
from so the engine can check the dataset at start-up.

Every method can add an unsupervised term on the pixels that carry no dense label (every pixel of an unlabelled
image), set with :meth:`Method.configure_entropy` (``method.unlabelled_entropy_weight`` / ``method.entropy_mode``):

* ``"entropy"``: entropy minimisation, the mean pixel entropy ``H(y|x)`` (Grandvalet & Bengio, "Semi-supervised
  learning by entropy minimization", NIPS 2005);
* ``"mi"``: ``H(y|x) - H(y)``, which also maximises the entropy of the batch-mean prediction and so rules out the
  trivial solution where every pixel confidently takes the same class (the mutual-information objective of Krause,
  Perona & Gomes, NIPS 2010; see ``losses.entropy``).
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from everylabel.annotations.kinds import Kind
from everylabel.losses.entropy import entropy_loss, mutual_information_loss

ENTROPY_MODES = ("entropy", "mi")


class Method(nn.Module):
    """Base class of supervision strategies.

    Subclasses set ``uses`` (kinds they learn from; the dataset must contain at least one) and implement
    :meth:`forward`, returning ``{"loss": total, "<term>": value, ..., "output": full-resolution logits}``.
    """

    uses: frozenset[Kind] = frozenset()
    uses_unlabelled: bool = False
    """True when the method learns from samples without any annotation (they are then included in training)."""
    unlabelled_entropy_weight: float = 0.0
    entropy_mode: str = "entropy"

    def configure_entropy(self, weight: float = 0.0, mode: str = "entropy") -> Method:
        """Add ``weight`` x (entropy or mutual-information) term on pixels without a dense label; returns self.

        Raises:
            ValueError: on a negative weight or an unknown mode.
        """
        if weight < 0:
            raise ValueError(f"method.unlabelled_entropy_weight must be >= 0, got {weight}")
        if mode not in ENTROPY_MODES:
            raise ValueError(f"method.entropy_mode must be one of {ENTROPY_MODES}, got {mode!r}")
        self.unlabelled_entropy_weight, self.entropy_mode = float(weight), mode
        if weight > 0:
            self.uses_unlabelled = True
        return self

    def add_entropy(self, terms: dict[str, torch.Tensor], logits: torch.Tensor, batch) -> dict[str, torch.Tensor]:
        """``terms`` with the configured entropy term added to ``terms["loss"]`` (unchanged when it is off).

        The term covers ``roi & ~valid``: every pixel of an unlabelled sample, and the unannotated pixels of
        weakly labelled ones.
        """
        if not self.unlabelled_entropy_weight:
            return terms
        mask = batch.roi & ~batch.valid
        if self.entropy_mode == "mi":
            t = mutual_information_loss(logits, mask=mask, batch=True)
        else:
            t = entropy_loss(logits, mask=mask)
        return {**terms, "loss": terms["loss"] + self.unlabelled_entropy_weight * t,
                "unlabelled_entropy": t.detach()}

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


def as_list(outputs) -> list[torch.Tensor]:
    """A network's output as a list of logits per scale (full resolution first)."""
    return [outputs] if isinstance(outputs, torch.Tensor) else list(outputs)


def sample_view(mask: torch.Tensor, ndim: int) -> torch.Tensor:
    """A (B,) per-sample flag reshaped to broadcast against (B, C, *S) tensors of ``ndim`` dimensions."""
    return mask.view(-1, *([1] * (ndim - 1)))


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
