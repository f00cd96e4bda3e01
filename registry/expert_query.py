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

from typing import Any

from sqlalchemy import Boolean, ColumnElement, Select, nulls_last, or_, select
from sqlalchemy.ext.compiler import compiles

from transferkit.errors import InvalidInputError
from transferkit.registry.rows import ExpertAliasRow, ExpertRow, ExpertTagRow, RunRow

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
