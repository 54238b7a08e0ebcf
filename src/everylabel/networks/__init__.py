"""Segmentation networks, picked by name from :data:`NETWORKS`."""

from __future__ import annotations

from typing import Any

from torch import nn

from everylabel.networks.unet import UNet

__all__ = ["NETWORKS", "UNet", "build_network"]

NETWORKS: dict[str, type[nn.Module]] = {"unet": UNet}


def build_network(name: str, **kwargs: Any) -> nn.Module:
    """Instantiate the network registered under ``name`` with ``kwargs``.

    Args:
        name: a key of :data:`NETWORKS` (case-sensitive).
        **kwargs: constructor arguments of that network.

    Returns:
        The network.

    Example:
        >>> net = build_network("unet", spatial_dims=2, in_channels=1, out_channels=2)
    """
    if name not in NETWORKS:
        raise ValueError(f"Unknown network {name!r}; valid names are: {', '.join(sorted(NETWORKS))}.")
    return NETWORKS[name](**kwargs)
