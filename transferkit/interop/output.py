"""Writing exports: all or nothing, never over something that is already there."""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from transferkit.durable import write_failure
from transferkit.errors import OutputError


def write_new_folder(out: Path, files: dict[str, bytes]) -> None:
    """Create folder `out` holding exactly `files` (plain names): written beside it, then renamed into place."""
    if out.is_symlink() or (out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise OutputError(f"{out} already exists and is not an empty folder; pass a new --out")
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        for name, data in files.items():
            _write_synced(tmp / name, data)
        if out.exists():
            out.rmdir()  # empty, checked above
        os.replace(tmp, out)
    except OSError as error:
        needed = sum(len(data) for data in files.values())
        raise OutputError(f"cannot write {out} ({write_failure(error, out, needed)}); free disk space or pass a writable --out") from None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_new_file(out: Path, data: bytes) -> None:
    """Create file `out` with `data` atomically (temp file beside it, then rename); refuses an existing path."""
    if out.exists() or out.is_symlink():
        raise OutputError(f"{out} already exists; pass a new --out")
    tmp = out.parent / f".{out.name}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        _write_synced(tmp, data)
        os.replace(tmp, out)
    except OSError as error:
        raise OutputError(f"cannot write {out} ({write_failure(error, out, len(data))}); free disk space or pass a writable --out") from None
    finally:
        tmp.unlink(missing_ok=True)


def _write_synced(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o644)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
