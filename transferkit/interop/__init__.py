"""Moving experts in and out of a registry: PEFT adapter folders, transferkit bundles, remotes.

`export_expert` writes an expert as a PEFT adapter folder (`peft_format`) or a bundle archive
(`bundle`); `import_path` takes either back (a folder is a PEFT adapter, a file a bundle); `push_expert`
and `pull_bundle` move bundles through a `remote`. Everything read from outside goes through
`untrusted` and is checked against its method and the backbone (`staging`) before the registry is touched.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from transferkit.backbone import load_backbone
from transferkit.errors import InvalidInputError
from transferkit.interop.bundle import BUNDLE_SUFFIX, export_bundle, import_bundle
from transferkit.interop.peft_format import export_peft, import_peft
from transferkit.interop.remote import check_bundle_name, open_remote
from transferkit.interop.untrusted import DEFAULT_LIMITS, ImportLimits
from transferkit.registry import ExpertRecord, RegistryStore

FORMATS = ("bundle", "peft")


def export_expert(
    registry: RegistryStore, expert: ExpertRecord, output_format: str, out: Path, *,
    with_sources: bool = False, model: str | None = None,
) -> dict[str, Any]:
    """Write `expert` as a bundle file or a PEFT adapter folder at `out`."""
    if output_format not in FORMATS:
        raise InvalidInputError(f"--format must be one of {', '.join(FORMATS)}, not {output_format!r}")
    if output_format == "bundle":
        return export_bundle(registry, expert, out, with_sources)
    if with_sources:
        raise InvalidInputError("--with-sources applies to --format bundle; a PEFT adapter holds one expert")
    return export_peft(registry, expert, load_backbone(model), out)


def import_path(
    registry: RegistryStore, path: Path, *, task: str | None = None, name: str | None = None, model: str | None = None,
    command: list[str], limits: ImportLimits = DEFAULT_LIMITS,
) -> dict[str, Any]:
    """Import a PEFT adapter folder or a bundle file into `registry`; nothing is written unless all of it checks out."""
    if path.is_dir():
        expert, source = import_peft(registry, path, task=task, name=name, model=model, command=command, limits=limits)
        return {"format": "peft", "path": str(path), "added": [{"id": expert.id, "name": expert.name}],
                "already_present": [], "imported_from": source}
    if not path.is_file():
        raise InvalidInputError(f"{path} is neither a folder (a PEFT adapter) nor a file (a bundle)")
    if task is not None or name is not None:
        raise InvalidInputError("--task and --name apply to PEFT adapters; a bundle restores its experts as recorded")
    return import_bundle(registry, path, model, limits)


def push_expert(
    registry: RegistryStore, expert: ExpertRecord, remote: str, *, name: str | None = None, with_sources: bool = False,
) -> dict[str, Any]:
    """Export `expert` as a bundle and upload it to `remote` under `name` (default: the expert's name)."""
    target = open_remote(remote)
    bundle_name = check_bundle_name(name or expert.name)
    with tempfile.TemporaryDirectory() as folder:
        archive = Path(folder) / f"{bundle_name}{BUNDLE_SUFFIX}"
        summary = export_bundle(registry, expert, archive, with_sources)
        location = target.push(archive, bundle_name)
    return {**summary, "path": location, "name": bundle_name}


def pull_bundle(registry: RegistryStore, remote: str, name: str, *, model: str | None = None) -> dict[str, Any]:
    """Download the bundle `name` from `remote` and import it."""
    return import_bundle(registry, open_remote(remote).fetch(name), model)
