"""`transferkit gc`: stale runs, orphaned blobs and stale checkpoints; a dry run unless `--apply`."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

import typer
from rich.table import Table
from transferkit.cli.common import JsonOption, RegistryOption, err, global_options, out, print_json, registry_from

from transferkit.errors import InvalidInputError


MAX_HOURS = 1_000_000  # about a century: beyond that a duration is not a threshold


def register(app: typer.Typer) -> None:
    """Add the `gc` command to the CLI."""
    app.command("gc")(gc_command)


def gc_command(
    ctx: typer.Context,
    apply: Annotated[bool, typer.Option("--apply", help="Remove what is listed (default: only list it).")] = False,
    older_than: Annotated[
        float,
        typer.Option(
            help="Hours: a running run silent for longer is stale (when its process cannot be checked), "
            "and a failed run's checkpoint untouched for longer is removed.",
        ),
    ] = 24.0,
    include_interrupted: Annotated[
        bool,
        typer.Option("--include-interrupted",
                     help="Also remove the checkpoints of interrupted runs untouched for --older-than hours "
                          "(by default they are kept: a stop signal wrote them to be resumed)."),
    ] = False,
    registry_url: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Close stale runs as failed and remove orphaned blobs and stale checkpoints (a dry run unless --apply);
    list the runs that can be resumed."""
    from transferkit.gc import BLOB_GRACE, collect_garbage
    from transferkit.registry.liveness import describe_duration

    if not 0 < older_than <= MAX_HOURS:  # nan fails both comparisons
        raise InvalidInputError(f"--older-than must be a positive number of hours up to {MAX_HOURS:,}, got {older_than}")
    registry = registry_from(global_options(ctx, registry_url, None))
    report = collect_garbage(registry, apply=apply, older_than=timedelta(hours=older_than), include_interrupted=include_interrupted)
    if as_json:
        print_json(report.to_dict())
        return
    verb = "removed" if apply else "would remove"
    table = Table(title=f"gc: {verb} {len(report.items)} item(s), {_size(sum(i.bytes for i in report.items))}")
    for column in ("kind", "what", "size", "why"):
        table.add_column(column, overflow="fold")
    for item in report.items:
        table.add_row(item.kind, item.target, _size(item.bytes) if item.bytes else "-", item.reason)
    out.print(table)
    if report.resumable:
        resumable = Table(title=f"resumable runs ({len(report.resumable)}): their checkpoints are kept")
        for column in ("run", "checkpoint size", "state and how to resume"):
            resumable.add_column(column, overflow="fold")
        for item in report.resumable:
            resumable.add_row(item.target, _size(item.bytes) if item.bytes else "-", item.reason)
        out.print(resumable)
    if report.kept:
        err.print(f"kept {len(report.kept)} unreferenced blob(s) younger than the {describe_duration(BLOB_GRACE)} grace period", highlight=False)
    if not apply and report.items:
        err.print("dry run: nothing was changed; pass --apply to do it", highlight=False)


def _size(count: int) -> str:
    return f"{count / 2**20:.1f} MiB" if count >= 2**20 else f"{count / 2**10:.1f} KiB"
