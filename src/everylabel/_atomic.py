"""Atomic file writes: every file everylabel writes (checkpoints, predictions, reports, results) goes to a temporary
name beside its destination and is moved into place with :func:`os.replace`, so a crash or kill never leaves a
half-written file under the final name, and a concurrent reader sees either the old file or the new one.

Temporary names start with a dot. Permissions follow the umask (``tempfile.mkstemp`` would leave 0600), so
collaborators can read a shared results folder.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable
from pathlib import Path

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp)`` on a temporary path beside ``path`` (same suffix, so format-sniffing writers work), then
    move it into place; the temporary file is removed on any error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes[-2:]) if path.name.endswith(".nii.gz") else path.suffix
    tmp = path.parent / f".{path.stem}.{uuid.uuid4().hex[:12]}.tmp{suffix}"
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` atomically, flushed to disk before the move."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())

    return atomic_write(path, write)


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` atomically (no newline translation)."""
    return atomic_write_bytes(path, text.encode("utf-8"))
