"""Disk faults injected into every file write under one folder: a full disk at each point of a write, a read-only
file system, an I/O error on rename.

`DiskFault(root, kind)` patches the file-system calls Python code writes through (`open`, `os.open`, `os.fdopen`'s
`io.open`, `os.fsync`, `os.replace`, `os.rename`, `os.mkdir`) so that writes under `root` fail the way a kernel
fails them; everything elsewhere (the registry database, the data) is untouched. `hits` counts the faults
raised, so a test can prove its fault was really hit.
"""

from __future__ import annotations

import builtins
import errno
import io
import os
from pathlib import Path
from typing import Any

# kind -> (errno, where the write fails)
FAULTS = {
    "no-space-on-create": (errno.ENOSPC, "create"),  # creating the file or folder
    "no-space-mid-write": (errno.ENOSPC, "write"),  # half the bytes are on disk, then the disk is full
    "no-space-on-fsync": (errno.ENOSPC, "fsync"),  # delayed allocation: the data cannot be flushed
    "io-error-on-rename": (errno.EIO, "rename"),  # the final rename into place
    "read-only": (errno.EROFS, "readonly"),  # the file system was remounted read-only
}
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


class _HalfWriter:
    """A file whose writes stop halfway with ENOSPC (the first half really reaches the file)."""

    def __init__(self, handle: Any, fault: DiskFault) -> None:
        self._handle, self._fault = handle, fault

    def write(self, data: Any) -> int:
        half = len(data) // 2
        self._handle.write(data[:half])
        self._handle.flush()
        raise self._fault.error(getattr(self._handle, "name", "?"))

    def __enter__(self) -> _HalfWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self._handle.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._handle, name)


class DiskFault:
    def __init__(self, root: Path, kind: str, armed: bool = True) -> None:
        self.root = Path(root).resolve()
        self.number, self.where = FAULTS[kind]
        self.armed = armed  # a test may arm it later (e.g. after the first checkpoint)
        self.hits = 0
        self._fds: set[int] = set()
        self._saved: dict[tuple[Any, str], Any] = {}

    def error(self, path: object) -> OSError:
        self.hits += 1
        return OSError(self.number, os.strerror(self.number), str(path))

    def _mine(self, path: object) -> bool:
        if not self.armed or isinstance(path, int):
            return False
        try:
            return Path(os.path.abspath(os.fspath(path))).is_relative_to(self.root)
        except TypeError:
            return False

    def __enter__(self) -> DiskFault:
        real_open, real_os_open, real_fsync = builtins.open, os.open, os.fsync
        real_replace, real_rename, real_mkdir = os.replace, os.rename, os.mkdir

        def fault_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
            writing = any(flag in mode for flag in "wxa+")
            if isinstance(file, int) and file in self._fds and writing and self.where == "write":
                return _HalfWriter(real_open(file, mode, *args, **kwargs), self)
            if not (writing and self._mine(file)):
                return real_open(file, mode, *args, **kwargs)
            if self.where in ("create", "readonly"):
                raise self.error(file)
            handle = real_open(file, mode, *args, **kwargs)
            self._fds.add(handle.fileno())
            return _HalfWriter(handle, self) if self.where == "write" else handle

        def fault_os_open(path: Any, flags: int, *args: Any, **kwargs: Any) -> int:
            if flags & _WRITE_FLAGS and self._mine(path):
                if self.where in ("create", "readonly"):
                    raise self.error(path)
                fd = real_os_open(path, flags, *args, **kwargs)
                self._fds.add(fd)
                return fd
            return real_os_open(path, flags, *args, **kwargs)

        def fault_fsync(fd: Any) -> None:
            number = fd if isinstance(fd, int) else fd.fileno()
            if self.armed and self.where == "fsync" and number in self._fds:
                raise self.error(f"fd {number}")
            real_fsync(fd)

        def fault_move(real: Any) -> Any:
            def move(source: Any, target: Any, *args: Any, **kwargs: Any) -> None:
                if self.where in ("rename", "readonly") and (self._mine(source) or self._mine(target)):
                    raise self.error(target)
                real(source, target, *args, **kwargs)
            return move

        def fault_mkdir(path: Any, *args: Any, **kwargs: Any) -> None:
            if self.where in ("create", "readonly") and self._mine(path) and not os.path.exists(path):  # else EEXIST first
                raise self.error(path)
            real_mkdir(path, *args, **kwargs)

        for owner, name, replacement in (
            (builtins, "open", fault_open), (io, "open", fault_open), (os, "open", fault_os_open), (os, "fsync", fault_fsync),
            (os, "replace", fault_move(real_replace)), (os, "rename", fault_move(real_rename)), (os, "mkdir", fault_mkdir),
        ):
            self._saved[(owner, name)] = getattr(owner, name)
            setattr(owner, name, replacement)
        return self

    def __exit__(self, *exc: object) -> None:
        for (owner, name), original in self._saved.items():
            setattr(owner, name, original)


def files_under(root: Path) -> set[str]:
    """Every file under `root` (hidden ones too), relative: to compare before and after a failed write."""
    return {str(path.relative_to(root)) for path in root.rglob("*") if not path.is_dir()} if root.exists() else set()
