"""The cost queries on a real SQLite registry: all lineage edges, (expert, run) pairs with filters."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

TASK, OTHER_TASK = "glue/sst2", "glue/rte"  # the tasks the `store` fixture creates


def test_list_lineage_edges_and_expert_runs(store, register) -> None:
    a = register("a", cost={"wall_seconds": 10.0, "device_kind": "cpu"})
    b = register("b", task_name=OTHER_TASK, cost={"wall_seconds": 4.0})
    c = register("c", lineage=[(a.id, "source", 0.25), (b.id, "source", 0.75)], cost={"wall_seconds": 1.5})
    edges = store.list_lineage_edges()
    assert {(e.parent_id, e.child_id, e.role, e.weight) for e in edges} == {
        (a.id, c.id, "source", 0.25), (b.id, c.id, "source", 0.75)
    }
    pairs = store.list_expert_runs()
    assert [expert.name for expert, _ in pairs] == ["a", "b", "c"]  # oldest first
    assert all(run.id == expert.run_id for expert, run in pairs)
    assert [run.cost.get("wall_seconds") for _, run in pairs] == [10.0, 4.0, 1.5]
    assert [e.name for e, _ in store.list_expert_runs(task_name=OTHER_TASK)] == ["b"]
    assert [e.name for e, _ in store.list_expert_runs(task_name=TASK)] == ["a", "c"]
    future = datetime.now(timezone.utc) + timedelta(days=1)
    assert store.list_expert_runs(since=future) == []
    assert len(store.list_expert_runs(since=a.created_at)) == 3
