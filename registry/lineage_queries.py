"""Lineage in SQL: the edges of one expert, the graph reachable from experts, and the check that it has no cycle.

Cycles are impossible by construction (edges are only written with a brand-new child expert, and a
CHECK forbids self-edges), so a cycle found while walking means the table was edited by hand.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from contextlib import AbstractContextManager
from typing import Any

from sqlalchemy import Integer, Select, func, literal_column, select
from sqlalchemy.orm import Session

from transferkit.errors import InvalidInputError, NotFoundError, RegistryError
from transferkit.registry.entities import LineageEdge
from transferkit.registry.mapping import require_name, to_entity
from transferkit.registry.rows import ExpertRow, LineageEdgeRow

LINEAGE_DIRECTIONS = ("ancestors", "descendants")
MAX_LINEAGE_DEPTH = 1_000_000


class SqlLineage:
    """The lineage queries of `RegistryStore` over the registry's SQLAlchemy session (mixed into `SqlAlchemyStore`)."""

    _transaction: Callable[..., AbstractContextManager[Session]]  # SqlAlchemyStore's: one short transaction

    def lineage_edges(self, expert_id: str) -> dict[str, list[LineageEdge]]:
        order = (LineageEdgeRow.role, LineageEdgeRow.parent_id, LineageEdgeRow.child_id)
        with self._transaction() as session:

            def edges(end: Any) -> list[LineageEdge]:
                rows = session.scalars(select(LineageEdgeRow).where(end == expert_id).order_by(*order))
                return [to_entity(LineageEdge, row) for row in rows]

            return {"parents": edges(LineageEdgeRow.child_id), "children": edges(LineageEdgeRow.parent_id)}

    def list_lineage_edges(self) -> list[LineageEdge]:
        order = (LineageEdgeRow.child_id, LineageEdgeRow.role, LineageEdgeRow.parent_id)
        with self._transaction() as session:
            return [to_entity(LineageEdge, row) for row in session.scalars(select(LineageEdgeRow).order_by(*order))]

    def lineage_graph(self, expert_id: str, direction: str = "ancestors", max_depth: int = 64) -> list[LineageEdge]:
        if direction not in LINEAGE_DIRECTIONS:
            raise InvalidInputError(f"lineage direction must be one of {', '.join(LINEAGE_DIRECTIONS)}, not {direction!r}")
        if isinstance(max_depth, bool) or not isinstance(max_depth, int) or not 1 <= max_depth <= MAX_LINEAGE_DEPTH:
            raise InvalidInputError(f"lineage max_depth must be an integer from 1 to {MAX_LINEAGE_DEPTH:,}, got {max_depth!r}")
        query = self._lineage_query([expert_id], direction, max_depth)
        with self._transaction() as session:
            if session.get(ExpertRow, expert_id) is None:
                raise NotFoundError(f"no expert has the id {expert_id!r}; run `transferkit list` to see the stored experts")
            rows = session.execute(query).all()
            cycle = find_cycle([(row.parent_id, row.child_id) for row in rows])
            if cycle:
                names = dict(session.execute(select(ExpertRow.id, ExpertRow.name).where(ExpertRow.id.in_(cycle))).all())
                path = " -> ".join(f"{names.get(node, '?')} ({node})" for node in [*cycle, cycle[0]])
                raise RegistryError(
                    f"the lineage of expert {expert_id} contains a cycle (parent -> child: {path}); transferkit never "
                    "writes one, so the lineage_edges table was edited by hand: delete one of these edges"
                )
        return [LineageEdge(row.parent_id, row.child_id, row.role, row.weight) for row in rows if row.depth <= max_depth]

    def lineage_closure(self, expert_ids: Collection[str], direction: str = "ancestors", max_depth: int = 64) -> list[LineageEdge]:
        if direction not in LINEAGE_DIRECTIONS:
            raise InvalidInputError(f"lineage direction must be one of {', '.join(LINEAGE_DIRECTIONS)}, not {direction!r}")
        if not expert_ids:
            return []
        with self._transaction() as session:
            rows = session.execute(self._lineage_query(list(expert_ids), direction, max_depth)).all()
        return [LineageEdge(row.parent_id, row.child_id, row.role, row.weight) for row in rows if row.depth <= max_depth]

    def count_children(self, parent_ids: Collection[str], roles: Collection[str]) -> dict[str, int]:
        edges = LineageEdgeRow
        query = (
            select(edges.parent_id, func.count(func.distinct(edges.child_id)))
            .where(edges.parent_id.in_(list(parent_ids)), edges.role.in_(list(roles)))
            .group_by(edges.parent_id)
        )
        with self._transaction() as session:
            return {parent: int(count) for parent, count in session.execute(query)}


    @staticmethod
    def _lineage_query(expert_ids: list[str], direction: str, max_depth: int) -> Select:
        """One recursive CTE in portable SQL (SQLite, PostgreSQL): each reachable edge with its smallest depth."""
        edges = LineageEdgeRow.__table__
        # The walk stands on `near` and moves to `far`: child -> parent for ancestors, parent -> child for descendants.
        near, far = ("child_id", "parent_id") if direction == "ancestors" else ("parent_id", "child_id")
        columns = (edges.c.parent_id, edges.c.child_id, edges.c.role, edges.c.weight)
        start = select(*columns, literal_column("1", Integer).label("depth")).where(edges.c[near].in_(expert_ids))
        walk = start.cte("lineage_walk", recursive=True)
        # UNION (not UNION ALL) merges the paths of a diamond level by level, and the depth bound ends the
        # walk even on a corrupted, cyclic table. It goes one level past max_depth so a loop shows itself.
        walk = walk.union(
            select(*columns, (walk.c.depth + 1).label("depth"))
            .select_from(edges)
            .join(walk, edges.c[near] == walk.c[far])
            .where(walk.c.depth <= max_depth)
        )
        depth = func.min(walk.c.depth).label("depth")
        return (
            select(walk.c.parent_id, walk.c.child_id, walk.c.role, walk.c.weight, depth)
            .group_by(walk.c.parent_id, walk.c.child_id, walk.c.role, walk.c.weight)
            .order_by(depth, walk.c.role, walk.c.parent_id, walk.c.child_id)
        )


def checked_lineage(lineage: Sequence[tuple[str, str, float | None]]) -> list[tuple[str, str, float | None]]:
    """The (parent, role, weight) edges of a new expert, weights as floats; roles are names, no pair twice."""
    edges = [(parent, role, None if weight is None else float(weight)) for parent, role, weight in lineage]
    for _, role, _ in edges:
        require_name(role, "lineage role")
    if len({(parent, role) for parent, role, _ in edges}) != len(edges):
        raise InvalidInputError("lineage lists the same (parent, role) pair twice; give each parent once per role")
    return edges


def find_cycle(edges: Sequence[tuple[str, str]]) -> list[str]:
    """The nodes of one directed cycle among `edges` (parent -> child), in order, or [] if there is none."""
    children: dict[str, list[str]] = {}
    for parent, child in edges:
        children.setdefault(parent, []).append(child)
    state: dict[str, int] = {}  # 1 = on the current path, 2 = fully explored
    for root in children:
        if root in state:
            continue
        path, stack = [root], [iter(children.get(root, ()))]
        state[root] = 1
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(child) == 1:
                return path[path.index(child):]
            elif child not in state:
                state[child] = 1
                path.append(child)
                stack.append(iter(children.get(child, ())))
    return []
