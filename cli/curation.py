"""`transferkit tag`, `untag`, `note`, `alias set|rm|list` and `delete`: curating the registry (see
`transferkit.registry.curation` for the rules)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from transferkit.cli.common import ArtifactsOption, JsonOption, RegistryOption, global_options, out, print_json, registry_from
from transferkit.errors import InvalidInputError

ExpertArgument = Annotated[str, typer.Argument(help="Expert id, id prefix, name or alias.")]
alias_app = typer.Typer(help="Aliases: names that point at an expert and can be moved (e.g. rte-best).", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add the curation commands to the CLI."""
    app.command("tag")(tag_command)
    app.command("untag")(untag_command)
    app.command("note")(note_command)
    app.command("delete")(delete_command)
    app.add_typer(alias_app, name="alias")


def _say(text: str) -> None:
    out.print(text, markup=False, highlight=False)


def _tags_text(tags: dict[str, str]) -> str:
    return ", ".join(f"{k}={v}" if v else k for k, v in tags.items()) or "none"


def tag_command(
    ctx: typer.Context,
    expert: ExpertArgument,
    tags: Annotated[list[str], typer.Argument(help="Tags to add or overwrite: KEY or KEY=VALUE (MLflow-style).")],
    registry_url: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Add tags to an expert (`transferkit list --tag KEY[=VALUE]` finds them)."""
    from transferkit.registry.curation import parse_tag

    parsed = dict(parse_tag(tag) for tag in tags)
    registry = registry_from(global_options(ctx, registry_url, None))
    record = registry.get_expert(expert)
    curation = registry.set_tags(record.id, parsed)
    if as_json:
        print_json(curation.to_dict())
        return
    _say(f"{record.name} tags: {_tags_text(curation.tags)}")


def untag_command(
    ctx: typer.Context,
    expert: ExpertArgument,
    keys: Annotated[list[str], typer.Argument(help="Keys of the tags to remove.")],
    registry_url: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove tags from an expert."""
    registry = registry_from(global_options(ctx, registry_url, None))
    record = registry.get_expert(expert)
    curation = registry.remove_tags(record.id, keys)
    if as_json:
        print_json(curation.to_dict())
        return
    _say(f"{record.name} tags: {_tags_text(curation.tags)}")


def note_command(
    ctx: typer.Context,
    expert: ExpertArgument,
    text: Annotated[Optional[str], typer.Argument(help="The note (a description of the expert); without it, show the note.")] = None,
    clear: Annotated[bool, typer.Option("--clear", help="Remove the note.")] = False,
    registry_url: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Set, show or clear an expert's note."""
    if clear and text is not None:
        raise InvalidInputError("give a note or --clear, not both")
    registry = registry_from(global_options(ctx, registry_url, None))
    record = registry.get_expert(expert)
    curation = registry.set_note(record.id, None) if clear else registry.set_note(record.id, text) if text is not None else registry.curation(record.id)
    if as_json:
        print_json(curation.to_dict())
        return
    _say(f"{record.name} note: {curation.note}" if curation.note else f"{record.name} has no note")


@alias_app.command("set")
def alias_set_command(
    ctx: typer.Context,
    alias: Annotated[str, typer.Argument(help="The alias, e.g. rte-best.")],
    expert: ExpertArgument,
    registry_url: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Point ALIAS at an expert (created, or moved atomically if it points elsewhere)."""
    registry = registry_from(global_options(ctx, registry_url, None))
    record = registry.get_expert(expert)
    previous = registry.set_alias(alias, record.id)
    if as_json:
        print_json({"alias": alias, "expert_id": record.id, "expert_name": record.name, "previous_expert_id": previous})
        return
    moved = f" (moved from {previous})" if previous and previous != record.id else ""
    _say(f"alias {alias} -> {record.name} ({record.id}){moved}")


@alias_app.command("rm")
def alias_rm_command(
    ctx: typer.Context,
    alias: Annotated[str, typer.Argument(help="The alias to remove.")],
    registry_url: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Remove an alias (the expert stays)."""
    registry = registry_from(global_options(ctx, registry_url, None))
    expert_id = registry.remove_alias(alias)
    if as_json:
        print_json({"alias": alias, "expert_id": expert_id})
        return
    _say(f"removed alias {alias} (it pointed at {expert_id})")


@alias_app.command("list")
def alias_list_command(ctx: typer.Context, registry_url: RegistryOption = None, as_json: JsonOption = False) -> None:
    """Every alias and the expert it points at."""
    registry = registry_from(global_options(ctx, registry_url, None))
    aliases = registry.list_aliases()
    names = {e.id: e.name for e in (registry.get_expert(i) for i in set(aliases.values()))}
    if as_json:
        print_json([{"alias": a, "expert_id": i, "expert_name": names[i]} for a, i in aliases.items()])
        return
    table = Table(title=f"aliases ({len(aliases)})")
    for column in ("alias", "expert", "id"):
        table.add_column(column)
    for alias, expert_id in aliases.items():
        table.add_row(alias, names[expert_id], expert_id)
    out.print(table)


def delete_command(
    ctx: typer.Context,
    expert: ExpertArgument,
    force: Annotated[bool, typer.Option("--force", help="Delete even though other experts were made from it (they are listed).")] = False,
    registry_url: RegistryOption = None,
    artifacts: ArtifactsOption = None,
    as_json: JsonOption = False,
) -> None:
    """Delete an expert: refused while others were made from it (unless --force); its run and cost stay, `gc` reclaims its blob."""
    registry = registry_from(global_options(ctx, registry_url, None, artifacts))
    deletion = registry.delete_expert(registry.get_expert(expert).id, force=force)
    if as_json:
        print_json(deletion.to_dict())
        return
    blob = "still used by another expert" if deletion.artifact_shared else "unreferenced: `transferkit gc --apply` reclaims it"
    _say(f"deleted {deletion.expert_name} ({deletion.expert_id}); run {deletion.run_id} and its cost are kept; blob {blob}")
    if deletion.aliases or deletion.evaluations:
        _say(f"removed with it: aliases {', '.join(deletion.aliases) or 'none'}, {deletion.evaluations} evaluation(s)")
    for orphan in deletion.orphaned:
        effect = ("can no longer be loaded (it reads this source at load time)" if orphan.needs_parent_to_load
                  else "still works (it holds its own copy); only its lineage edge is gone")
        _say(f"orphaned {orphan.child_name} ({orphan.child_id}, role {orphan.role}): {effect}")
