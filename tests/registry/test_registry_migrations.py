"""The schema exists only through the packaged Alembic migrations, and opening upgrades any older database.

Everything runs on SQLite and on PostgreSQL (the `registry_url` fixture), including concurrent
writers in separate processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, inspect, text

from transferkit.errors import RegistryError
from transferkit.registry import TaskRecord, open_registry
from transferkit.registry.migrate import alembic_config, head_revision, migrations_dir
from transferkit.registry.rows import Base

TABLES = {"tasks", "runs", "experts", "lineage_edges", "registry_counters", "expert_tags", "expert_aliases", "evaluations"}


def _engine(url: str):
    return create_engine(url.replace("postgresql://", "postgresql+psycopg://"))


def _version(url: str) -> list[str]:
    engine = _engine(url)
    with engine.connect() as connection:
        versions = [row[0] for row in connection.execute(text("SELECT version_num FROM alembic_version"))]
    engine.dispose()
    return versions


def _tables(url: str) -> set[str]:
    engine = _engine(url)
    names = set(inspect(engine).get_table_names())
    engine.dispose()
    return names


def test_migrations_folder_is_not_a_package():
    assert (migrations_dir() / "env.py").is_file()
    assert not (migrations_dir() / "__init__.py").exists()


def test_empty_database_is_migrated_to_head(registry_url):
    open_registry(registry_url).close()
    assert _tables(registry_url) == TABLES | {"alembic_version"}
    engine = _engine(registry_url)
    indexes = {index["name"] for index in inspect(engine).get_indexes("experts")}
    engine.dispose()
    assert {"ix_experts_task_name", "ix_experts_backbone_id", "ix_experts_method", "ix_experts_created_at"} <= indexes
    assert _version(registry_url) == [head_revision()]


def test_opening_twice_keeps_data_and_version(store, register, registry_url):
    register("kept")
    store.close()
    again = open_registry(registry_url)
    assert [e.name for e in again.list_experts()] == ["kept"]
    assert _version(registry_url) == [head_revision()]
    again.close()


def test_downgraded_database_is_upgraded_on_open(registry_url):
    open_registry(registry_url).close()
    engine = _engine(registry_url)
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "base")
    assert set(inspect(engine).get_table_names()) == {"alembic_version"}
    engine.dispose()
    assert _version(registry_url) == []
    open_registry(registry_url).close()
    assert _tables(registry_url) >= TABLES
    assert _version(registry_url) == [head_revision()]


def test_data_survives_the_embedding_and_dev_score_migration(registry_url, tmp_path):
    """0002 turns JSON embeddings into float32 bytes and fills dev_score; downgrading restores the JSON."""
    store = open_registry(registry_url, tmp_path / "blobs")
    engine = _engine(registry_url)
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0001")
        connection.execute(text(
            "INSERT INTO tasks (name, description, spec, embedding, embedder_id) VALUES "
            "('glue/a', 'a', '{}', '[0.5, -2.0, 0.125]', 'e'), ('glue/b', 'b', '{}', NULL, NULL)"
        ))
        connection.execute(text(
            "INSERT INTO runs (id, kind, status, command, hyperparams, code_version, package_versions, "
            "data_fingerprint, started_at, cost_extra) VALUES ('r1', 'train-source', 'finished', '[]', '{}', '{}', "
            "'{}', '{}', CURRENT_TIMESTAMP, '{}')"
        ))
        for expert_id, metrics in (("x1", '{"primary": "accuracy", "dev": {"accuracy": 0.75}}'), ("x2", '{"dev": {}}')):
            connection.execute(text(
                "INSERT INTO experts (id, name, task_name, method, config, backbone, backbone_id, artifact_uri, "
                "artifact_sha256, artifact_bytes, trainable_params, metrics, run_id, created_at, extra) VALUES "
                "(:id, :id, 'glue/a', 'lora', '{}', '{}', 'bb', 'u', 's', 1, 1, :metrics, 'r1', CURRENT_TIMESTAMP, '{}')"
            ), {"id": expert_id, "metrics": metrics})
    engine.dispose()
    store.close()
    store = open_registry(registry_url, tmp_path / "blobs")
    assert store.get_task("glue/a").embedding == [0.5, -2.0, 0.125]
    assert store.get_task("glue/b").embedding is None
    assert [e.id for e in store.list_experts(order="best")] == ["x1", "x2"]
    assert [m.task_name for m in store.nearest_tasks([1.0, -4.0, 0.25], "e")] == ["glue/a"]
    store.close()
    engine = _engine(registry_url)
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0001")
        embedding = connection.execute(text("SELECT embedding FROM tasks WHERE name = 'glue/a'")).scalar()
    engine.dispose()
    assert np.allclose(embedding if isinstance(embedding, list) else json.loads(embedding), [0.5, -2.0, 0.125])


def test_interrupted_runs_survive_a_downgrade_as_failed_and_upgrade_back(store, register, registry_url):
    """0006 admits `interrupted` (SQLite rebuilds `runs` under the experts' foreign keys); one step down makes it failed."""
    kept = register("kept")
    stopped = store.start_run("train-source", [], {}, 1, {}, {}, {})
    store.finish_run(stopped.id, "interrupted", {}, error="interrupted at step 4 (SIGTERM)")
    store.close()
    engine = _engine(registry_url)
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), "0005")
        assert connection.execute(text("SELECT status, error FROM runs WHERE id = :id"), {"id": stopped.id}).one() == (
            "failed", "interrupted at step 4 (SIGTERM)")
    engine.dispose()
    again = open_registry(registry_url)
    assert again.get_run(stopped.id).status == "failed" and again.get_expert("kept").run_id == kept.run_id
    again.reopen_run(stopped.id)
    assert again.finish_run(stopped.id, "interrupted", {}).status == "interrupted"
    with pytest.raises(Exception, match="(?i)check"):  # the constraint still refuses anything else
        with again.engine.begin() as connection:
            connection.execute(text("UPDATE runs SET status = 'paused' WHERE id = :id"), {"id": stopped.id})
    again.close()


def test_rows_match_migrations(store):
    with store.engine.connect() as connection:
        assert compare_metadata(MigrationContext.configure(connection), Base.metadata) == []


def test_database_from_newer_code_is_refused(registry_url):
    open_registry(registry_url).close()
    engine = _engine(registry_url)
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
    engine.dispose()
    with pytest.raises(RegistryError, match="f00d.*upgrade transferkit"):
        open_registry(registry_url)


def test_sqlite_connections_enforce_foreign_keys_and_use_wal(tmp_path):
    store = open_registry(f"sqlite:///{tmp_path}/r.db")
    with store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA foreign_keys").scalar() == 1
        assert connection.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert connection.exec_driver_sql("PRAGMA busy_timeout").scalar() == 30_000
    store.close()


def test_concurrent_first_opens_and_writes(registry_url):
    """Parallel jobs on a new registry: the migration runs once, every write lands."""

    def job(i: int) -> None:
        store = open_registry(registry_url)
        store.upsert_task(TaskRecord("glue/sst2", "d", {}, None, None))
        run = store.start_run("train-source", [], {}, i, {}, {}, {})
        store.finish_run(run.id, "finished", {"wall_seconds": float(i)})
        store.close()

    with ThreadPoolExecutor(max_workers=6) as pool:
        list(pool.map(job, range(6)))
    engine = _engine(registry_url)
    with engine.connect() as connection:
        assert connection.execute(text("SELECT count(*) FROM runs WHERE status = 'finished'")).scalar() == 6
        assert connection.execute(text("SELECT value FROM registry_counters WHERE name = 'tasks'")).scalar() == 6
    engine.dispose()
    assert _version(registry_url) == [head_revision()]


WRITER = textwrap.dedent("""
    import sys, torch
    from transferkit.registry import TaskRecord, open_registry
    url, blobs, worker, count = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    store = open_registry(url, blobs)
    for i in range(count):
        store.upsert_task(TaskRecord("glue/shared", "a task every writer upserts", {}, [1.0, float(worker)], "e"))
        run = store.start_run("train-source", [], {}, i, {}, {}, {})
        store.register_expert(
            run_id=run.id, name=f"w{worker}-e{i}", task_name="glue/shared", method="lora", config={}, backbone={},
            backbone_id="bb", trainable_params=1, metrics={}, tensors={"w": torch.full((2,), float(worker * 100 + i))},
            tensor_metadata={}, cost={"wall_seconds": 1.0},
        )
    store.close()
""")


def test_concurrent_writer_processes_keep_every_row(postgres_server, tmp_path):
    """Processes write tasks, runs and experts into one PostgreSQL registry at once: nothing is lost or duplicated.

    (SQLite's writers are serialised by its file lock; the threaded test above covers them.)
    """
    registry_url = postgres_server.create_database()
    open_registry(registry_url).close()
    workers, count = 3, 5
    processes = [
        subprocess.Popen([sys.executable, "-c", WRITER, registry_url, str(tmp_path / "blobs"), str(w), str(count)],
                         stderr=subprocess.PIPE, text=True)
        for w in range(workers)
    ]
    for process in processes:
        _, stderr = process.communicate(timeout=300)
        assert process.returncode == 0, stderr
    store = open_registry(registry_url, tmp_path / "blobs")
    experts = store.list_experts()
    assert sorted(e.name for e in experts) == sorted(f"w{w}-e{i}" for w in range(workers) for i in range(count))
    assert all(store.get_run(e.run_id).status == "finished" for e in experts)
    for expert in experts[:3]:
        tensors, _ = store.load_expert_tensors(expert)
        worker, index = (int(part[1:]) for part in expert.name.split("-"))
        assert tensors["w"].tolist() == [worker * 100.0 + index] * 2
    engine = store.engine
    with engine.connect() as connection:
        assert connection.execute(text("SELECT value FROM registry_counters WHERE name = 'tasks'")).scalar() == workers * count
    store.close()


def test_head_revision_constant_matches_the_migrations_folder() -> None:
    # Opening a registry compares the database with HEAD_REVISION without importing Alembic.
    from transferkit.registry.migrate import HEAD_REVISION

    assert HEAD_REVISION == head_revision()
