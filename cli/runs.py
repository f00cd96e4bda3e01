"""`list --runs` and `inspect <run id>`: runs with their status, and for unfinished ones what can be resumed and how."""

from __future__ import annotations

import json
from datetime import datetime

from rich.table import Table
from transferkit.cli.common import compact_json, out, print_json

from transferkit.durable import size_text
from transferkit.errors import InvalidInputError, NotFoundError
from transferkit.registry import RUN_STATUSES, RegistryStore, RunRecord
from transferkit.runs import RunState, run_state


def list_runs(registry: RegistryStore, status: str | None, limit: int, offset: int, as_json: bool) -> None:
    """One page of runs, newest first, optionally of one status."""
    if status is not None and status not in RUN_STATUSES:
        raise InvalidInputError(f"--status must be one of {', '.join(RUN_STATUSES)}, got {status!r}")
    states = [run_state(registry, run) for run in registry.list_runs(statuses=None if status is None else [status], limit=limit, offset=offset)]
    if as_json:
        print_json([state.to_dict() for state in states])
        return
    table = Table(title=f"runs ({len(states)}{'' if status is None else ' ' + status}, newest first)")
    for column in ("id", "kind", "status", "started", "last heartbeat", "checkpoint", "resume"):
        table.add_column(column, overflow="fold")
    for state in states:
        run = state.run
        table.add_row(run.id, run.kind, run.status, _time(run.started_at), _time(run.heartbeat_at), _checkpoint(state),
                      state.note if state.resumable else "-")
    out.print(table)


def find_run(registry: RegistryStore, run_id: str) -> RunRecord | None:
    """The run with this exact id, or None."""
    try:
        return registry.get_run(run_id)
    except NotFoundError:
        return None


def inspect_run(registry: RegistryStore, run: RunRecord, as_json: bool) -> None:
    """Everything the registry records about one run, and whether and how it can be resumed."""
    state = run_state(registry, run)
    if as_json:
        print_json(state.to_dict())
        return
    table = Table(title=f"run {run.id}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    rows = [
        ("kind", run.kind),
        ("status", run.status + (f": {run.error}" if run.error else "")),
        ("command", " ".join(run.command)),
        ("started", _time(run.started_at)),
        ("last heartbeat", _time(run.heartbeat_at)),
        ("ended", _time(run.ended_at)),
        ("process", f"{run.pid} on {run.host}" if run.pid is not None else "-"),
        ("checkpoint", _checkpoint(state) + (f" in {state.checkpoint.path}" if state.checkpoint else "")),
        ("resume", state.note),
        ("hyper-parameters", compact_json(run.hyperparams)),
        ("cost", json.dumps(run.cost)),
    ]
    for key, value in rows:
        table.add_row(key, value)
    out.print(table)


def _checkpoint(state: RunState) -> str:
    checkpoint = state.checkpoint
    return "-" if checkpoint is None else f"step {checkpoint.step} ({size_text(checkpoint.bytes)})"


def _time(value: datetime | None) -> str:
    return "-" if value is None else f"{value:%Y-%m-%d %H:%M:%S}"
