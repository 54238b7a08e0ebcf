"""everylabel: medical image segmentation that learns from every annotation a team can afford."""

from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
