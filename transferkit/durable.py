"""Durable file writes: data and the names that point at it survive a crash once these return."""

from __future__ import annotations

import os
from pathlib import Path


def write_durably(path: Path, data: bytes) -> None:
    """Write `data` to a new file at `path` and flush it to disk."""
    with open(path, "xb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())


def fsync_dir(folder: Path) -> None:
    """Make the entries (new names, renames) of `folder` durable."""
    if os.name == "nt":  # directories cannot be opened for fsync on Windows; NTFS journals renames itself
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
