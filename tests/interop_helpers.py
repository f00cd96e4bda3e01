"""Helpers for the import/export tests: the exported model card's code, registry contents, bundles (also tampered ones)."""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import tarfile
from pathlib import Path

from sqlalchemy import create_engine, text

from transferkit.registry.rows import Base


def model_card_code(folder: Path) -> dict:
    """Run the Python block of an exported adapter's README.md as written; returns its namespace."""
    card = (folder / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", card, flags=re.S)
    assert len(blocks) == 1, "the model card has one code block"
    namespace: dict = {}
    exec(compile(blocks[0], str(folder / "README.md"), "exec"), namespace)  # noqa: S102 - our own generated file
    return namespace


def registry_snapshot(url: str) -> dict:
    """Every row of every table, and every file under the artifact folder with its sha256."""
    database = Path(url.removeprefix("sqlite:///"))
    engine = create_engine(url)
    with engine.connect() as connection:
        tables = {
            name: sorted(map(tuple, connection.execute(text(f"SELECT * FROM {name}")).all()), key=repr)
            for name in Base.metadata.tables
        }
    engine.dispose()
    artifacts = database.with_name(f"{database.stem}-artifacts")
    files = {
        str(p.relative_to(artifacts)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(artifacts.rglob("*")) if p.is_file()
    } if artifacts.exists() else {}
    return {"tables": tables, "files": files}


def copy_registry(url: str, folder: Path) -> str:
    """A copy of a SQLite registry (database and artifact folder) in `folder`, for tests that change it."""
    database = Path(url.removeprefix("sqlite:///"))
    folder.mkdir(parents=True, exist_ok=True)
    for part in (database, database.with_name(f"{database.name}-wal")):  # WAL mode: committed rows may still be in -wal
        if part.exists():
            shutil.copyfile(part, folder / part.name)
    shutil.copytree(database.with_name(f"{database.stem}-artifacts"), folder / f"{database.stem}-artifacts")
    return f"sqlite:///{folder / database.name}"


def cli_output(*args: str) -> str:
    """Run a command in-process (the same code as the console script) and return what it prints on stdout."""
    from typer.testing import CliRunner

    from transferkit.cli.app import app

    result = CliRunner().invoke(app, list(args))
    assert result.exit_code == 0, result.output
    return result.stdout



def bundle_members(path: Path) -> dict[str, bytes]:
    with tarfile.open(path, "r:gz") as archive:
        return {member.name: archive.extractfile(member).read() for member in archive if member.isfile()}


def write_tar(path: Path, entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> None:
    """A gzipped tar with exactly these entries (regular files carry data; links and others do not)."""
    with tarfile.open(path, "w:gz") as archive:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)


def file_entry(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def rewrite_bundle(source: Path, target: Path, *, change_tensors=None, change_bytes=None, change_record=None, extra=()) -> None:
    """Copy a one-expert bundle, altering its artifact and record as an attacker who also fixes every digest would."""
    import safetensors.torch

    from transferkit.registry.artifacts import safetensors_metadata

    members = bundle_members(source)
    manifest = json.loads(members.pop("transferkit-bundle.json"))
    (record,) = manifest["experts"]
    blob = members.pop(f"artifacts/{record['artifact_sha256']}.safetensors")
    if change_tensors is not None:
        tensors, metadata = safetensors.torch.load(blob), safetensors_metadata(blob)
        change_tensors(tensors, metadata)
        blob = safetensors.torch.save(tensors, metadata)
        record["trainable_params"] = sum(t.numel() for t in tensors.values())
    if change_bytes is not None:
        blob = change_bytes(blob)
    digest = hashlib.sha256(blob).hexdigest()
    record.update(artifact_sha256=digest, artifact_bytes=len(blob), artifact_uri=f"sha256/{digest[:2]}/{digest}.safetensors")
    if change_record is not None:
        change_record(record)
    entries = [file_entry("transferkit-bundle.json", json.dumps(manifest).encode()),
               file_entry(f"artifacts/{digest}.safetensors", blob), *extra]
    write_tar(target, entries)
