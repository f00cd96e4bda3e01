"""`transferkit export`, `import`, `push` and `pull`: experts in and out of the registry (PEFT adapters, bundles)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from transferkit.cli.common import JsonOption, RegistryOption, global_options, out, print_json, registry_from

ExpertArgument = Annotated[str, typer.Argument(help="Expert id, id prefix or name.")]
BackboneOption = Annotated[
    Optional[str], typer.Option("--model", help="Backbone the experts belong to (default: packaged MiniLM; PEFT import: the adapter's base model).")
]
WithSourcesOption = Annotated[
    bool, typer.Option("--with-sources", help="Bundle the expert's sources too, recursively (a mixture needs them).")
]


def register(app: typer.Typer) -> None:
    """Add `export`, `import`, `push` and `pull` to the CLI."""
    app.command("export")(export_command)
    app.command("import")(import_command)
    app.command("push")(push_command)
    app.command("pull")(pull_command)


def export_command(
    ctx: typer.Context,
    expert: ExpertArgument,
    output: Annotated[Path, typer.Option("--out", help="Bundle file to create, or (peft) a new or empty folder.")],
    output_format: Annotated[str, typer.Option("--format", help="bundle (transferkit archive) or peft (PEFT adapter folder).")] = "bundle",
    with_sources: WithSourcesOption = False,
    model: BackboneOption = None,
    registry_url: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Write an expert as a self-describing bundle or as a PEFT adapter folder."""
    from transferkit.interop import export_expert

    registry = registry_from(global_options(ctx, registry_url, None))
    summary = export_expert(registry, registry.get_expert(expert), output_format, output, with_sources=with_sources, model=model)
    if as_json:
        print_json(summary)
        return
    names = ", ".join(f"{e['name']} ({e['id']})" for e in summary["experts"])
    out.print(f"wrote {summary['path']}: {output_format} of {names}", markup=False, highlight=False)
    if summary.get("parents_not_included"):
        out.print(
            f"lineage parents not included (the importing registry must have them): {', '.join(summary['parents_not_included'])}",
            markup=False, highlight=False,
        )
    if output_format == "peft":
        out.print(f"load it with the code in {output / 'README.md'}", markup=False, highlight=False)


def import_command(
    ctx: typer.Context,
    path: Annotated[Path, typer.Argument(help="A PEFT adapter folder or a transferkit bundle file.")],
    task: Annotated[Optional[str], typer.Option(help="PEFT adapters: the catalog task it was trained for (if it does not say).")] = None,
    name: Annotated[Optional[str], typer.Option(help="PEFT adapters: the expert's name (default: from the adapter, made unique).")] = None,
    model: BackboneOption = None,
    registry_url: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Import a PEFT adapter or a bundle; everything is checked before anything is written."""
    from transferkit.interop import import_path

    registry = registry_from(global_options(ctx, registry_url, None))
    summary = import_path(registry, path, task=task, name=name, model=model, command=["transferkit", *sys.argv[1:]])
    _print_import(summary, as_json)


def push_command(
    ctx: typer.Context,
    expert: ExpertArgument,
    remote: Annotated[str, typer.Argument(help="A folder, or hf://owner/name[@revision] on the Hugging Face Hub.")],
    name: Annotated[Optional[str], typer.Option(help="Bundle name on the remote (default: the expert's name).")] = None,
    with_sources: WithSourcesOption = False,
    registry_url: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Export an expert as a bundle and upload it to a remote."""
    from transferkit.interop import push_expert

    registry = registry_from(global_options(ctx, registry_url, None))
    summary = push_expert(registry, registry.get_expert(expert), remote, name=name, with_sources=with_sources)
    if as_json:
        print_json(summary)
        return
    out.print(f"pushed {summary['name']} ({len(summary['experts'])} expert(s)) to {summary['path']}", markup=False, highlight=False)


def pull_command(
    ctx: typer.Context,
    remote: Annotated[str, typer.Argument(help="A folder, or hf://owner/name[@revision] on the Hugging Face Hub.")],
    name: Annotated[str, typer.Argument(help="Bundle name on the remote.")],
    model: BackboneOption = None,
    registry_url: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Download a bundle from a remote and import it."""
    from transferkit.interop import pull_bundle

    registry = registry_from(global_options(ctx, registry_url, None))
    _print_import(pull_bundle(registry, remote, name, model=model), as_json)


def _print_import(summary: dict, as_json: bool) -> None:
    if as_json:
        print_json(summary)
        return
    for expert in summary["added"]:
        out.print(f"imported {expert['name']} ({expert['id']}) from {summary['path']}", markup=False, highlight=False)
    for expert in summary["already_present"]:
        out.print(f"already present: {expert['name']} ({expert['id']})", markup=False, highlight=False)
    for alias in summary.get("aliases_not_moved", []):
        out.print(f"alias {alias} kept where it points in this registry (move it with `transferkit alias set`)", markup=False, highlight=False)
    for note in (summary.get("imported_from") or {}).get("dropped", []):
        out.print(f"not imported: {note}", markup=False, highlight=False)
