"""Tasks in the registry: description embeddings for every task, full specs for custom tasks.

A custom task lives in the registry's `tasks` table (its spec JSON has ``"kind": "custom"``
and records its files with their sha256), so anyone using the same registry can resolve,
train on and transfer to it by name. Catalog tasks are written there too, with their
description embedding, the first time an expert is trained for them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from transferkit.errors import InvalidInputError, RegistryError
from transferkit.registry import RegistryStore, TaskRecord
from transferkit.tasks import Example, TaskSpec, resolve_task
from transferkit.tasks.catalog import normalize_name
from transferkit.tasks.custom import CustomTask, read_task_file


def task_record(task: TaskSpec, examples: Sequence[Example] | None = None) -> TaskRecord:
    """The registry row of a task, with its description embedding and, given training examples, its data embedding."""
    from transferkit.embedding import embed_task_data, embed_texts, embedder_id  # loads torch: not needed to list tasks

    vector = embed_texts([task.description])[0]
    data = [float(x) for x in embed_task_data(examples, task.name)] if examples else None
    return TaskRecord(task.name, task.description, task.to_dict(), [float(x) for x in vector], embedder_id(), data)


def ensure_task_record(registry: RegistryStore, task: TaskSpec, examples: Sequence[Example] | None = None) -> TaskRecord:
    """Register the task with its embeddings (again if the description or the embedder changed, or the data
    embedding is missing and `examples` can supply it)."""
    from transferkit.embedding import embedder_id

    existing = registry.get_task(task.name)
    if (
        existing is not None and existing.embedding is not None
        and (existing.description, existing.embedder_id) == (task.description, embedder_id())
        and (existing.data_embedding is not None or not examples)
    ):
        return existing
    return registry.upsert_task(task_record(task, examples))


def registered_tasks(registry: RegistryStore) -> list[CustomTask]:
    """The custom tasks stored in the registry, by name."""
    tasks = []
    for record in registry.list_tasks():
        if record.spec.get("kind") == CustomTask.kind:
            try:
                tasks.append(CustomTask.from_dict(record.spec))
            except (KeyError, TypeError) as error:
                raise RegistryError(f"task {record.name}'s stored spec is unreadable (field {error}); add it again") from None
    return tasks


def resolve_registered_task(registry: RegistryStore, name: str) -> TaskSpec:
    """A catalog task or a custom task of this registry, by full or unique bare name."""
    return resolve_task(name, registered_tasks(registry))


@dataclass(frozen=True)
class AddedTask:
    task: CustomTask
    status: str  # "added", "unchanged" (same definition already stored) or "replaced"


def check_registrable(registry: RegistryStore, task: CustomTask, replace: bool = False) -> str:
    """What adding `task` would do ("added", "unchanged", "replaced"); refuses a clash it must not overwrite."""
    existing = registry.get_task(task.name)
    if existing is None:
        clash = next((t.name for t in registered_tasks(registry) if normalize_name(t.name) == normalize_name(task.name)), None)
        if clash is not None:
            raise InvalidInputError(f"task name {task.name!r} would be confused with the registered task {clash}; choose another name")
        return "added"
    if existing.spec.get("kind") != CustomTask.kind:
        raise InvalidInputError(f"{task.name} is already registered as a catalog task; choose another name")
    if CustomTask.from_dict(existing.spec).definition() == task.definition():
        return "unchanged"
    if not replace:
        raise InvalidInputError(
            f"a different task named {task.name} is already registered; pass --replace to overwrite it, or choose another name"
        )
    trained = registry.count_experts(task_name=task.name)
    if trained:
        raise InvalidInputError(
            f"task {task.name} has {trained} expert(s) trained on its current data, so it cannot be replaced; "
            "register the new data under another name"
        )
    return "replaced"


def add_task(registry: RegistryStore, spec_path: Path, data_dir: Path | None, replace: bool = False) -> AddedTask:
    """Check a spec and all its data, then store it (with its description embedding) in one write."""
    task = read_task_file(spec_path, data_dir)
    status = check_registrable(registry, task, replace)
    if status == "unchanged":
        existing = registry.get_task(task.name)
        if existing is not None and existing.spec == task.to_dict():
            return AddedTask(task, status)
    # New, replaced, or the same definition read from new locations: store what was just checked.
    registry.upsert_task(task_record(task))
    return AddedTask(task, status)


def job_task(registry: RegistryStore, name: str | None, task_file: Path | None, data_dir: Path | None) -> TaskSpec:
    """The task of a training job: `name` resolved in the registry, or the spec `task_file` (checked, not yet stored)."""
    if task_file is None:
        if name is None:
            raise InvalidInputError("no task given: name one (train-source TASK, transfer --target TASK) or pass --task-file SPEC.toml")
        return resolve_registered_task(registry, name)
    task = read_task_file(task_file, data_dir)
    check_registrable(registry, task)
    if name is not None and normalize_name(name) not in (normalize_name(task.name), normalize_name(task.short_name)):
        raise InvalidInputError(f"task {name!r} is not the task {task.name} defined in {task_file}; give one of them")
    return task
