"""Content-addressed blob stores for expert artifacts, local or at any fsspec URL.

A blob's key is `sha256/<first 2 hex>/<sha256><suffix>` under the store's root.
`open_artifact_store(location)` picks the implementation:

- a plain path or a `file://` URL: `LocalArtifactStore`. URIs are stored relative to the
  root, so a registry folder can be moved or copied as a whole. Writes are atomic (temp
  file in the same folder, fsync, rename, fsync of the folders).
- any other fsspec URL (`s3://bucket/prefix`, `gs://...`, `memory://...`):
  `FsspecArtifactStore`. URIs are stored as absolute URLs, so every machine of a team
  reads a blob from where it was written, whatever its own `--artifacts` says. A blob is
  written to a temporary key and moved to its final key, so a crash never leaves a
  partial blob under its final name (object stores make a single put atomic anyway).

Either way a blob is written before its registry row commits and writing the same bytes
twice is a no-op. A blob whose row was never committed (a crash between the two) is a
harmless orphan; `transferkit gc` deletes orphans of a local store older than a grace
period, and reusing a blob refreshes its modification time so a blob about to be
referenced is never old. Readers verify the sha256 recorded in the registry (see the store).
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import json
import os
import struct
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path, PurePosixPath

from transferkit.durable import fsync_dir, size_text, write_durably, write_failure
from transferkit.errors import ArtifactCorruptError, RegistryError

ARTIFACTS_HINT = "free space or make it writable, or choose another store with --artifacts or TRANSFERKIT_ARTIFACTS"

BLOB_FOLDER = "sha256"


@dataclass(frozen=True)
class StoredBlob:
    """A file under the artifact root: a blob (`uri`), or a temporary file a crashed write left behind."""

    uri: str
    bytes: int
    modified: float  # seconds since the epoch
    partial: bool  # an interrupted write's temporary file, never referenced by any row

class ArtifactStore(abc.ABC):
    """Where expert blobs live, addressed by their sha256."""

    url: str  # the store's root, as given by the user (shown in messages)

    @abc.abstractmethod
    def put(self, data: bytes, suffix: str = ".safetensors") -> tuple[str, str, int]:
        """Store `data` atomically and return (uri, sha256 hex, size in bytes)."""

    @abc.abstractmethod
    def _read_key(self, uri: str) -> bytes:
        """The bytes of a URI relative to this store's root (raises if it is missing)."""

    @abc.abstractmethod
    def location(self, uri: str) -> str:
        """Where a URI's blob is, for messages."""

    def get(self, uri: str) -> bytes:
        """The stored bytes of a relative URI or an absolute fsspec URL (raises OSError or the backend's error)."""
        if _is_url(uri):
            import fsspec

            with fsspec.open(uri, "rb") as handle:
                return handle.read()
        return self._read_key(uri)


def open_artifact_store(location: str | Path) -> ArtifactStore:
    """A store for a local path, a `file://` URL or any other fsspec URL."""
    text = str(location)
    if not _is_url(text):
        return LocalArtifactStore(text)
    from fsspec.core import split_protocol

    protocol, path = split_protocol(text)
    if protocol in ("file", "local"):
        return LocalArtifactStore(path)
    return FsspecArtifactStore(text)


class LocalArtifactStore(ArtifactStore):
    """Blobs on the local file system, with URIs relative to the root."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        self.url = str(self.root)

    def put(self, data: bytes, suffix: str = ".safetensors") -> tuple[str, str, int]:
        digest = hashlib.sha256(data).hexdigest()
        uri = blob_key(digest, suffix)
        target = self.path(uri)
        try:
            if target.is_file() and target.read_bytes() == data:
                os.utime(target)  # about to be referenced again: not an old orphan for gc
                return uri, digest, len(data)
            target.parent.mkdir(parents=True, exist_ok=True)
            tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.tmp")
            try:
                write_durably(tmp, data)
                os.replace(tmp, target)
            finally:  # a failed or interrupted write leaves no partial file
                tmp.unlink(missing_ok=True)
            for folder in (target.parent, target.parent.parent, self.root):  # make the new names durable
                fsync_dir(folder)
        except OSError as error:
            raise RegistryError(
                f"cannot write the artifact {target} ({write_failure(error, target, len(data))}); nothing was stored; "
                f"{ARTIFACTS_HINT}"
            ) from error
        return uri, digest, len(data)

    def _read_key(self, uri: str) -> bytes:
        return self.path(uri).read_bytes()

    def location(self, uri: str) -> str:
        return uri if _is_url(uri) else str(self.path(uri))

    def blobs(self) -> Iterator[StoredBlob]:
        """Every file under the blob folder (blobs and leftover temporary files), in a stable order."""
        folder = self.root / BLOB_FOLDER
        if not folder.is_dir():
            return
        for path in sorted(folder.glob("*/*")):
            if path.is_file():
                stat = path.stat()
                uri = path.relative_to(self.root).as_posix()
                yield StoredBlob(uri, stat.st_size, stat.st_mtime, partial=path.name.startswith(".") and path.name.endswith(".tmp"))

    def remove(self, uri: str, min_age: timedelta) -> bool:
        """Delete the file at `uri` if it was last modified more than `min_age` ago; True if it was deleted."""
        path = self.path(uri)
        try:
            if time.time() - path.stat().st_mtime <= min_age.total_seconds():
                return False
            path.unlink()
        except FileNotFoundError:
            return False
        except OSError as error:
            raise RegistryError(f"cannot delete {path} ({error.strerror or error}); check the folder's permissions") from error
        return True

    def path(self, uri: str) -> Path:
        """Absolute path of a relative URI; refuses URIs that would escape the root."""
        return self.root.joinpath(*_relative_parts(uri, self.url))


class FsspecArtifactStore(ArtifactStore):
    """Blobs under any fsspec URL, with absolute URLs as URIs."""

    def __init__(self, url: str) -> None:
        from fsspec.core import url_to_fs

        self.url = url.rstrip("/")
        try:
            self.fs, self.root = url_to_fs(self.url)
        except (ImportError, ValueError) as error:
            raise RegistryError(
                f"cannot use the artifact store {self.url} ({error}); install the fsspec backend for that protocol "
                "(e.g. pip install 'transferkit[s3]' for s3://) or pass a local folder to --artifacts"
            ) from error
        self.root = self.root.rstrip("/")

    def put(self, data: bytes, suffix: str = ".safetensors") -> tuple[str, str, int]:
        digest = hashlib.sha256(data).hexdigest()
        key = blob_key(digest, suffix)
        target = f"{self.root}/{key}"
        temporary = f"{self.root}/tmp/{digest}.{uuid.uuid4().hex[:8]}"
        try:
            if self.fs.exists(target) and self.fs.cat_file(target) == data:
                return f"{self.url}/{key}", digest, len(data)
            self.fs.pipe_file(temporary, data)
            self.fs.mv(temporary, target)
        except Exception as error:  # noqa: BLE001 - backends raise OSError, botocore and aiohttp errors alike
            with contextlib.suppress(Exception):  # a partial temporary object, if the store kept one
                self.fs.rm(temporary)
            raise RegistryError(
                f"cannot write the artifact {self.url}/{key} ({_first_line(error)}; it needs {size_text(len(data))}); nothing was "
                f"stored; {ARTIFACTS_HINT}"
            ) from error
        return f"{self.url}/{key}", digest, len(data)

    def _read_key(self, uri: str) -> bytes:
        return self.fs.cat_file(f"{self.root}/{'/'.join(_relative_parts(uri, self.url))}")

    def location(self, uri: str) -> str:
        return uri if _is_url(uri) else f"{self.url}/{uri}"


def blob_key(digest: str, suffix: str) -> str:
    return f"{BLOB_FOLDER}/{digest[:2]}/{digest}{suffix}"


def canonical_safetensors(tensors: dict, metadata: dict[str, str] | None = None) -> bytes:
    """safetensors bytes that depend only on the tensors and metadata, so equal experts share one blob.

    safetensors writes its JSON header from hash maps, whose order changes from call to call: the same tensors
    saved twice gave different bytes, and so different content addresses. The header is rewritten with sorted
    keys and padded to 8 bytes as safetensors pads it; the offsets are relative to the data, which is unchanged.
    """
    import safetensors.torch

    data = safetensors.torch.save({k: t.detach().cpu().contiguous() for k, t in tensors.items()}, metadata)
    (length,) = struct.unpack("<Q", data[:8])
    header = json.dumps(json.loads(data[8 : 8 + length]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    return struct.pack("<Q", len(header)) + header + data[8 + length :]


def safetensors_metadata(data: bytes) -> dict[str, str]:
    """The `__metadata__` of a safetensors blob, read from its JSON header (8-byte little-endian length first)."""
    if len(data) < 8:
        raise ValueError("shorter than a safetensors header")
    (length,) = struct.unpack("<Q", data[:8])
    if length > len(data) - 8:
        raise ValueError("header length exceeds the file size")
    header = json.loads(data[8 : 8 + length])
    return dict(header.get("__metadata__") or {})


def _is_url(text: str) -> bool:
    return "://" in text


def _relative_parts(uri: str, root: str) -> tuple[str, ...]:
    relative = PurePosixPath(uri)
    if relative.is_absolute() or ".." in relative.parts or not relative.parts:
        raise ArtifactCorruptError(
            f"artifact uri {uri!r} does not point inside the artifact store {root}; "
            "the registry entry is damaged, re-train the expert"
        )
    return relative.parts


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]

