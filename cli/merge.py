"""`transferkit merge`: collapse a mixture with input-independent gate weights into one self-contained expert."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from transferkit.cli.common import JsonOption, registry_from, out, print_json
from transferkit.cli.options import STORE, StoreOptions, store_options, with_options


def register(app: typer.Typer) -> None:
    """Add the `merge` command to the CLI."""
    app.command("merge")(merge_command)


@with_options(locations=STORE)
def merge_command(
    ctx: typer.Context,
    expert: Annotated[str, typer.Argument(help="A pemt (trained with --gate-input task) or average expert: id, id prefix or name.")],
    name: Annotated[Optional[str], typer.Option(help="Name of the merged expert (default: <expert>-merged).")] = None,
    locations: StoreOptions = None,
    as_json: JsonOption = False,
) -> None:
    """Merge a mixture's sources into one expert of their method; checks its outputs against the mixture on dev."""
    from transferkit.composition.merge import merge_expert

    options = store_options(ctx, locations)
    registry = registry_from(options)
    merged, difference = merge_expert(
        registry, expert, data_dir=options.data_dir, name=name, command=["transferkit", *sys.argv[1:]]
    )
    if as_json:
        print_json({"expert": {"id": merged.id, "name": merged.name, "method": merged.method, "config": merged.config,
                               "metrics": merged.metrics, "trainable_params": merged.trainable_params},
                    "max_logit_difference": difference})
        return
    source = merged.config["source_method"]
    out.print(
        f"stored merged expert [bold]{merged.name}[/] (id {merged.id}): the sources as one {source} expert "
        f"({merged.config['source_config']}); largest dev logit difference to the mixture {difference:.2e}; "
        f"test {merged.metrics.get('primary')} {merged.metrics['test'].get(merged.metrics.get('primary'))}"
    )
