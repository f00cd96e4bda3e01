"""The recursive lineage query on a real migrated registry (SQLite and PostgreSQL)."""

from __future__ import annotations

import pytest
from conftest import execute_sql
from sqlalchemy import event
from sqlalchemy.dialects import postgresql

from transferkit.errors import InvalidInputError, NotFoundError, RegistryError
from transferkit.registry import LineageEdge


@pytest.fixture
def dag(register):
    """a, b -> c (sources); b -> d (init); c, d -> e (a diamond over b); e -> f. Returns name -> expert."""
    experts = {name: register(name) for name in ("a", "b")}
    experts["c"] = register("c", lineage=[(experts["a"].id, "source", 0.25), (experts["b"].id, "source", 0.75)])
    experts["d"] = register("d", lineage=[(experts["b"].id, "init", None)])
    experts["e"] = register("e", lineage=[(experts["c"].id, "source", 0.5), (experts["d"].id, "source", 0.5)])
    experts["f"] = register("f", lineage=[(experts["e"].id, "reproduces", None)])
    return experts


def named(edges: list[LineageEdge], experts: dict) -> set[tuple[str, str, str]]:
    by_id = {e.id: name for name, e in experts.items()}
    return {(by_id[edge.parent_id], by_id[edge.child_id], edge.role) for edge in edges}


def test_ancestors_cover_every_level_once_nearest_first(store, dag):
    edges = store.lineage_graph(dag["e"].id)
    assert named(edges, dag) == {
        ("c", "e", "source"), ("d", "e", "source"), ("a", "c", "source"), ("b", "c", "source"), ("b", "d", "init"),
    }
    assert len(edges) == 5  # b is reached twice (diamond) but each edge appears once
    assert {edge.child_id for edge in edges[:2]} == {dag["e"].id}  # depth 1 first
    weights = {(edge.parent_id, edge.child_id): edge.weight for edge in edges}
    assert weights[(dag["b"].id, dag["c"].id)] == 0.75 and weights[(dag["b"].id, dag["d"].id)] is None


def test_descendants_follow_children(store, dag):
    assert named(store.lineage_graph(dag["b"].id, direction="descendants"), dag) == {
        ("b", "c", "source"), ("b", "d", "init"), ("c", "e", "source"), ("d", "e", "source"), ("e", "f", "reproduces"),
    }
    assert store.lineage_graph(dag["f"].id, direction="descendants") == []
    assert store.lineage_graph(dag["a"].id) == []


def test_max_depth_limits_the_walk(store, dag):
    assert named(store.lineage_graph(dag["f"].id, max_depth=1), dag) == {("e", "f", "reproduces")}
    assert named(store.lineage_graph(dag["f"].id, max_depth=2), dag) == {
        ("e", "f", "reproduces"), ("c", "e", "source"), ("d", "e", "source"),
    }
    assert len(store.lineage_graph(dag["f"].id, max_depth=3)) == 6


def test_cycle_written_by_hand_is_detected(store, dag):
    # Only raw SQL can make one: register_expert writes edges for a brand-new child only.
    execute_sql(
        store, "INSERT INTO lineage_edges (parent_id, child_id, role, weight) VALUES (:p, :c, 'source', NULL)",
        p=dag["e"].id, c=dag["b"].id,
    )
    for start, direction in ((dag["e"].id, "ancestors"), (dag["f"].id, "ancestors"), (dag["a"].id, "descendants")):
        with pytest.raises(RegistryError, match="cycle") as caught:
            store.lineage_graph(start, direction=direction)
        message = str(caught.value)
        assert "\n" not in message
        assert all(f"({dag[n].id})" in message for n in ("b", "e"))
    # A part of the graph that does not reach the cycle is still readable.
    assert store.lineage_graph(dag["a"].id) == []


def test_unknown_expert_and_bad_arguments(store, dag):
    with pytest.raises(NotFoundError, match="nope"):
        store.lineage_graph("nope")
    with pytest.raises(InvalidInputError, match="direction"):
        store.lineage_graph(dag["e"].id, direction="sideways")
    with pytest.raises(InvalidInputError, match="max_depth"):
        store.lineage_graph(dag["e"].id, max_depth=0)


def test_query_is_one_recursive_cte_that_postgresql_accepts(store, dag):
    captured: list[str] = []

    def record(conn, cursor, statement, *args):
        captured.append(statement)

    event.listen(store.engine, "before_cursor_execute", record)
    try:
        store.lineage_graph(dag["e"].id)
    finally:
        event.remove(store.engine, "before_cursor_execute", record)
    recursive = [s for s in captured if "WITH RECURSIVE" in s]
    assert len(recursive) == 1 and "UNION" in recursive[0] and "UNION ALL" not in recursive[0]
    # Standard WITH RECURSIVE ... UNION, as compiled for PostgreSQL.
    query = store._lineage_query([dag["e"].id], "ancestors", 64)
    compiled = str(query.compile(dialect=postgresql.dialect()))
    assert compiled.startswith("WITH RECURSIVE lineage_walk(parent_id, child_id, role, weight, depth)")
    assert "UNION SELECT" in compiled.replace("\n", " ")
