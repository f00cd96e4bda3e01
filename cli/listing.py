"""`transferkit list`, and what `inspect` shows of curation and stored evaluations."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.table import Table

from transferkit.cli.common import JsonOption, RegistryOption, global_options, out, primary_value, print_json, registry_from
from transferkit.errors import TransferkitError

if TYPE_CHECKING:
    from transferkit.registry import EvaluationRecord, RegistryStore


def register(app: typer.Typer) -> None:
    """Add `list` to the CLI."""
    app.command("list")(list_command)


def list_command(
    ctx: typer.Context,
    task: Annotated[Optional[str], typer.Option(help="Only experts of this task.")] = None,
    method: Annotated[Optional[str], typer.Option(help="Only experts of this method.")] = None,
    tag: Annotated[Optional[str], typer.Option(help="Only experts with this tag: KEY (any value) or KEY=VALUE.")] = None,
    evaluated_on: Annotated[
        Optional[str],
        typer.Option(help="Rank the experts evaluated on this task (or file:<name>) by their latest stored evaluation there."),
    ] = None,
    limit: Annotated[int, typer.Option(help="At most this many rows.")] = 50,
    offset: Annotated[int, typer.Option(help="Skip this many rows (newest first).")] = 0,
    runs: Annotated[
        bool, typer.Option("--runs", help="List runs instead: status, heartbeat, and for unfinished ones the latest "
                                          "checkpoint and how to resume.")
    ] = False,
    status: Annotated[
        Optional[str], typer.Option(help="With --runs: only runs of this status (running, finished, failed, interrupted).")
    ] = None,
    registry_url: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """List stored experts, newest first (or best first on a task with --evaluated-on), or with --runs the runs."""
    options = global_options(ctx, registry_url, None)
    if not (1 <= limit < 2**63 and 0 <= offset < 2**63):  # SQL LIMIT/OFFSET are 64-bit integers
        raise TransferkitError("--limit must be at least 1 and --offset at least 0 (both below 2^63)")
    if runs or status is not None:
        from transferkit.cli.runs import list_runs

        if any(value is not None for value in (task, method, tag, evaluated_on)):
            raise TransferkitError("--task, --method, --tag and --evaluated-on filter experts; drop them with --runs")
        list_runs(registry_from(options), status, limit, offset, as_json)
        return
    registry = registry_from(options)
    if evaluated_on is not None:
        print_evaluated(registry, evaluated_on, limit, as_json)
        return
    task_name = None
    if task is not None:
        from transferkit.task_registry import resolve_registered_task

        task_name = resolve_registered_task(registry, task).name
    tag_filter = None
    if tag is not None:
        from transferkit.registry.curation import parse_tag

        key, value = parse_tag(tag)
        tag_filter = (key, value if "=" in tag else None)
    experts = registry.list_experts(task_name=task_name, method=method, tag=tag_filter, limit=limit, offset=offset)
    curations = registry.curations([e.id for e in experts])
    evaluations = registry.count_evaluations([e.id for e in experts])
    if as_json:
        print_json([{**e.to_dict(), "curation": curations[e.id].to_dict(), "evaluations": evaluations[e.id]} for e in experts])
        return
    total = registry.count_experts(task_name=task_name, method=method, tag=tag_filter)
    table = Table(title=f"experts ({len(experts)} of {total})")
    for column in ("id", "name", "task", "method", "params", "dev", "test", "evals", "aliases, tags", "backbone", "created"):
        table.add_column(column, overflow="fold")
    for e in experts:
        curation = curations[e.id]
        labels = [*(f"@{a}" for a in curation.aliases), *(f"{k}={v}" if v else k for k, v in curation.tags.items())]
        table.add_row(
            e.id, e.name, e.task_name, e.method, f"{e.trainable_params:,}",
            primary_value(e.metrics, "dev"), primary_value(e.metrics, "test"), str(evaluations[e.id] or "-"),
            ", ".join(labels) or "-", e.backbone_id, e.created_at.strftime("%Y-%m-%d %H:%M"),
        )
    out.print(table)


def _evaluation_text(evaluation: dict) -> str:
    interval = evaluation.get("interval") or {}
    score = evaluation.get("score")
    shown = "-" if score is None else f"{score:.4f}"
    bounds = f" [{interval['low']:.4f}, {interval['high']:.4f}]" if "low" in interval else ""
    fingerprint = evaluation["data_fingerprint"].get("split_fingerprint") or evaluation["data_fingerprint"].get("fingerprint") or ""
    return (f"{evaluation['task_name']} {evaluation['split']}: {evaluation['metric']} {shown}{bounds}, "
            f"{evaluation['examples']} examples, data {fingerprint[:12]} ({evaluation['created_at'][:16]})")


def curation_rows(details: dict) -> list[tuple[str, str]]:
    """`inspect` rows: note, aliases, tags and every stored evaluation (newest first)."""
    curation = details["curation"]
    rows = [
        ("note", curation["note"] or "-"),
        ("aliases", ", ".join(curation["aliases"]) or "-"),
        ("tags", ", ".join(f"{k}={v}" if v else k for k, v in curation["tags"].items()) or "-"),
    ]
    rows += [("evaluation", _evaluation_text(evaluation)) for evaluation in details["evaluations"]]
    return rows


def print_evaluated(registry: RegistryStore, task: str, limit: int, as_json: bool) -> None:
    """Experts evaluated on `task` (a task name or file:<name>), best latest evaluation first."""
    name = task
    if not task.startswith("file:"):
        from transferkit.task_registry import resolve_registered_task

        name = resolve_registered_task(registry, task).name
    ranked = registry.best_on(name, limit=limit)
    if as_json:
        print_json([{"expert": expert.to_dict(), "evaluation": evaluation.to_dict()} for expert, evaluation in ranked])
        return
    table = Table(title=f"experts evaluated on {name} ({len(ranked)}), best latest evaluation first")
    for column in ("id", "name", "task", "method", "split", "metric", "score [95% interval]", "examples", "data", "evaluated"):
        table.add_column(column, overflow="fold")
    for expert, evaluation in ranked:
        table.add_row(expert.id, expert.name, expert.task_name, expert.method, evaluation.split, evaluation.metric,
                      _score(evaluation), str(evaluation.examples),
                      (evaluation.data_fingerprint.get("split_fingerprint") or evaluation.data_fingerprint.get("fingerprint") or "")[:12],
                      evaluation.created_at.strftime("%Y-%m-%d %H:%M"))
    out.print(table)


def _score(evaluation: EvaluationRecord) -> str:
    interval = evaluation.interval or {}
    shown = "-" if evaluation.score is None else f"{evaluation.score:.4f}"
    return shown + (f" [{interval['low']:.4f}, {interval['high']:.4f}]" if "low" in interval else "")
