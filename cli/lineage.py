"""`transferkit lineage` and `transferkit reproduce`: where an expert came from, and doing it again."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer
from rich.table import Table

from transferkit.cli.common import (
    JsonOption,
    RegistryOption,
    global_options,
    registry_from,
    out,
    print_json,
)
from transferkit.cli.options import OUTPUT, STORE, OutputOptions, StoreOptions, store_options, with_options
from transferkit.errors import InvalidInputError

ExpertArgument = Annotated[str, typer.Argument(help="Expert id, id prefix or name.")]


def register(app: typer.Typer) -> None:
    """Add the `lineage` and `reproduce` commands to the CLI."""
    app.command("lineage")(lineage_command)
    app.command("reproduce")(reproduce_command)


def lineage_command(
    ctx: typer.Context,
    expert: ExpertArgument,
    output_format: Annotated[
        str, typer.Option("--format", help="tree (rich), dot (Graphviz) or mermaid (flowchart).")
    ] = "tree",
    descendants: Annotated[
        bool, typer.Option("--descendants", help="Show what was built from the expert instead of what it was built from.")
    ] = False,
    max_depth: Annotated[int, typer.Option(help="Follow at most this many edges from the expert.")] = 64,
    registry_url: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Sources of an expert, their sources, ...: data fingerprints, split protocol, backbone, code and package versions."""
    from transferkit.lineage import FORMATS, build_lineage

    if output_format not in FORMATS:
        raise InvalidInputError(f"--format must be one of {', '.join(FORMATS)}, not {output_format!r}")
    if as_json and output_format != "tree":
        raise InvalidInputError(f"--json and --format {output_format} each choose the output; give one of them")
    registry = registry_from(global_options(ctx, registry_url, None))
    graph = build_lineage(registry, registry.get_expert(expert), "descendants" if descendants else "ancestors", max_depth)
    if as_json:
        sys.stdout.write(graph.to_json() + "\n")
    elif output_format == "dot":
        sys.stdout.write(graph.to_dot())
    elif output_format == "mermaid":
        sys.stdout.write(graph.to_mermaid())
    else:
        out.print(graph.tree())


@with_options(locations=STORE, output=OUTPUT)
def reproduce_command(
    ctx: typer.Context,
    expert: ExpertArgument,
    name: Annotated[Optional[str], typer.Option(help="Name of the reproduction (default: <expert>-repro, made unique).")] = None,
    locations: StoreOptions = None,
    output: OutputOptions = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue an interrupted or failed reproduction (same --name) from its checkpoint.")
    ] = False,
) -> None:
    """Re-run the recorded job of an expert (same settings and seed) into the registry and compare its metrics."""
    from transferkit.reproduce import reproduce

    options = store_options(ctx, locations)
    registry = registry_from(options)
    result = reproduce(
        registry, expert, data_dir=options.data_dir, name=name, command=["transferkit", *sys.argv[1:]],
        show_progress=not output.quiet, resume=resume,
    )
    if output.as_json:
        print_json(result.to_dict())
        return
    table = Table(title=f"reproduction of {result.original.name} ({result.original.id}) as {result.expert.name} ({result.expert.id})")
    for column in ("split", "metric", "original", "reproduced", "difference"):
        table.add_column(column, justify="left" if column in ("split", "metric") else "right")
    for row in result.metrics:
        table.add_row(row["split"], row["metric"], f"{row['original']:.6f}", f"{row['reproduced']:.6f}", f"{row['difference']:+.2e}")
    out.print(table)
    weights = "bit-identical to" if result.same_weights else "different from"
    out.print(f"max |difference| {result.max_difference:.2e}; trained weights {weights} the original's", highlight=False)
    recorded, now = result.recorded_data.get("fingerprint"), result.data.get("fingerprint")
    if result.data_matches:
        out.print(f"data fingerprint matches the recorded one ({now})", highlight=False)
    else:
        out.print(
            f"[bold red]DATA DIFFERS from the recorded run[/]: fingerprint {now} now, {recorded} recorded "
            f"(splits {', '.join(result.data_differences) or 'none'} differ); metric differences may come from the data",
            highlight=False,
        )
    for change in result.environment:
        out.print(f"changed since the original run: {change['what']} {change['recorded']} -> {change['now']}",
                  markup=False, highlight=False)
