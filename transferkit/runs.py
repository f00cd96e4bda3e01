"""What a team needs to know about a run that did not finish: can it be resumed, from where, and how.

`list --runs`, `inspect <run id>` and `gc` show this. A run is resumable when it ended `interrupted`
(stopped on a signal) or `failed`, or is still marked `running` although its process is gone; it
resumes from its latest checkpoint (or from the start if it left none). Cheap to import: no torch.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from transferkit.registry import RegistryStore, RunRecord
from transferkit.registry.liveness import DEFAULT_MAX_SILENCE, abandonment
from transferkit.training.checkpoint import StoredCheckpoint, list_checkpoints
from transferkit.training.interrupt import how_to_resume


@dataclass(frozen=True)
class RunState:
    run: RunRecord
    checkpoint: StoredCheckpoint | None  # the latest complete one
    resumable: bool
    note: str  # why it is (not) resumable, for people

    def to_dict(self) -> dict:
        checkpoint = self.checkpoint
        return {
            **self.run.to_dict(),
            "checkpoint": None if checkpoint is None else {"step": checkpoint.step, "path": str(checkpoint.path), "bytes": checkpoint.bytes},
            "resumable": self.resumable,
            "note": self.note,
        }


def run_state(registry: RegistryStore, run: RunRecord, max_silence: timedelta = DEFAULT_MAX_SILENCE) -> RunState:
    """Whether `run` can be resumed now, its latest checkpoint, and what to do."""
    checkpoints = list_checkpoints(registry.checkpoint_root / run.id)
    latest = checkpoints[-1] if checkpoints else None
    start = f"from its checkpoint at step {latest.step}" if latest else "from the start (no checkpoint)"
    resume = how_to_resume(run.command, spell_out=True)
    if run.status in ("interrupted", "failed"):
        return RunState(run, latest, True, f"resumable {start}; {resume}")
    if run.status == "running":
        gone = abandonment(run, max_silence)
        if gone is None:
            return RunState(run, latest, False, "running (its process is alive)")
        return RunState(run, latest, True, f"{gone}: resumable {start}; {resume}")
    return RunState(run, latest, False, "finished: its expert is stored")
