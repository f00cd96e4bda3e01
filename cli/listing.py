"""What `list --evaluated-on` and `inspect` show of curation and stored evaluations (kept out of app.py)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.table import Table

from transferkit.cli.common import out, print_json

if TYPE_CHECKING:
    from transferkit.registry import EvaluationRecord, RegistryStore


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


def print_evaluated(store: RegistryStore, task: str, limit: int, as_json: bool) -> None:
    """Experts evaluated on `task` (a task name or file:<name>), best latest evaluation first."""
    name = task
    if not task.startswith("file:"):
        from transferkit.task_registry import resolve_registered_task

        name = resolve_registered_task(store, task).name
    ranked = store.best_on(name, limit=limit)
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
