"""Reading files that came from somebody else, before anything trusts them.

Nothing here extracts to disk or unpickles. Archive members are read into
memory only after their names, types and sizes pass; folder files must be
regular files; JSON has a size cap; a safetensors file's header is parsed and
checked by hand (size, dtypes, shapes, offsets that exactly tile the data)
before the tensors are decoded, and the values must be finite. Every refusal
is an `InvalidInputError` whose message names the file and what is wrong.
"""

from __future__ import annotations

import json
import math
import re
import stat
import struct
import tarfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import torch

from transferkit.errors import InvalidInputError

# safetensors dtype -> (torch dtype, bytes per element). Experts are floating point; anything else is refused.
SAFETENSORS_DTYPES: dict[str, tuple[torch.dtype, int]] = {
    "F64": (torch.float64, 8),
    "F32": (torch.float32, 4),
    "F16": (torch.float16, 2),
    "BF16": (torch.bfloat16, 2),
}
_MAX_HEADER_BYTES = 16 * 2**20
_MEMBER_NAME = re.compile(r"^[A-Za-z0-9._-]+(/[A-Za-z0-9._-]+)*$")


@dataclass(frozen=True)
class ImportLimits:
    """Upper bounds on what `import` reads (docs/interop.md, "Untrusted input"): an archive or folder over them is refused."""

    max_file_bytes: int = 256 * 2**20
    max_total_bytes: int = 1024 * 2**20
    max_files: int = 1000
    max_json_bytes: int = 16 * 2**20


DEFAULT_LIMITS = ImportLimits()


def check_member_name(name: str, where: str) -> str:
    """A relative POSIX path of plain segments; refuses absolute paths, `..`, backslashes, drive letters, control bytes."""
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not _MEMBER_NAME.match(str(path)) or str(path) in (".", ""):
        raise InvalidInputError(
            f"{where} contains the entry {name!r}, which is not a plain relative path (absolute paths, '..' and "
            "special characters are refused); the archive is unsafe or damaged"
        )
    return str(path)


def read_archive(path: Path, limits: ImportLimits = DEFAULT_LIMITS) -> dict[str, bytes]:
    """Every regular file of a tar archive (plain or compressed) by name, read into memory after the checks."""
    files: dict[str, bytes] = {}
    total = 0
    try:
        with tarfile.open(path, mode="r:*") as archive:
            for count, member in enumerate(archive, start=1):
                if count > limits.max_files:
                    raise InvalidInputError(f"archive {path} has more than {limits.max_files} entries; refused")
                name = check_member_name(member.name, f"archive {path}")
                if member.isdir():
                    continue
                if not member.isreg():
                    kind = "a symlink" if member.issym() else "a hardlink" if member.islnk() else "a special file"
                    raise InvalidInputError(
                        f"archive {path} entry {name!r} is {kind}; only regular files are accepted (links could point "
                        "outside the archive)"
                    )
                if name in files:
                    raise InvalidInputError(f"archive {path} contains {name!r} twice; refused")
                total += member.size
                _check_sizes(f"archive {path} entry {name!r}", member.size, total, limits)
                handle = archive.extractfile(member)
                data = handle.read(member.size + 1) if handle is not None else b""
                if len(data) != member.size:
                    raise InvalidInputError(f"archive {path} entry {name!r} is truncated; the archive is damaged")
                files[name] = data
    except (tarfile.TarError, EOFError, OSError, UnicodeDecodeError) as error:
        raise InvalidInputError(f"{path} is not a readable tar archive ({error}); pass a bundle written by `transferkit export`") from None
    return files


def read_folder_files(folder: Path, names: list[str], limits: ImportLimits = DEFAULT_LIMITS) -> dict[str, bytes]:
    """The files of `folder` with these names (those that exist), each a regular file within the limits.

    Links inside the folder are followed (a Hugging Face cache snapshot is made of them), but what they
    point at must be a regular file; a folder is the user's own, unlike an archive's entries.
    """
    files: dict[str, bytes] = {}
    total = 0
    for name in names:
        path = folder / name
        try:
            info = path.stat()
        except FileNotFoundError:
            continue
        except OSError as error:
            raise InvalidInputError(f"cannot read {path} ({error.strerror or error})") from None
        if not stat.S_ISREG(info.st_mode):
            raise InvalidInputError(f"{path} is not a regular file; refused")
        total += info.st_size
        _check_sizes(str(path), info.st_size, total, limits)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise InvalidInputError(f"cannot read {path} ({error.strerror or error})") from None
        if len(data) != info.st_size:
            raise InvalidInputError(f"{path} changed while it was read; try again")
        files[name] = data
    return files


def _check_sizes(what: str, size: int, total: int, limits: ImportLimits) -> None:
    if size > limits.max_file_bytes:
        raise InvalidInputError(f"{what} is {size:,} bytes, over the {limits.max_file_bytes:,}-byte limit per file; refused")
    if total > limits.max_total_bytes:
        raise InvalidInputError(f"{what} brings the import over the {limits.max_total_bytes:,}-byte total limit; refused")


def parse_json(data: bytes, what: str, limits: ImportLimits = DEFAULT_LIMITS) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, bounded size and nesting."""
    if len(data) > limits.max_json_bytes:
        raise InvalidInputError(f"{what} is {len(data):,} bytes, over the {limits.max_json_bytes:,}-byte limit for JSON; refused")

    def refuse_constant(token: str) -> None:
        raise ValueError(f"non-standard JSON value {token}")

    try:
        return json.loads(data.decode("utf-8"), parse_constant=refuse_constant)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise InvalidInputError(f"{what} is not valid JSON ({str(error)[:120]})") from None


def load_safetensors(data: bytes, what: str) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and metadata of a safetensors file whose header passed `check_safetensors_header`; values must be finite."""
    import safetensors.torch

    _, metadata = check_safetensors_header(data, what)
    try:
        tensors = safetensors.torch.load(data)
    except Exception as error:  # noqa: BLE001 - safetensors raises several unrelated types
        raise InvalidInputError(f"{what} is not a readable safetensors file ({str(error)[:120]})") from None
    for name, tensor in tensors.items():
        if not torch.isfinite(tensor).all():
            raise InvalidInputError(f"{what}: tensor {name} holds NaN or infinite values; refused")
    return tensors, metadata


def check_safetensors_header(data: bytes, what: str) -> tuple[dict[str, dict], dict[str, str]]:
    """The tensor entries and metadata of a safetensors header, refusing anything malformed or truncated."""
    if len(data) < 8:
        raise InvalidInputError(f"{what} is {len(data)} bytes, too short for a safetensors file (truncated?)")
    (length,) = struct.unpack("<Q", data[:8])
    if length > min(_MAX_HEADER_BYTES, len(data) - 8):
        raise InvalidInputError(f"{what}: the safetensors header claims {length:,} bytes, more than the file holds (truncated?)")
    header = parse_json(data[8 : 8 + length], f"{what} (safetensors header)")
    if not isinstance(header, dict):
        raise InvalidInputError(f"{what}: the safetensors header is not a JSON object")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise InvalidInputError(f"{what}: safetensors metadata must map strings to strings")
    spans = []
    for name, entry in header.items():
        if not isinstance(entry, dict) or set(entry) != {"dtype", "shape", "data_offsets"}:
            raise InvalidInputError(f"{what}: tensor entry {name!r} is malformed")
        dtype, shape, offsets = entry["dtype"], entry["shape"], entry["data_offsets"]
        if dtype not in SAFETENSORS_DTYPES:
            raise InvalidInputError(
                f"{what}: tensor {name!r} has dtype {dtype!r}; experts are floating point ({', '.join(SAFETENSORS_DTYPES)})"
            )
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise InvalidInputError(f"{what}: tensor {name!r} has an invalid shape {shape!r}")
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(isinstance(o, int) for o in offsets)):
            raise InvalidInputError(f"{what}: tensor {name!r} has invalid data offsets {offsets!r}")
        if offsets[1] - offsets[0] != math.prod(shape) * SAFETENSORS_DTYPES[dtype][1]:
            raise InvalidInputError(f"{what}: tensor {name!r} of shape {shape} does not fill its {offsets[1] - offsets[0]} data bytes")
        spans.append((offsets[0], offsets[1], name))
    position = 0
    for start, end, name in sorted(spans):
        if start != position:
            raise InvalidInputError(f"{what}: tensor {name!r} overlaps another or leaves a gap; the file is malformed")
        position = end
    if position != len(data) - 8 - length:
        raise InvalidInputError(
            f"{what}: the header describes {position:,} data bytes but the file holds {len(data) - 8 - length:,} (truncated?)"
        )
    return header, metadata
