"""Registry fixtures: a real registry migrated by the real migrations, on SQLite and on PostgreSQL.

Every test using `registry_url` (and so `store`) runs twice, with the ids `sqlite` (a file in
tmp_path) and `postgresql` (a fresh database on the session's throwaway server).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch

from sqlalchemy import text

from transferkit.registry import ExpertRecord, SqlAlchemyStore, TaskRecord, open_registry

TASK = "glue/sst2"
OTHER_TASK = "glue/rte"


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request, tmp_path) -> str:
    """The URL of a new, empty registry database on each backend."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/registry.db"
    return request.getfixturevalue("postgres_server").create_database()


@pytest.fixture
def store(registry_url, tmp_path) -> Iterator[SqlAlchemyStore]:
    registry = open_registry(registry_url, tmp_path / "blobs")
    for name in (TASK, OTHER_TASK):
        registry.upsert_task(TaskRecord(name, f"the {name} task", {"name": name}, [0.25, -1.5], "test-embedder"))
    yield registry
    registry.close()


@pytest.fixture
def register(store) -> Callable[..., ExpertRecord]:
    """Register an expert in its own run; keyword arguments override the defaults."""

    def make(name: str, **overrides) -> ExpertRecord:
        run = store.start_run("train-source", ["transferkit", "train-source"], {"lr": 0.1}, 7, {}, {}, {})
        args = dict(
            run_id=run.id,
            name=name,
            task_name=TASK,
            method="lora",
            config={"r": 4},
            backbone={"name": "tiny"},
            backbone_id="bb-1",
            trainable_params=6,
            metrics={"dev": {"accuracy": 0.5}},
            tensors={"lora.a": torch.arange(6, dtype=torch.float32).reshape(2, 3)},
            tensor_metadata={"format": "transferkit.expert/1", "name": name},
        )
        return store.register_expert(**{**args, **overrides})

    return make


def execute_sql(store: SqlAlchemyStore, statement: str, **parameters) -> list[tuple]:
    """Raw SQL on the store's own database (any backend), committed; returns the rows of a query."""
    with store.engine.begin() as connection:
        result = connection.execute(text(statement), parameters)
        return [tuple(row) for row in result] if result.returns_rows else []
