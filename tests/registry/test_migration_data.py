"""A registry written at the first schema revision, with real rows and real expert artifacts, survives every upgrade.

The rows are inserted with plain SQL at the first revision (as an old transferkit would have left
them), the registry is then opened by the current code (which upgrades it to head), and every
row, artifact and lineage edge is checked; the downgrade back to the first revision keeps the data.
No revision id but the first is named here: the chain above it may grow.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timedelta, timezone

import pytest
import safetensors.torch
import torch
from alembic import command
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, inspect, text

from transferkit.errors import InvalidInputError
from transferkit.gc import collect_garbage
from transferkit.methods import get_method
from transferkit.modeling import TaskModel
from transferkit.registry import LocalArtifactStore, open_registry
from transferkit.registry.migrate import alembic_config, head_revision
from transferkit.experts import ARTIFACT_FORMAT
from transferkit.rebuild import load_expert_model

BASE = ScriptDirectory.from_config(alembic_config()).get_base()
STAMP = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy stores DateTime in SQLite


def _expert_blob(backbone, method: str, task: str) -> tuple[bytes, dict]:
    """A real expert artifact, as `train-source` writes it."""
    method_type = get_method(method)
    config = method_type.config_class()
    torch.manual_seed(len(task))
    model = TaskModel(backbone, method_type.build(config, backbone), 2)
    tensors = model.export_tensors()
    model.detach()
    metadata = {"format": ARTIFACT_FORMAT, "method": method, "config": json.dumps(config.to_dict(), sort_keys=True),
                "backbone_id": backbone.backbone_id, "task": task, "num_outputs": "2"}
    return safetensors.torch.save(tensors, metadata), config.to_dict()


def _old_registry(tmp_path, backbone) -> dict:
    """A SQLite registry at the first revision holding tasks, runs, two experts with artifacts and a lineage edge."""
    engine = create_engine(f"sqlite:///{tmp_path}/old.db")
    with engine.begin() as connection:
        command.upgrade(alembic_config(connection), BASE)
    artifacts = LocalArtifactStore(tmp_path / "old-artifacts")
    now = datetime.now(timezone.utc)
    day_ago = (now - timedelta(days=1)).strftime(STAMP)
    runs = {
        "run-lora": ("train-source", "finished", day_ago, now.strftime(STAMP), None, 12.5),
        "run-adapter": ("transfer", "finished", day_ago, now.strftime(STAMP), None, 30.0),
        "run-failed": ("train-source", "failed", day_ago, now.strftime(STAMP), "KeyboardInterrupt: ", None),
        "run-crashed": ("train-source", "running", (now - timedelta(days=3)).strftime(STAMP), None, None, None),
    }
    experts = {}
    with engine.begin() as connection:
        for name, description in (("glue/rte", "Does the premise entail the hypothesis?"), ("glue/mrpc", "Are they paraphrases?")):
            connection.execute(text("INSERT INTO tasks VALUES (:n, :d, :s, :e, 'minilm-mean')"),
                               {"n": name, "d": description, "s": json.dumps({"name": name}), "e": json.dumps([0.5, -0.25])})
        for run_id, (kind, status, started, ended, error, wall) in runs.items():
            connection.execute(text(
                "INSERT INTO runs (id, kind, status, command, hyperparams, seed, code_version, package_versions, data_fingerprint,"
                " started_at, ended_at, error, wall_seconds, cost_extra)"
                " VALUES (:id, :kind, :status, :cmd, :hp, 7, :code, :pkgs, :data, :started, :ended, :error, :wall, :extra)"
            ), {"id": run_id, "kind": kind, "status": status, "cmd": json.dumps(["transferkit", kind]), "hp": json.dumps({"lr": 0.001}),
                "code": json.dumps({"git": "abc"}), "pkgs": json.dumps({"torch": "2.13.0"}), "data": json.dumps({"fingerprint": "f"}),
                "started": started, "ended": ended, "error": error, "wall": wall, "extra": json.dumps({"best_step": 3})})
        for expert_id, method, task, run_id in (("e-lora", "lora", "glue/rte", "run-lora"), ("e-adapter", "adapter", "glue/mrpc", "run-adapter")):
            blob, config = _expert_blob(backbone, method, task)
            uri, digest, size = artifacts.put(blob)
            experts[expert_id] = blob
            connection.execute(text(
                "INSERT INTO experts VALUES (:id, :name, :task, :method, :config, :backbone, :bid, :uri, :sha, :size, :params,"
                " :metrics, :run, :created, :extra)"
            ), {"id": expert_id, "name": f"{task.split('/')[1]}-{method}", "task": task, "method": method, "config": json.dumps(config),
                "backbone": json.dumps(backbone.fingerprint.to_dict()), "bid": backbone.backbone_id, "uri": uri, "sha": digest,
                "size": size, "params": 1234, "metrics": json.dumps({"dev": {"accuracy": 0.6}, "primary": "accuracy"}),
                "run": run_id, "created": now.strftime(STAMP), "extra": json.dumps({"steps": 3})})
        connection.execute(text("INSERT INTO lineage_edges VALUES ('e-lora', 'e-adapter', 'source', 0.75)"))
    engine.dispose()
    return {"runs": runs, "experts": experts}


def test_first_revision_registry_upgrades_with_every_row_and_artifact(tmp_path, tiny_backbone):
    old = _old_registry(tmp_path, tiny_backbone)
    store = open_registry(f"sqlite:///{tmp_path}/old.db")  # what any command does: upgrade to head
    with sqlite3.connect(tmp_path / "old.db") as connection:
        assert connection.execute("SELECT version_num FROM alembic_version").fetchall() == [(head_revision(),)]

    assert [(t.name, t.embedding) for t in store.list_tasks()] == [("glue/mrpc", [0.5, -0.25]), ("glue/rte", [0.5, -0.25])]
    for run_id, (kind, status, _, _, error, wall) in old["runs"].items():
        run = store.get_run(run_id)
        assert (run.kind, run.status, run.error, run.seed, run.hyperparams) == (kind, status, error, 7, {"lr": 0.001})
        assert run.cost.get("wall_seconds") == wall and run.cost["best_step"] == 3
        assert (run.host, run.pid, run.heartbeat_at) == (None, None, None)  # not tracked back then
    experts = {e.id: e for e in store.list_experts()}
    assert set(experts) == set(old["experts"])
    for expert_id, blob in old["experts"].items():
        expert = experts[expert_id]
        store.verify_artifact(expert)
        tensors, metadata = store.load_expert_tensors(expert)
        assert tensors.keys() == safetensors.torch.load(blob).keys() and metadata["format"] == ARTIFACT_FORMAT
        model = load_expert_model(store, expert, tiny_backbone)  # a real, usable expert
        assert all(torch.equal(model.export_tensors()[k], tensors[k]) for k in tensors)
        model.detach()
    [edge] = store.lineage_graph("e-adapter")
    assert (edge.parent_id, edge.child_id, edge.role, edge.weight) == ("e-lora", "e-adapter", "source", 0.75)

    # The new columns work on old rows: the crashed run (no pid, silent for 3 days) is stale; the failed one resumes.
    assert [(i.kind, i.target) for i in collect_garbage(store).items] == [("stale-run", "run-crashed")]
    reopened = store.reopen_run("run-failed")
    assert reopened.status == "running" and reopened.pid is not None

    # Curation and evaluations (0005) work on old rows, and a guarded delete sees their old lineage edge.
    assert store.curation("e-lora").note is None and store.curation("e-lora").tags == {}
    store.set_note("e-lora", "kept from the first registry")
    store.set_tags("e-adapter", {"stage": "prod"})
    store.set_alias("mrpc-best", "e-adapter")
    assert store.get_expert("mrpc-best").id == "e-adapter"
    store.add_evaluation(expert_id="e-adapter", task_name="glue/mrpc", split="test", metric="accuracy", metrics={"accuracy": 0.7},
                         interval=None, examples=10, data_fingerprint={"fingerprint": "f"}, details={})
    with pytest.raises(InvalidInputError, match="made from it"):
        store.delete_expert("e-lora")

    # Runs can end interrupted (0006 rebuilt `runs` on SQLite): the constraint admits it and nothing else new,
    # and the experts' foreign keys into the rebuilt table still hold and are still enforced.
    store.finish_run("run-failed", "interrupted", {}, error="interrupted at step 3 (SIGTERM)")
    assert store.get_run("run-failed").status == "interrupted"
    assert store.reopen_run("run-failed").status == "running"  # an interrupted run resumes
    store.finish_run("run-failed", "interrupted", {}, error="interrupted at step 5 (SIGINT)")
    with sqlite3.connect(tmp_path / "old.db") as connection:
        connection.execute("PRAGMA foreign_keys = ON")
        assert connection.execute("PRAGMA foreign_key_check").fetchall() == []
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        with pytest.raises(sqlite3.IntegrityError, match="CHECK"):
            connection.execute("UPDATE runs SET status = 'paused' WHERE id = 'run-lora'")
        with pytest.raises(sqlite3.IntegrityError, match="FOREIGN KEY"):
            connection.execute("UPDATE experts SET run_id = 'no-such-run' WHERE id = 'e-lora'")
    assert [e.run_id for e in store.list_experts()] and store.get_expert("e-lora").run_id == "run-lora"
    store.close()

    engine = create_engine(f"sqlite:///{tmp_path}/old.db")
    with engine.begin() as connection:
        command.downgrade(alembic_config(connection), BASE)
    columns = {column["name"] for column in inspect(engine).get_columns("runs")}
    assert {"host", "pid", "heartbeat_at"}.isdisjoint(columns)
    assert "note" not in {column["name"] for column in inspect(engine).get_columns("experts")}
    assert {"expert_tags", "expert_aliases", "evaluations"}.isdisjoint(inspect(engine).get_table_names())
    with engine.connect() as connection:
        counts = [connection.execute(text(f"SELECT count(*) FROM {table}")).scalar() for table in ("tasks", "runs", "experts", "lineage_edges")]
        assert counts == [2, 4, 2, 1]
        # The first revision knows no `interrupted`: the downgrade made that run failed, keeping why it stopped.
        assert connection.execute(text("SELECT status, error FROM runs WHERE id = 'run-failed'")).one() == (
            "failed", "interrupted at step 5 (SIGINT)")
        assert connection.execute(text("SELECT artifact_sha256 FROM experts WHERE id = 'e-lora'")).scalar() == experts["e-lora"].artifact_sha256
    engine.dispose()
    again = open_registry(f"sqlite:///{tmp_path}/old.db")  # and up again
    assert len(again.list_experts()) == 2
    assert again.curation("e-adapter").aliases == [] and again.list_evaluations() == []  # curation went with its tables
    again.close()
