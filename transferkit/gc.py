"""`transferkit gc`: find, and with `apply` remove, what crashes and interruptions leave behind.

- **stale runs**: `running` runs whose process is gone (same host: the pid no longer exists or was
  reused), or that have been silent (no heartbeat) for longer than `older_than`. They are closed as
  `failed`, not deleted: the row records what was spent, and `--resume` can still continue them.
- **orphaned blobs**: files in the artifact store that no expert references (a crash between
  writing an expert's blob and committing its row) and temporary files of interrupted writes.
  Only those untouched for `BLOB_GRACE` are removed, under the registry's write lock, so an
  expert being stored at this moment never loses its blob.
- **stale checkpoints**: checkpoint folders of runs that finished (their expert is stored) or that
  the registry does not know, of failed runs untouched for longer than `older_than` (they could
  still be resumed until then), and temporary folders of interrupted checkpoint writes. An
  `interrupted` run's checkpoint (a stop signal wrote it to be resumed) is kept however old, unless
  `include_interrupted`.

The report also lists **resumable runs** (interrupted, failed or abandoned, with the checkpoint gc
keeps for them), so a team sees what can be continued and how; gc never changes them.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path

from transferkit.errors import OutputError
from transferkit.registry import LocalArtifactStore, RegistryStore
from transferkit.registry.liveness import abandonment, describe_duration
from transferkit.runs import run_state
from transferkit.training.checkpoint import list_checkpoints
from transferkit.training.interrupt import how_to_resume

BLOB_GRACE = timedelta(hours=1)
DEFAULT_OLDER_THAN = timedelta(hours=24)
KINDS = ("stale-run", "orphaned-blob", "stale-checkpoint", "resumable-run")


@dataclass(frozen=True)
class GcItem:
    kind: str  # one of KINDS
    target: str  # run id, artifact uri or checkpoint folder
    bytes: int
    reason: str


@dataclass
class GcReport:
    applied: bool
    items: list[GcItem] = field(default_factory=list)  # removed (applied) or to be removed (dry run)
    kept: list[GcItem] = field(default_factory=list)  # found but protected (too recent)
    resumable: list[GcItem] = field(default_factory=list)  # runs that can be resumed, with the checkpoint kept for them

    def to_dict(self) -> dict:
        return {
            "applied": self.applied,
            "items": [asdict(item) for item in self.items],
            "kept": [asdict(item) for item in self.kept],
            "resumable": [asdict(item) for item in self.resumable],
            "bytes": sum(item.bytes for item in self.items),
        }


def collect_garbage(
    registry: RegistryStore, *, apply: bool = False, older_than: timedelta = DEFAULT_OLDER_THAN, include_interrupted: bool = False
) -> GcReport:
    """What gc would remove (`apply=False`), or remove it and report what was removed; and what can be resumed."""
    report = GcReport(applied=apply)
    _stale_runs(registry, report, older_than)
    _orphaned_blobs(registry, report)
    _stale_checkpoints(registry, report, older_than, include_interrupted)
    _resumable_runs(registry, report, older_than)
    return report


def _stale_runs(registry: RegistryStore, report: GcReport, older_than: timedelta) -> None:
    for run in registry.list_runs(statuses=("running",)):
        reason = abandonment(run, older_than)
        if reason is not None and _act(report, lambda: registry.fail_abandoned_run(run.id, older_than)):
            report.items.append(GcItem("stale-run", run.id, 0, f"{run.kind} run {reason}: closed as failed"))


def _orphaned_blobs(registry: RegistryStore, report: GcReport) -> None:
    if not isinstance(registry.artifacts, LocalArtifactStore):
        report.kept.append(GcItem("orphaned-blob", registry.artifacts.url, 0,
                                  "blobs in a remote (fsspec) store are not scanned; list them with the storage's own tools"))
        return
    referenced = {expert.artifact_uri for expert in registry.list_experts()}
    now = time.time()
    candidates = []
    for blob in registry.artifacts.blobs():
        if blob.uri in referenced:
            continue
        what = "temporary file of an interrupted write" if blob.partial else "no expert references it"
        item = GcItem("orphaned-blob", blob.uri, blob.bytes, what)
        if now - blob.modified <= BLOB_GRACE.total_seconds():
            report.kept.append(GcItem(item.kind, item.target, item.bytes, f"{what}, but younger than the {describe_duration(BLOB_GRACE)} grace period"))
        else:
            candidates.append(item)
    removed = set(registry.remove_unreferenced_artifacts([c.target for c in candidates], BLOB_GRACE)) if report.applied else None
    report.items.extend(item for item in candidates if removed is None or item.target in removed)


def _stale_checkpoints(registry: RegistryStore, report: GcReport, older_than: timedelta, include_interrupted: bool) -> None:
    root = registry.checkpoint_root
    if not root.is_dir():
        return
    statuses = {run.id: run.status for run in registry.list_runs()}
    now = time.time()
    for folder in sorted(path for path in root.iterdir() if path.is_dir()):
        status = statuses.get(folder.name)
        checkpoints = list_checkpoints(folder)
        size = _size(folder)
        modified = max((c.modified for c in checkpoints), default=folder.stat().st_mtime)
        if status is None:
            reason = "its run is not in the registry"
        elif status == "finished":
            reason = "its run finished (the expert is stored)"
        elif status in (("failed", "interrupted") if include_interrupted else ("failed",)) and now - modified > older_than.total_seconds():
            ended = "was interrupted" if status == "interrupted" else "failed"
            reason = f"its run {ended} and it was last written {describe_duration(timedelta(seconds=now - modified))} ago"
        else:
            _interrupted_writes(folder, report, now)
            continue
        if _act(report, lambda: _remove_tree(folder)):
            report.items.append(GcItem("stale-checkpoint", str(folder), size, reason))


def _resumable_runs(registry: RegistryStore, report: GcReport, older_than: timedelta) -> None:
    """Unfinished runs `--resume` can continue, with the checkpoint gc keeps for them (listed, never changed)."""
    removed = {item.target for item in report.items if item.kind == "stale-checkpoint"}
    closing = {item.target for item in report.items if item.kind == "stale-run"}
    for run in registry.list_runs(statuses=("interrupted", "failed", "running")):
        state = run_state(registry, run, older_than)
        if not state.resumable and run.id not in closing:
            continue
        checkpoint = state.checkpoint if state.checkpoint is not None and str(state.checkpoint.path.parent) not in removed else None
        if run.status == "interrupted" or checkpoint is not None:
            where = f"checkpoint at step {checkpoint.step} in {checkpoint.path}" if checkpoint else "no checkpoint kept"
            report.resumable.append(GcItem("resumable-run", run.id, checkpoint.bytes if checkpoint else 0,
                                           f"{run.kind} run {run.status}; {where}; {how_to_resume(run.command, spell_out=True)}"))


def _interrupted_writes(folder: Path, report: GcReport, now: float) -> None:
    """Temporary folders a crash left inside a live run's checkpoint folder."""
    for temporary in sorted(folder.glob(".step-*.tmp")):
        if now - temporary.stat().st_mtime <= BLOB_GRACE.total_seconds():
            continue  # possibly being written right now
        item = GcItem("stale-checkpoint", str(temporary), _size(temporary), "temporary folder of an interrupted checkpoint write")
        if _act(report, lambda: _remove_tree(temporary)):
            report.items.append(item)


def _act(report: GcReport, action: Callable[[], object]) -> bool:
    """In a dry run, list the item; when applying, run the action and list the item only if it acted."""
    return not report.applied or bool(action())


def _remove_tree(path: Path) -> bool:
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return False
    except OSError as error:
        raise OutputError(f"cannot delete {path} ({error.strerror or error}); check the folder's permissions") from error
    return True


def _size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

