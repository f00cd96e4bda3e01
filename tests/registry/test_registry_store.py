"""Round trips through a real migrated registry (SQLite and PostgreSQL): tasks, runs with cost, experts, lineage, lookup."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import timezone

import pytest
import torch
from conftest import execute_sql
from sqlalchemy.exc import IntegrityError

import transferkit.registry.sql_store as sql_store
from transferkit.errors import InvalidInputError, NotFoundError
from transferkit.registry import LineageEdge, TaskRecord, open_registry

TASK, OTHER_TASK = "glue/sst2", "glue/rte"  # registered by the `store` fixture

COST = {
    "wall_seconds": 12.5,
    "device_kind": "cpu",
    "device_name": "Test CPU",
    "device_count": 1,
    "device_seconds": 30.25,
    "peak_memory_bytes": 2**33,
    "examples": 640,
    "tokens": 81_920,
    "energy_joules": None,
    "energy_note": "no RAPL energy counter on this machine",
    "device_seconds_kind": "cpu-core-seconds",
    "best_step": 40,
}


def test_task_upsert_get_list(store):
    assert store.get_task("glue/nope") is None
    updated = TaskRecord(TASK, "new description", {"v": 2}, None, None)
    assert store.upsert_task(updated) == updated
    assert store.get_task(TASK) == updated
    assert [t.name for t in store.list_tasks()] == [OTHER_TASK, TASK]


def test_run_lifecycle_stores_cost_in_typed_columns(store):
    run = store.start_run(
        "train-source", ["transferkit", "x"], {"lr": 0.1}, 42, {"git": "abc"}, {"torch": "2"}, {"fp": "f"}
    )
    assert (run.status, run.ended_at, run.cost) == ("running", None, {})
    assert run.started_at.tzinfo == timezone.utc
    finished = store.finish_run(run.id, "finished", COST)
    again = store.get_run(run.id)
    assert again == finished
    assert again.status == "finished" and again.ended_at >= again.started_at
    assert again.cost == COST
    assert (again.command, again.seed, again.code_version) == (["transferkit", "x"], 42, {"git": "abc"})
    [(wall, memory, extra)] = execute_sql(
        store, "SELECT wall_seconds, peak_memory_bytes, cost_extra FROM runs WHERE id = :id", id=run.id
    )
    assert (wall, memory) == (12.5, 2**33)
    assert (json.loads(extra) if isinstance(extra, str) else extra) == {
        k: COST[k] for k in ("energy_joules", "energy_note", "device_seconds_kind", "best_step")
    }
    json.dumps(again.to_dict())


def test_finish_run_rejects_bad_input(store):
    run = store.start_run("train-source", [], {}, None, {}, {}, {})
    with pytest.raises(InvalidInputError, match="'done'"):
        store.finish_run(run.id, "done", {})
    with pytest.raises(InvalidInputError, match="wall_seconds"):
        store.finish_run(run.id, "failed", {"wall_seconds": "fast"})
    failed = store.finish_run(run.id, "failed", {}, error="RuntimeError: boom")
    assert (failed.status, failed.error) == ("failed", "RuntimeError: boom")
    with pytest.raises(InvalidInputError, match="already failed"):
        store.finish_run(run.id, "finished", {})
    with pytest.raises(NotFoundError, match="no run"):
        store.get_run("missing")


def test_expert_round_trip(store, register):
    tensors = {"a": torch.randn(3, 4), "b": torch.arange(5, dtype=torch.int64)}
    expert = register("sst2-lora", tensors=tensors, cost=COST, extra={"steps": 3})
    assert expert.created_at.tzinfo == timezone.utc
    assert len(expert.id) == 12 and expert.artifact_bytes > 0
    assert store.get_expert(expert.id) == expert
    loaded, metadata = store.load_expert_tensors(expert)
    assert metadata == {"format": "transferkit.expert/1", "name": "sst2-lora"}
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    store.verify_artifact(expert)
    run = store.get_run(expert.run_id)
    assert run.status == "finished" and run.cost == COST
    assert json.loads(json.dumps(expert.to_dict()))["extra"] == {"steps": 3}


def test_lineage_edges(store, register):
    first, second = register("p1"), register("p2")
    child = register(
        "child", lineage=[(first.id, "source", 0.75), (second.id, "source", 0.25), (first.id, "init", None)]
    )
    edges = store.lineage_edges(child.id)
    assert edges["children"] == []
    assert edges["parents"] == [
        LineageEdge(first.id, child.id, "init", None),
        *sorted(
            [LineageEdge(first.id, child.id, "source", 0.75), LineageEdge(second.id, child.id, "source", 0.25)],
            key=lambda e: e.parent_id,
        ),
    ]
    assert store.lineage_edges(second.id) == {
        "parents": [],
        "children": [LineageEdge(second.id, child.id, "source", 0.25)],
    }


def test_list_and_count_filter_and_paginate(store, register):
    made = [
        register("e0"),
        register("e1", method="prompt"),
        register("e2", task_name=OTHER_TASK),
        register("e3", backbone_id="bb-2"),
        register("e4"),
    ]
    newest_first = [e.name for e in reversed(made)]
    assert [e.name for e in store.list_experts()] == newest_first
    assert [e.name for e in store.list_experts(limit=2, offset=1)] == newest_first[1:3]
    assert [e.name for e in store.list_experts(offset=4)] == ["e0"]
    assert [e.name for e in store.list_experts(task_name=TASK, method="lora", backbone_id="bb-1")] == ["e4", "e0"]
    assert [e.name for e in store.list_experts(task_name=OTHER_TASK)] == ["e2"]
    assert store.count_experts() == 5
    assert store.count_experts(method="prompt") == 1
    assert store.count_experts(backbone_id="bb-2") == 1
    assert store.count_experts(task_name="glue/none") == 0
    with pytest.raises(InvalidInputError):
        store.list_experts(offset=-1)


def test_get_expert_by_id_name_and_prefix(store, register):
    expert = register("sst2-lora")
    assert store.get_expert("sst2-lora") == expert
    assert store.get_expert(expert.id[:4]) == expert
    assert store.get_expert(expert.id[:6].upper()) == expert  # ids are hex: case-insensitive on every backend
    with pytest.raises(NotFoundError):
        store.get_expert(expert.id[:3])  # too short to be taken as a prefix
    with pytest.raises(NotFoundError):
        store.get_expert(expert.id[:5] + "%")  # not hex, so not a prefix (and no LIKE wildcard)


def test_not_found_suggests_close_names(store, register):
    register("sst2-lora")
    with pytest.raises(NotFoundError) as caught:
        store.get_expert("sst2-lorra")
    assert "sst2-lora" in str(caught.value) and "transferkit list" in str(caught.value)


def test_ambiguous_prefix_lists_candidates(store, register, monkeypatch):
    ids = iter(["run000000001", "abcd00000001", "run000000002", "abcd00000002"])
    monkeypatch.setattr(sql_store, "_new_id", lambda: next(ids))
    register("one"), register("two")
    with pytest.raises(InvalidInputError, match="abcd00000001.*abcd00000002"):
        store.get_expert("abcd")
    assert store.get_expert("abcd00000002").name == "two"


def test_duplicate_name_is_rejected(store, register):
    register("taken")
    with pytest.raises(InvalidInputError, match="'taken' already exists"):
        register("taken")
    assert store.count_experts() == 1


def test_unique_expert_name(store, register):
    assert store.unique_expert_name("sst2-lora") == "sst2-lora"
    register("sst2-lora")
    assert store.unique_expert_name("sst2-lora") == "sst2-lora-2"
    register("sst2-lora-2")
    register("sst2-lora-x")
    assert store.unique_expert_name("sst2-lora") == "sst2-lora-3"
    assert store.unique_expert_name("sst2_lor") == "sst2_lor"  # '_' is not a LIKE wildcard here


@pytest.mark.parametrize(
    ("overrides", "error"),
    [
        ({"lineage": [("doesnotexist", "source", 1.0)]}, NotFoundError),
        ({"lineage": [("PARENT", "source", 1.0), ("PARENT", "source", 0.5)]}, InvalidInputError),
        ({"task_name": "glue/unknown"}, NotFoundError),
        ({"run_id": "norun"}, NotFoundError),
        ({"cost": {"examples": 1.5}}, InvalidInputError),
    ],
)
def test_failed_registration_leaves_no_expert(store, register, overrides, error):
    parent = register("parent")
    overrides = dict(overrides)  # the parameter dict is shared by both backends' runs
    lineage = [(parent.id if p == "PARENT" else p, r, w) for p, r, w in overrides.pop("lineage", [])]
    run = store.start_run("transfer", [], {}, None, {}, {}, {})
    with pytest.raises(error):
        register("child", **{"run_id": run.id, "lineage": lineage, "cost": COST, **overrides})
    assert [e.name for e in store.list_experts()] == ["parent"]
    assert store.get_run(run.id).status == "running"


def test_cost_cannot_finish_a_closed_run(store, register):
    expert = register("first", cost=COST)
    with pytest.raises(InvalidInputError, match="already finished"):
        register("second", run_id=expert.run_id, cost=COST)
    assert store.count_experts() == 1


def test_database_constraints_guard_lineage(store, register):
    expert = register("solo")
    for parent, child in ((expert.id, expert.id), ("ghost", expert.id)):
        with pytest.raises(IntegrityError):
            execute_sql(store, "INSERT INTO lineage_edges VALUES (:p, :c, 'source', NULL)", p=parent, c=child)


def test_best_order_and_run_kind_filter(store, register):
    def scored(name, score, kind="train-source", **overrides):
        run = store.start_run(kind, [], {}, None, {}, {}, {})
        metrics = {"primary": "accuracy", "dev": {"accuracy": score} if score is not None else {}}
        return register(name, run_id=run.id, metrics=metrics, **overrides)

    scored("low", 0.5), scored("none", None), scored("high", 0.9), scored("high-newer", 0.9)
    scored("made-by-transfer", 0.99, kind="transfer")
    assert [e.name for e in store.list_experts(order="best")] == ["made-by-transfer", "high-newer", "high", "low", "none"]
    assert [e.name for e in store.list_experts(order="best", exclude_run_kind="transfer", limit=2)] == ["high-newer", "high"]
    with pytest.raises(InvalidInputError, match="order"):
        store.list_experts(order="worst")


def test_counts_per_task_and_method(store, register):
    register("a1"), register("a2", method="adapter"), register("a3")
    newest = register("b1", task_name=OTHER_TASK)
    register("other-backbone", backbone_id="bb-2"), register("prompt", method="prompt")
    transfer_run = store.start_run("transfer", [], {}, None, {}, {}, {})
    register("transferred", run_id=transfer_run.id)
    groups = store.count_experts_by_task_and_method(backbone_id="bb-1", methods=["lora", "adapter"])
    assert [(g.task_name, g.method, g.count) for g in groups] == [
        (OTHER_TASK, "lora", 1), (TASK, "adapter", 1), (TASK, "lora", 3)
    ]
    assert groups[0].newest == newest.created_at
    without = store.count_experts_by_task_and_method(backbone_id="bb-1", methods=["lora"], exclude_run_kind="transfer")
    assert [(g.task_name, g.count) for g in without] == [(OTHER_TASK, 1), (TASK, 2)]


def test_best_experts_per_task_in_one_query(store, register):
    def scored(name, score, task=TASK, **overrides):
        return register(name, task_name=task, metrics={"primary": "accuracy", "dev": {"accuracy": score}}, **overrides)

    scored("a-low", 0.1), scored("a-high", 0.9), scored("a-mid", 0.5), scored("a-adapter", 0.99, method="adapter")
    scored("b-only", 0.3, task=OTHER_TASK)
    groups = store.best_experts_per_task([TASK, OTHER_TASK, "glue/none"], 2, method="lora")
    assert {t: (g.count, [e.name for e in g.best]) for t, g in groups.items()} == {
        TASK: (3, ["a-high", "a-mid"]), OTHER_TASK: (1, ["b-only"])
    }
    counts_only = store.best_experts_per_task([TASK], 0)
    assert (counts_only[TASK].count, counts_only[TASK].best) == (4, [])


def _restorable(store, *experts):
    """What `restore` takes, read from `store`: tasks, runs, (expert, artifact bytes) pairs, lineage edges into them."""
    tasks = [store.get_task(name) for name in sorted({e.task_name for e in experts})]
    runs = [store.get_run(e.run_id) for e in experts]
    edges = [edge for e in experts for edge in store.lineage_edges(e.id)["parents"]]
    return tasks, runs, [(e, store.read_artifact(e)) for e in experts], edges


def test_restore_copies_records_exactly_and_twice_is_a_no_op(store, register, tmp_path):
    parent = register("a")
    child = register("b", lineage=[(parent.id, "source", 0.25)])
    other = open_registry(f"sqlite:///{tmp_path}/other.db")
    records = _restorable(store, parent, child)
    assert [e.id for e in other.restore(*records)] == [parent.id, child.id]
    for expert in (parent, child):
        assert other.get_expert(expert.id) == expert and other.get_run(expert.run_id) == store.get_run(expert.run_id)
        assert other.lineage_edges(expert.id) == store.lineage_edges(expert.id)
    assert other.get_task(TASK) == store.get_task(TASK)
    assert other.read_artifact(child) == store.read_artifact(child)
    assert other.restore(*records) == []


def test_restore_refuses_conflicts_before_writing_anything(store, register, tmp_path):
    parent = register("a")
    child = register("b", lineage=[(parent.id, "source", None)])
    other = open_registry(f"sqlite:///{tmp_path}/other.db")
    other.upsert_task(TaskRecord(OTHER_TASK, "another description", {"name": OTHER_TASK}, None, None))
    tasks, runs, experts, edges = _restorable(store, parent, child)
    clashing_run = replace(runs[0], seed=99)
    renamed_task = replace(tasks[0], name=OTHER_TASK)
    cases = [
        ((tasks, runs[1:], experts[1:], edges), NotFoundError, "neither being restored nor in this registry"),
        ((tasks, runs, [(experts[0][0], b"other bytes"), experts[1]], edges), InvalidInputError, "does not match its sha256"),
        ((tasks, runs, experts[:1], edges), InvalidInputError, "not being restored"),
        (([renamed_task], runs, [(replace(e, task_name=OTHER_TASK), b) for e, b in experts], edges), InvalidInputError, "different description"),
    ]
    other.restore(tasks, [clashing_run], [], [])  # a run that shares the id of the one being restored, with other content
    cases.append(((tasks, runs, experts, edges), InvalidInputError, f"run {runs[0].id} is already in this registry"))
    for arguments, error, fragment in cases:
        with pytest.raises(error, match=fragment):
            other.restore(*arguments)
    assert other.count_experts() == 0 and not list(other.artifacts.root.rglob("*.safetensors"))
