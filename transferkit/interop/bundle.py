"""Bundles: one self-describing archive that moves experts between registries with ids and lineage intact.

A bundle is a gzipped tar of `transferkit-bundle.json` (the manifest) and `artifacts/<sha256>.safetensors`,
the experts' artifacts byte for byte. The manifest holds the registry's own records of every expert in it
(config, backbone fingerprint, metrics, artifact digest, created time), the runs that made them (command,
hyper-parameters, seed, code and package versions, data fingerprints, status, cost), their tasks
(description, spec, description embedding), the lineage edges into them, their stored evaluations (scores on
other tasks and files, with intervals and data fingerprints) and their curation (note, tags, aliases; on import a
note fills an empty one, tags are set, an alias that points at another expert there is left alone and reported).
`--with-sources` adds every ancestor, recursively. Bundles are reproducible: the same experts give the same bytes.

Import reads the archive in memory (see `untrusted`), checks every record's fields and types, every
artifact's digest and safetensors header, and rebuilds every expert on the backbone (method, config,
tensor names and shapes, a mixture's sources) before one transaction adds all of it. Lineage parents
must travel in the bundle or already be in the registry.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile
import typing
from dataclasses import MISSING, fields
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from transferkit.version import __version__
from transferkit.backbone import load_backbone
from transferkit.composition.pemt import MIXTURE_METHOD
from transferkit.errors import InvalidInputError, NotFoundError
from transferkit.interop.output import write_new_file
from transferkit.interop.staging import StagedExperts, check_expert
from transferkit.interop.untrusted import DEFAULT_LIMITS, ImportLimits, load_safetensors, parse_json, read_archive
from transferkit.methods.base import json_value_matches
from transferkit.registry import EvaluationRecord, ExpertCuration, ExpertRecord, LineageEdge, RegistryStore, RunRecord, TaskRecord
from transferkit.registry.curation import check_alias, check_tag

MANIFEST = "transferkit-bundle.json"
BUNDLE_FORMAT = "transferkit.bundle/1"
BUNDLE_SUFFIX = ".transferkit.tar.gz"
_ID = re.compile(r"^[A-Za-z0-9_-]{1,32}$")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def artifact_member(expert: ExpertRecord) -> str:
    return f"artifacts/{expert.artifact_sha256}.safetensors"


# export


def export_bundle(registry: RegistryStore, expert: ExpertRecord, out: Path, with_sources: bool) -> dict[str, Any]:
    """Write `expert` (and with `with_sources` all its ancestors) to the bundle file `out`."""
    chosen = [expert]
    if with_sources:
        ancestors = {edge.parent_id for edge in registry.lineage_graph(expert.id, "ancestors")}
        chosen += sorted((registry.get_expert(i) for i in ancestors), key=lambda e: (e.created_at, e.id))
    for record in chosen:
        if not _ID.match(record.id) or not _SHA256.match(record.artifact_sha256):
            raise InvalidInputError(f"expert {record.name} has an id or artifact digest that is not safe to put in an archive")
    included = {record.id for record in chosen}
    edges = [edge for record in chosen for edge in registry.lineage_edges(record.id)["parents"]]
    runs = {record.run_id: registry.get_run(record.run_id) for record in chosen}
    tasks = {record.task_name: registry.get_task(record.task_name) for record in chosen}
    manifest = {
        "format": BUNDLE_FORMAT,
        "transferkit": __version__,
        "roots": [expert.id],
        "with_sources": with_sources,
        "tasks": [task.to_dict() for _, task in sorted(tasks.items()) if task is not None],
        "runs": [run.to_dict() for _, run in sorted(runs.items())],
        "experts": [record.to_dict() for record in chosen],
        "lineage": [edge.to_dict() for edge in edges],
        "curation": [curation.to_dict() for curation in registry.curations([record.id for record in chosen]).values()],
        "evaluations": [
            evaluation.to_dict()
            for record in chosen
            for evaluation in sorted(registry.list_evaluations(expert_id=record.id), key=lambda e: (e.created_at, e.id))
        ],
    }
    members = {MANIFEST: _json_bytes(manifest)}
    members.update({artifact_member(record): registry.read_artifact(record) for record in chosen})
    write_new_file(out, _tar_gz(members))
    outside = sorted({edge.parent_id for edge in edges} - included)
    return {
        "format": "bundle",
        "path": str(out),
        "experts": [{"id": record.id, "name": record.name} for record in chosen],
        "parents_not_included": outside,
    }


def _json_bytes(data: Any) -> bytes:
    import json

    # Keys keep the registry's order (no sort_keys), so restored records print exactly as the originals do.
    return (json.dumps(data, indent=2) + "\n").encode()


def _tar_gz(members: dict[str, bytes]) -> bytes:
    """A gzipped tar of regular files with fixed times and owners, so equal content gives equal bytes."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, 0
            archive.addfile(info, io.BytesIO(data))
    packed = io.BytesIO()
    with gzip.GzipFile(fileobj=packed, mode="wb", mtime=0) as compressed:
        compressed.write(raw.getvalue())
    return packed.getvalue()


# import


def read_bundle(path: Path, limits: ImportLimits = DEFAULT_LIMITS) -> tuple[dict, dict[str, bytes]]:
    """The checked manifest records and the artifact bytes by expert id; nothing else may be in the archive."""
    files = read_archive(path, limits)
    if MANIFEST not in files:
        raise InvalidInputError(f"{path} is not a transferkit bundle (no {MANIFEST}); pass a file written by `transferkit export --format bundle`")
    manifest = parse_json(files[MANIFEST], f"{path}:{MANIFEST}", limits)
    if not isinstance(manifest, dict) or manifest.get("format") != BUNDLE_FORMAT:
        raise InvalidInputError(f"{path} is not a {BUNDLE_FORMAT} bundle (format {manifest.get('format') if isinstance(manifest, dict) else None!r})")
    where = f"bundle {path}"
    records = {
        "tasks": [_record(TaskRecord, item, where) for item in _list(manifest, "tasks", where)],
        "runs": [_record(RunRecord, item, where) for item in _list(manifest, "runs", where)],
        "experts": [_record(ExpertRecord, item, where) for item in _list(manifest, "experts", where)],
        "lineage": [_record(LineageEdge, item, where) for item in _list(manifest, "lineage", where)],
        # Bundles written before curation travelled have none.
        "curation": [_curation(item, where) for item in (_list(manifest, "curation", where) if "curation" in manifest else [])],
        # ... and before evaluations did, none.
        "evaluations": [
            _record(EvaluationRecord, item, where) for item in (_list(manifest, "evaluations", where) if "evaluations" in manifest else [])
        ],
    }
    experts: list[ExpertRecord] = records["experts"]
    if not experts:
        raise InvalidInputError(f"{where} holds no experts")
    for expert in experts:
        if not _ID.match(expert.id) or not _ID.match(expert.run_id) or not _SHA256.match(expert.artifact_sha256):
            raise InvalidInputError(f"{where}: expert {expert.name!r} has a malformed id, run id or artifact digest")
        if expert.artifact_uri != f"sha256/{expert.artifact_sha256[:2]}/{expert.artifact_sha256}.safetensors":
            raise InvalidInputError(f"{where}: expert {expert.name} has artifact uri {expert.artifact_uri!r}, not its content address")
    _require_unique(where, "expert", [e.id for e in experts])
    _require_unique(where, "run", [r.id for r in records["runs"]])
    _require_unique(where, "task", [t.name for t in records["tasks"]])
    expected = {MANIFEST} | {artifact_member(e) for e in experts}
    unexpected = sorted(set(files) - expected)
    if unexpected:
        raise InvalidInputError(
            f"{where} has an unexpected entry {unexpected[0]!r}; a bundle holds only its manifest and safetensors "
            "artifacts, and nothing else is ever read"
        )
    blobs = {}
    for expert in experts:
        data = files.get(artifact_member(expert))
        if data is None:
            raise InvalidInputError(f"{where} lacks the artifact of expert {expert.name} ({artifact_member(expert)})")
        if hashlib.sha256(data).hexdigest() != expert.artifact_sha256 or len(data) != expert.artifact_bytes:
            raise InvalidInputError(f"{where}: the artifact of expert {expert.name} does not match its recorded sha256; the bundle was altered or damaged")
        blobs[expert.id] = data
    runs, tasks = {r.id for r in records["runs"]}, {t.name for t in records["tasks"]}
    for expert in experts:
        if expert.run_id not in runs or expert.task_name not in tasks:
            raise InvalidInputError(f"{where}: expert {expert.name} refers to a run or task the bundle does not describe")
    unused = sorted(runs - {e.run_id for e in experts}) + sorted(tasks - {e.task_name for e in experts})
    if unused:
        raise InvalidInputError(f"{where} describes {unused[0]!r}, which none of its experts uses")
    inside = {e.id for e in experts}
    _require_unique(where, "expert's curation", [c.expert_id for c in records["curation"]])
    if any(c.expert_id not in inside for c in records["curation"]):
        raise InvalidInputError(f"{where} has curation for an expert that is not in the bundle")
    _require_unique(where, "evaluation", [e.id for e in records["evaluations"]])
    for evaluation in records["evaluations"]:
        if evaluation.expert_id not in inside or not _ID.match(evaluation.id):
            raise InvalidInputError(f"{where} has evaluation {evaluation.id!r} of an expert that is not in the bundle, or a malformed id")
    for edge in records["lineage"]:
        if edge.child_id not in inside:
            raise InvalidInputError(f"{where} has a lineage edge into {edge.child_id}, which is not in the bundle")
    for expert in experts:  # a mixture's source edges are its sources, no more and no fewer
        if expert.method == MIXTURE_METHOD:
            sources = {e.parent_id for e in records["lineage"] if e.child_id == expert.id and e.role == "source"}
            if sources != set(expert.config.get("sources") or []):
                raise InvalidInputError(f"{where}: the lineage of mixture {expert.name} does not name the sources in its config")
    return records, blobs


def import_bundle(
    registry: RegistryStore, path: Path, model: str | None, limits: ImportLimits = DEFAULT_LIMITS
) -> dict[str, Any]:
    """Restore a bundle into `registry` as recorded (same ids, names, runs, cost, lineage); checks all before writing.

    `model` is the backbone the experts are rebuilt on (default: the packaged MiniLM); it must be the one they were trained on.
    """
    records, blobs = read_bundle(path, limits)
    experts: list[ExpertRecord] = records["experts"]
    inside = {e.id for e in experts}
    outside = sorted({edge.parent_id for edge in records["lineage"]} - inside)
    missing = [parent for parent in outside if not _stored(registry, parent)]
    if missing:
        raise NotFoundError(
            f"bundle {path} needs lineage parent expert(s) {', '.join(missing)}, which are neither in it nor in this registry; "
            "export it again with --with-sources"
        )
    backbone = load_backbone(model)
    staged = StagedExperts(fallback=registry)
    for expert in experts:
        tensors, metadata = load_safetensors(blobs[expert.id], f"bundle {path}: artifact of expert {expert.name}")
        staged.add(expert, tensors, metadata)
    for expert in experts:
        check_expert(staged, expert, backbone)
    taken = registry.list_aliases()
    skipped = sorted(a for c in records["curation"] for a in c.aliases if taken.get(a, c.expert_id) != c.expert_id)
    added = registry.restore(
        records["tasks"], records["runs"], [(e, blobs[e.id]) for e in experts], records["lineage"], records["curation"],
        records["evaluations"],
    )
    added_ids = {e.id for e in added}
    return {
        "format": "bundle",
        "path": str(path),
        "added": [{"id": e.id, "name": e.name} for e in added],
        "already_present": [{"id": e.id, "name": e.name} for e in experts if e.id not in added_ids],
        "aliases_not_moved": skipped,  # they point at other experts here; `transferkit alias set` moves them
    }


def _stored(registry: RegistryStore, expert_id: str) -> bool:
    try:
        return registry.get_expert(expert_id).id == expert_id
    except (NotFoundError, InvalidInputError):
        return False


def _list(manifest: dict, key: str, where: str) -> list:
    value = manifest.get(key)
    if not isinstance(value, list):
        raise InvalidInputError(f"{where}: manifest field {key!r} must be a list")
    return value


def _require_unique(where: str, what: str, keys: list[str]) -> None:
    if len(set(keys)) != len(keys):
        raise InvalidInputError(f"{where} describes the same {what} twice")


def _record(cls: type, data: Any, where: str) -> Any:
    """A registry entity from its `to_dict()` form, refusing missing, extra or mistyped fields."""
    names = [f.name for f in fields(cls)]
    # Fields added later have defaults: a bundle written before them lacks them and still imports.
    required = {f.name for f in fields(cls) if f.default is MISSING and f.default_factory is MISSING}
    if not isinstance(data, dict) or not required <= set(data) <= set(names):
        found = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise InvalidInputError(f"{where}: a {cls.__name__} record has fields {found}, expected {sorted(names)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for name in (name for name in names if name in data):
        value, annotation = data[name], hints[name]
        if datetime in (annotation, *typing.get_args(annotation)) and isinstance(value, str):
            value = _timestamp(value, f"{where}: {cls.__name__}.{name}")
        elif not json_value_matches(value, annotation):
            raise InvalidInputError(f"{where}: {cls.__name__}.{name} has the wrong type ({str(value)[:60]!r})")
        values[name] = value
    return cls(**values)


def _curation(data: Any, where: str) -> ExpertCuration:
    """A note/tags/aliases record: strings only (tags a str -> str object)."""
    fields_ok = isinstance(data, dict) and set(data) == {"expert_id", "note", "tags", "aliases"}
    if not fields_ok or not isinstance(data["expert_id"], str) or not isinstance(data["note"], (str, type(None))):
        raise InvalidInputError(f"{where}: a curation record must have expert_id, note, tags and aliases")
    tags, aliases = data["tags"], data["aliases"]
    if not isinstance(tags, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tags.items()):
        raise InvalidInputError(f"{where}: the tags of expert {data['expert_id']!r} must map text keys to text values")
    if not isinstance(aliases, list) or not all(isinstance(a, str) for a in aliases):
        raise InvalidInputError(f"{where}: the aliases of expert {data['expert_id']!r} must be a list of text")
    for key, value in tags.items():
        check_tag(key, value)
    for alias in aliases:
        check_alias(alias)
    return ExpertCuration(data["expert_id"], data["note"], dict(tags), list(aliases))


def _timestamp(text: str, what: str) -> datetime:
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInputError(f"{what} is not an ISO 8601 time ({text[:40]!r})") from None
    if value.tzinfo is None:
        raise InvalidInputError(f"{what} has no time zone ({text[:40]!r})")
    return value.astimezone(timezone.utc)
