"""Shared test fixtures: where the real datasets live and how to skip (or, in CI, fail) without them."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[1] / ".." / "shared" / "data"
"""Real datasets, checked out beside the repository as ``../shared/data`` (never copied into it)."""


def _require(path: Path) -> Path:
    if not path.exists():
        message = f"real data not found at {path.resolve()}"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(f"{message}; CI must provide ../shared/data beside the repository")
        pytest.skip(message)
    return path


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; skips when absent, fails when absent and ``CI=true``."""
    return _require(SHARED_DATA)


@pytest.fixture(scope="session")
def shared_dataset(shared_data: Path) -> Callable[[str], Path]:
    """``shared_dataset("DRIVE")`` -> the dataset folder, with the same skip/fail rule."""
    return lambda name: _require(shared_data / name)
