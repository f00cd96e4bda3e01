"""`transferkit search`: the registry's tasks nearest to a description, each with its best experts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Annotated

import typer
from rich.table import Table

from transferkit.cli.common import JsonOption, RegistryOption, global_options, out, primary_value, print_json, registry_from
from transferkit.errors import InvalidInputError

if TYPE_CHECKING:  # the registry is imported when a command opens it, not at CLI start-up
    from transferkit.registry import ExpertRecord, RegistryStore, TaskExperts, TaskMatch, TaskRecord


def register(app: typer.Typer) -> None:
    """Add the `search` command to the CLI."""
    app.command("search")(search_command)


def search_command(
    ctx: typer.Context,
    text: Annotated[str, typer.Argument(help='What the task is about, e.g. "detect whether two questions mean the same".')],
    limit: Annotated[int, typer.Option(help="How many tasks to return.")] = 5,
    experts: Annotated[int, typer.Option(help="Best experts shown per task (by primary dev metric; 0: none).")] = 3,
    registry_url: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Tasks whose description embedding is nearest to TEXT (cosine), with their best experts."""
    if not text.strip():
        raise InvalidInputError("the search text is empty; describe the task, e.g. \"is the review positive\"")
    if limit < 1 or experts < 0:
        raise InvalidInputError("--limit must be at least 1 and --experts at least 0")
    from transferkit.embedding import embed_texts, embedder_id

    registry = registry_from(global_options(ctx, registry_url, None))
    found = nearest_tasks_with_experts(registry, embed_texts([text])[0], embedder_id(), limit, experts)
    if as_json:
        print_json({"query": text, "index": registry.search_index.kind, "tasks": [
            {"task": match.task_name, "similarity": round(match.similarity, 6), "description": task.description if task else None,
             "experts_total": group.count, "experts": [_expert_summary(e) for e in group.best]}
            for match, task, group in found
        ]})
        return
    table = Table(title=f"tasks nearest to {text!r} ({registry.search_index.kind} index)")
    for column in ("task", "similarity", "experts", "best experts (dev)", "description"):
        table.add_column(column, overflow="fold")
    for match, task, group in found:
        shown = "\n".join(f"{e.name} [{e.id}] {e.method} {primary_value(e.metrics, 'dev')}" for e in group.best) or "-"
        table.add_row(match.task_name, f"{match.similarity:.4f}", str(group.count), shown, task.description if task else "")
    out.print(table)


def nearest_tasks_with_experts(
    registry: RegistryStore, vector: Sequence[float], embedder: str, limit: int, experts: int
) -> list[tuple[TaskMatch, TaskRecord | None, TaskExperts]]:
    """The `limit` nearest tasks, each with its record, its expert count and its `experts` best experts."""
    from transferkit.registry import TaskExperts

    matches = registry.nearest_tasks(vector, embedder, limit=limit)
    names = [m.task_name for m in matches]
    tasks = {t.name: t for t in registry.list_tasks(names)}
    groups = registry.best_experts_per_task(names, experts)
    return [(m, tasks.get(m.task_name), groups.get(m.task_name, TaskExperts(m.task_name, 0, []))) for m in matches]


def _expert_summary(expert: ExpertRecord) -> dict:
    metrics = expert.metrics
    return {"id": expert.id, "name": expert.name, "method": expert.method, "backbone_id": expert.backbone_id,
            "primary": metrics.get("primary"), "dev": metrics.get("dev", {}).get(metrics.get("primary"))}
