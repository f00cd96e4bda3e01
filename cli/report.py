"""`transferkit report`: a static, offline HTML page with figures about the registry's experts."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from transferkit.cli.common import (
    JsonOption,
    RegistryOption,
    global_options,
    out,
    print_json,
    registry_from,
)


def register(app: typer.Typer) -> None:
    """Add the `report` command to the CLI."""
    app.command("report")(report_command)


def report_command(
    ctx: typer.Context,
    out_dir: Annotated[Path, typer.Option("--out", help="Folder for index.html and its PNGs (created if missing).")],
    registry_url: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write an offline HTML report: task similarity, gate weights, compare grids, training curves, cost."""
    from transferkit.report import build_report

    registry = registry_from(global_options(ctx, registry_url, None))
    result = build_report(registry, out_dir)
    if as_json:
        print_json(result.summary())
        return
    out.print(str(result.index))
    for section in result.sections:
        shown = "no data" if section.note else f"{len(section.figures)} figure(s)"
        out.print(f"  {section.title}: {shown}")
