"""`transferkit tasks`, `task add` and `task show`: the catalog plus the custom tasks registered from users' files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from transferkit.cli.common import (
    DataDirOption,
    JsonOption,
    RegistryOption,
    check_data_dir,
    global_options,
    out,
    print_json,
    registry_from,
)

task_app = typer.Typer(help="Custom tasks from your own CSV/TSV/JSONL/Parquet/text files.", no_args_is_help=True)


def register(app: typer.Typer) -> None:
    """Add `tasks` and the `task` group to the CLI."""
    app.command("tasks")(tasks_command)
    app.add_typer(task_app, name="task")


def tasks_command(ctx: typer.Context, registry_url: RegistryOption = None, as_json: JsonOption = False) -> None:
    """List the task catalog and the custom tasks in the registry."""
    from transferkit.task_registry import registered_tasks
    from transferkit.tasks import list_tasks

    specs = [*list_tasks(), *registered_tasks(registry_from(global_options(ctx, registry_url, None)))]
    if as_json:
        print_json([s.to_dict() for s in specs])
        return
    table = Table(title="transferkit tasks (catalog and registered custom tasks)")
    for column in ("task", "kind", "inputs", "labels", "metrics", "description"):
        table.add_column(column, overflow="fold")
    for s in specs:
        labels = ", ".join(s.label_names) if s.label_names else "regression"
        table.add_row(s.name, s.kind, ", ".join(s.input_fields), labels, ", ".join(s.metrics), s.description)
    out.print(table)


@task_app.command("add")
def add_command(
    ctx: typer.Context,
    spec: Annotated[Path, typer.Argument(help="TOML task spec (see docs/custom-tasks.md).")],
    replace: Annotated[bool, typer.Option("--replace", help="Overwrite a different task of the same name that has no experts.")] = False,
    registry_url: RegistryOption = None,
    data_dir: DataDirOption = None,
    as_json: JsonOption = False,
) -> None:
    """Check a custom task spec and every row of its files, then register it."""
    from transferkit.task_registry import add_task

    options = global_options(ctx, registry_url, data_dir)
    check_data_dir(options.data_dir)
    added = add_task(registry_from(options), spec, options.data_dir, replace=replace)
    if as_json:
        print_json({"status": added.status, "task": added.task.to_dict()})
        return
    task = added.task
    out.print(f"{added.status} task [bold]{task.name}[/]: {sum(f.rows for f in task.files):,} examples in {len(task.files)} file(s)")
    _print_files_and_split(task)


@task_app.command("show")
def show_command(
    ctx: typer.Context,
    name: Annotated[str, typer.Argument(help="Task name (catalog or registered custom task).")],
    registry_url: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Everything known about one task: its definition and, for custom tasks, its files and their sha256."""
    from transferkit.task_registry import resolve_registered_task

    task = resolve_registered_task(registry_from(global_options(ctx, registry_url, None)), name)
    if as_json:
        print_json(task.to_dict())
        return
    out.print(f"[bold]{task.name}[/] ({task.kind}): {task.description}")
    labels = ", ".join(task.label_names) if task.label_names else "regression"
    out.print(f"  inputs: {', '.join(task.input_fields)}; labels: {labels}; metrics: {', '.join(task.metrics)}")
    if task.kind == "custom":
        _print_files_and_split(task)


_FOUND_BY = {"spec": "next to the spec", "data_dir": "under the data dir", "absolute": "absolute path"}


def _print_files_and_split(task) -> None:
    for file in task.files:
        label = f", label {file.label!r}" if file.label is not None else ""
        split = f", split {file.split}" if file.split else ""
        out.print(f"  {file.path} ({file.format}, {file.rows:,} rows{label}{split}, {_FOUND_BY[file.base]}) sha256 {file.sha256[:16]}…")
    fractions = task.holdout.fractions()
    if fractions:
        seed = task.holdout.seed if task.holdout.seed is not None else "the run's --seed"
        held = ", ".join(f"{fraction:g} as {split}" for split, fraction in fractions.items())
        out.print(f"  held out: {held} (seed: {seed})")
