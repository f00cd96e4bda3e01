"""Which experts a listing shows, and in what order: the filters and sort keys behind `list_experts` / `count_experts`.

`transferkit list`, source selection, the Python API and the web UI all page through experts with these, so
they run the same SQL. Filters (all optional, combined with AND):

- `task_name`, `method`, `backbone_id`: exact values (indexed columns);
- `strategy`: the transfer strategy recorded with the expert (`pemt`, `spot`, ...; read from its JSON `extra`);
- `tag`: (key, value), value None for any value;
- `exclude_run_kind`: drop experts made by runs of that kind;
- `text`: up to `MAX_TEXT_WORDS` words, each of which must appear, case-insensitively, in the expert's id, name,
  task, method, backbone id or note, in one of its tag keys or values, or in one of its aliases.

Orders: `newest` (the default) and `best` (highest primary dev metric first), or a sort key from `SORT_KEYS`, with
a leading `-` for descending. Experts without a value (no dev metric, no recorded cost) come last either way; ties
go newest first, so paging is stable.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager
from datetime import datetime
from typing import Any

from sqlalchemy import Boolean, ColumnElement, Select, Text, cast, func, nulls_last, or_, select
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.orm import Session

from transferkit.errors import InvalidInputError, NotFoundError
from transferkit.registry.entities import ExpertGroup, ExpertRecord, RunRecord, TaskExperts
from transferkit.registry.mapping import run_record, to_entity
from transferkit.registry.rows import ExpertAliasRow, ExpertRow, ExpertTagRow, RunRow

MIN_ID_PREFIX = 4
_HEX = re.compile(r"[0-9a-fA-F]+")
MAX_TEXT_WORDS = 8
MAX_TEXT_LENGTH = 200
# Sort keys and their columns; `cost` is the own wall seconds of the run that made the expert.
SORT_KEYS = {
    "created": ExpertRow.created_at,
    "name": ExpertRow.name,
    "task": ExpertRow.task_name,
    "method": ExpertRow.method,
    "backbone": ExpertRow.backbone_id,
    "params": ExpertRow.trainable_params,
    "dev": ExpertRow.dev_score,
    "cost": RunRow.wall_seconds,
}
_NAMED = {"newest": "-created", "best": "-dev"}
EXPERT_ORDERS = (*_NAMED, *SORT_KEYS, *(f"-{key}" for key in SORT_KEYS))
_NEWEST = (ExpertRow.created_at.desc(), ExpertRow.id.desc())


def expert_filters(
    query: Select,
    task_name: str | None = None,
    method: str | None = None,
    backbone_id: str | None = None,
    exclude_run_kind: str | None = None,
    tag: tuple[str, str | None] | None = None,
    strategy: str | None = None,
    text: str | None = None,
) -> Select:
    """`query` (over experts) restricted by every given filter."""
    for column, value in (
        (ExpertRow.task_name, task_name),
        (ExpertRow.method, method),
        (ExpertRow.backbone_id, backbone_id),
    ):
        if value is not None:
            query = query.where(column == value)
    if strategy is not None:
        query = query.where(ExpertRow.extra["strategy"].as_string() == strategy)
    if exclude_run_kind is not None:
        made_by_kind = select(RunRow.id).where(RunRow.id == ExpertRow.run_id, RunRow.kind == exclude_run_kind)
        query = query.where(~made_by_kind.exists())
    if tag is not None:
        key, value = tag
        tagged = select(ExpertTagRow.expert_id).where(ExpertTagRow.expert_id == ExpertRow.id, ExpertTagRow.key == key)
        query = query.where((tagged if value is None else tagged.where(ExpertTagRow.value == value)).exists())
    for word in text_words(text):
        query = query.where(_mentions(word))
    return query


def text_words(text: str | None) -> list[str]:
    """The words of a text filter (checked: at most MAX_TEXT_LENGTH characters and MAX_TEXT_WORDS words)."""
    if text is None:
        return []
    if len(text) > MAX_TEXT_LENGTH or not text.isprintable():
        raise InvalidInputError(f"a text filter must be printable text of at most {MAX_TEXT_LENGTH} characters")
    words = list(dict.fromkeys(text.split()))
    if len(words) > MAX_TEXT_WORDS:
        raise InvalidInputError(f"a text filter may have at most {MAX_TEXT_WORDS} words, got {len(words)}")
    return words


class _Mentions(ColumnElement[bool]):
    """`column` contains `word`, ignoring case; % and _ in the word are matched literally.

    ILIKE on PostgreSQL; on SQLite plain LIKE, which already ignores ASCII case exactly as SQLite's lower() does
    (neither folds other letters), at a third of the cost of lower(column) LIKE lower(word) over 100k rows.
    """

    inherit_cache = False  # compiled per dialect below; no SQL cache key of its own
    type = Boolean()

    def __init__(self, column: ColumnElement, word: str) -> None:
        self.column, self.word = column, word


@compiles(_Mentions)
def _mentions_default(element: _Mentions, compiler: Any, **kw: Any) -> str:
    return compiler.process(element.column.icontains(element.word, autoescape=True), **kw)


@compiles(_Mentions, "sqlite")
def _mentions_sqlite(element: _Mentions, compiler: Any, **kw: Any) -> str:
    return compiler.process(element.column.contains(element.word, autoescape=True), **kw)


def _mentions(word: str) -> ColumnElement[bool]:
    def has(column):
        return _Mentions(column, word)

    # Tags and aliases are matched once each (uncorrelated IN), not probed again for every expert row.
    tagged = select(ExpertTagRow.expert_id).where(or_(has(ExpertTagRow.key), has(ExpertTagRow.value)))
    aliased = select(ExpertAliasRow.expert_id).where(has(ExpertAliasRow.alias))
    columns = (ExpertRow.name, ExpertRow.id, ExpertRow.task_name, ExpertRow.method, ExpertRow.backbone_id, ExpertRow.note)
    return or_(*(has(column) for column in columns), ExpertRow.id.in_(tagged), ExpertRow.id.in_(aliased))


def expert_ordering(order: str) -> tuple[tuple[ColumnElement, ...], bool]:
    """ORDER BY clauses for an order name or sort key, and whether they need the experts' runs joined."""
    key = _NAMED.get(order, order)
    name = key.removeprefix("-")
    if name not in SORT_KEYS:
        raise InvalidInputError(f"expert order must be one of {', '.join(EXPERT_ORDERS)}, not {order!r}")
    descending = key.startswith("-")
    if name == "created":
        return (_NEWEST if descending else (ExpertRow.created_at.asc(), ExpertRow.id.asc())), False
    column = SORT_KEYS[name]
    return (nulls_last(column.desc() if descending else column.asc()), *_NEWEST), name == "cost"


def ordered(query: Select, order: str) -> Select:
    """`query` (over experts) sorted by `order`, joining each expert's run when the order needs it."""
    clauses, needs_run = expert_ordering(order)
    if needs_run:
        query = query.join(RunRow, RunRow.id == ExpertRow.run_id)
    return query.order_by(*clauses)


def page_query(filtered_ids: Select, order: str, limit: int | None, offset: int) -> Select:
    """Whole expert rows of one page: the page's ids are chosen first, sorting narrow rows (id and sort key),
    and only those rows are read in full (sorting 100k whole rows for 50 costs ten times as much on SQLite)."""
    page = ordered(filtered_ids, order).offset(offset).limit(limit).subquery()
    return ordered(select(ExpertRow).join(page, page.c.id == ExpertRow.id), order)


class SqlExpertQueries:
    """Finding experts over the registry's SQLAlchemy session (mixed into `SqlAlchemyStore`)."""

    _transaction: Callable[..., AbstractContextManager[Session]]  # SqlAlchemyStore's: one short transaction

    def get_expert(self, id_or_name: str) -> ExpertRecord:
        with self._transaction() as session:
            row = session.get(ExpertRow, id_or_name) or session.scalar(
                select(ExpertRow).where(ExpertRow.name == id_or_name)
            )
            if row is None:  # an alias (transferkit.registry.curation): names win, so an alias never hides one
                row = session.scalar(select(ExpertRow).join(ExpertAliasRow, ExpertAliasRow.expert_id == ExpertRow.id)
                                     .where(ExpertAliasRow.alias == id_or_name))
            if row is None and len(id_or_name) >= MIN_ID_PREFIX and _HEX.fullmatch(id_or_name):
                # Ids are lowercase hex: a case-insensitive prefix on every backend, as an index range scan.
                # Every hex string starting with the prefix sorts between it and prefix + "g" (in C and
                # in natural-language collations alike: digits < letters, and "g" follows "f").
                prefix = id_or_name.lower()
                in_range = (ExpertRow.id >= prefix) & (ExpertRow.id < prefix + "g")
                matches = session.scalars(select(ExpertRow).where(in_range).order_by(ExpertRow.id).limit(10)).all()
                if len(matches) > 1:
                    listed = ", ".join(f"{m.id} ({m.name})" for m in matches)
                    raise InvalidInputError(
                        f"id prefix {id_or_name!r} matches several experts: {listed}; "
                        "give more characters of the id or the full name"
                    )
                row = matches[0] if matches else None
            if row is None:
                # Suggestions from a bounded sample of names: a typo must not read 100k rows.
                names = session.scalars(select(ExpertRow.name).order_by(ExpertRow.created_at.desc()).limit(5000)).all()
                close = difflib.get_close_matches(id_or_name, names, n=5)
                hint = f" (closest names: {', '.join(close)})" if close else ""
                raise NotFoundError(
                    f"no expert has the id, name or alias {id_or_name!r}{hint}; "
                    "run `transferkit list` to see the stored experts"
                )
            return to_entity(ExpertRecord, row)

    def list_experts(
        self,
        *,
        task_name: str | None = None,
        method: str | None = None,
        backbone_id: str | None = None,
        exclude_run_kind: str | None = None,
        tag: tuple[str, str | None] | None = None,
        strategy: str | None = None,
        text: str | None = None,
        order: str = "newest",
        limit: int | None = None,
        offset: int = 0,
    ) -> list[ExpertRecord]:
        if (limit is not None and limit < 0) or offset < 0:
            raise InvalidInputError(f"limit and offset must not be negative (got limit={limit}, offset={offset})")
        ids = expert_filters(select(ExpertRow.id), task_name, method, backbone_id, exclude_run_kind, tag, strategy, text)
        query = page_query(ids, order, limit, offset)
        with self._transaction() as session:
            return [to_entity(ExpertRecord, row) for row in session.scalars(query)]

    def count_experts(
        self, *, task_name: str | None = None, method: str | None = None, backbone_id: str | None = None,
        tag: tuple[str, str | None] | None = None, strategy: str | None = None, text: str | None = None,
    ) -> int:
        query = select(func.count()).select_from(ExpertRow)
        query = expert_filters(query, task_name, method, backbone_id, tag=tag, strategy=strategy, text=text)
        with self._transaction() as session:
            return int(session.scalar(query) or 0)

    def count_experts_by_task_and_method(
        self, *, backbone_id: str, methods: Collection[str], exclude_run_kind: str | None = None
    ) -> list[ExpertGroup]:
        columns = (ExpertRow.task_name, ExpertRow.method)
        query = select(*columns, func.count(), func.max(ExpertRow.created_at)).select_from(ExpertRow)
        query = expert_filters(query, None, None, backbone_id, exclude_run_kind).where(ExpertRow.method.in_(list(methods)))
        query = query.group_by(*columns).order_by(*columns)
        with self._transaction() as session:
            return [ExpertGroup(task, method, count, newest) for task, method, count, newest in session.execute(query)]

    def best_experts_per_task(
        self,
        task_names: Collection[str],
        per_task: int,
        *,
        method: str | None = None,
        backbone_id: str | None = None,
        exclude_run_kind: str | None = None,
    ) -> dict[str, TaskExperts]:
        if per_task < 0:
            raise InvalidInputError(f"per_task must not be negative, got {per_task}")
        partition = {"partition_by": ExpertRow.task_name}
        ranked = select(
            ExpertRow.id,
            func.row_number().over(**partition, order_by=expert_ordering("best")[0]).label("rank"),
            func.count().over(**partition).label("total"),
        ).where(ExpertRow.task_name.in_(list(task_names)))
        ranked = expert_filters(ranked, None, method, backbone_id, exclude_run_kind).subquery()
        query = (
            select(ExpertRow, ranked.c.total)
            .join(ranked, ranked.c.id == ExpertRow.id)
            .where(ranked.c.rank <= max(per_task, 1))  # the first row carries the count even when none are wanted
            .order_by(ExpertRow.task_name, ranked.c.rank)
        )
        found: dict[str, TaskExperts] = {}
        with self._transaction() as session:
            for row, total in session.execute(query):
                group = found.setdefault(row.task_name, TaskExperts(row.task_name, int(total), []))
                if len(group.best) < per_task:
                    group.best.append(to_entity(ExpertRecord, row))
        return found


    def list_expert_runs(
        self, *, task_name: str | None = None, since: datetime | None = None, expert_ids: Collection[str] | None = None,
        command_contains: str | None = None,
    ) -> list[tuple[ExpertRecord, RunRecord]]:
        query = select(ExpertRow, RunRow).join(RunRow, RunRow.id == ExpertRow.run_id)  # one query, not N+1
        if task_name is not None:
            query = query.where(ExpertRow.task_name == task_name)
        if since is not None:
            query = query.where(ExpertRow.created_at >= since)
        if expert_ids is not None:
            query = query.where(ExpertRow.id.in_(list(expert_ids)))
        if command_contains is not None:  # the JSON list's text; the exact argument is checked by the caller
            query = query.where(cast(RunRow.command, Text).contains(command_contains, autoescape=True))
        query = query.order_by(ExpertRow.created_at, ExpertRow.id)
        with self._transaction() as session:
            return [(to_entity(ExpertRecord, e), run_record(r)) for e, r in session.execute(query)]
