"""Durable file writes: data and the names that point at it survive a crash once these return.

Callers write new files beside their final name and rename them into place, removing the temporary
file on any failure, so a write that fails (a full disk, a read-only file system, an I/O error)
leaves no partial file. `write_failure` words such an error for the user: the reason, the space the
write needed and what is free there.
"""

from __future__ import annotations

import os
import shutil
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


def free_bytes(path: Path) -> int | None:
    """Free space on the file system holding `path` (or its nearest existing parent); None if it cannot be read."""
    for candidate in (path, *path.parents):
        try:
            return shutil.disk_usage(candidate).free
        except OSError:
            continue
    return None


def size_text(count: int) -> str:
    """A byte count for people: `812 bytes`, `10.6 KiB`, `3.2 MiB`, `1.5 GiB`."""
    if count < 1024:
        return f"{count} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB"):
        count /= 1024
        if count < 1024 or unit == "TiB":
            return f"{count:.1f} {unit}"
    raise AssertionError("unreachable")


def write_failure(error: OSError, path: Path, needed: int) -> str:
    """Why writing `needed` bytes at `path` failed, for a one-line message: the reason, the space needed and free."""
    reason = error.strerror or str(error) or type(error).__name__
    free = free_bytes(path)
    space = f"it needs {size_text(needed)}" + (f", {size_text(free)} free there" if free is not None else "")
    return f"{reason}; {space}"
