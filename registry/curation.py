"""Curating a registry: notes, MLflow-style tags, aliases, and deleting experts without breaking others.

Tags: `key` or `key=value` (a bare key has the value ''), as in MLflow: keys up to 250 characters of letters,
digits and `_ - . / :` and space; values up to 5,000 characters. Keys starting with `transferkit.` are
written by transferkit itself (e.g. on the experts a forced delete orphaned) and cannot be set by hand.

Aliases: a name that resolves wherever an expert name does (`get_expert`): exact id, then exact name, then
alias, then id prefix. The alias is the primary key of its row, so moving it is one UPDATE inside one write
transaction: a reader sees the old or the new expert, never neither. An alias may not spell an existing
expert's id or name, since those resolve first and the alias would never be reached.

Delete: an expert that other experts were made from (any lineage edge out of it) is refused, naming them,
unless forced; a forced delete removes those edges, marks each orphan with the tag
`transferkit.deleted-parents`, and reports which orphans can no longer be loaded (a mixture reads its
`source` parents at load time; spot, merged and reproduced experts hold their own tensors). The expert's
tags, aliases and evaluations go with it; its run and cost rows stay, and its blob, once no expert
references it, is reclaimed by `transferkit gc`.
"""

from __future__ import annotations

import abc
import re
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import AbstractContextManager
from datetime import datetime, timezone

from sqlalchemy import delete, func, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from transferkit.errors import InvalidInputError, NotFoundError, RegistryError
from transferkit.registry.entities import Deletion, Dependent, ExpertCuration
from transferkit.registry.rows import EvaluationRow, ExpertAliasRow, ExpertRow, ExpertTagRow, LineageEdgeRow

MAX_TAG_KEY = 250
MAX_TAG_VALUE = 5000
MAX_NOTE = 20_000
MAX_ALIAS = 200
SYSTEM_TAG_PREFIX = "transferkit."
DELETED_PARENTS_TAG = SYSTEM_TAG_PREFIX + "deleted-parents"
# The lineage role whose parent a child reads whenever it is loaded (a mixture's sources).
LOAD_TIME_ROLE = "source"
_TAG_KEY = re.compile(r"^[A-Za-z0-9_\-./: ]+$")
_ALIAS = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


def parse_tag(text: str) -> tuple[str, str]:
    """`key` or `key=value` (split at the first '='), checked."""
    key, _, value = text.partition("=")
    check_tag(key, value)
    return key, value


def check_tag(key: str, value: str) -> None:
    if not key or key != key.strip() or len(key) > MAX_TAG_KEY or not _TAG_KEY.match(key):
        raise InvalidInputError(
            f"tag key {key!r} must be 1-{MAX_TAG_KEY} characters of letters, digits, '_-./:' and inner spaces "
            "(write key or key=value)"
        )
    if len(value) > MAX_TAG_VALUE or not value.isprintable():
        raise InvalidInputError(f"the value of tag {key!r} must be printable text of at most {MAX_TAG_VALUE:,} characters")


def check_alias(alias: str) -> None:
    if not isinstance(alias, str) or len(alias) > MAX_ALIAS or not _ALIAS.match(alias):
        raise InvalidInputError(
            f"alias {alias!r} must be 1-{MAX_ALIAS} characters of letters, digits, '.', '_' and '-', starting with a letter or digit"
        )


class CurationStore(abc.ABC):
    """The curation half of a registry (implemented for SQL databases by `SqlCuration`)."""

    @abc.abstractmethod
    def curation(self, expert_id: str) -> ExpertCuration:
        """The note, tags and aliases of the expert with this exact id."""

    @abc.abstractmethod
    def curations(self, expert_ids: Collection[str]) -> dict[str, ExpertCuration]:
        """Curation of several experts at once (three queries, whatever their number)."""

    @abc.abstractmethod
    def set_note(self, expert_id: str, note: str | None) -> ExpertCuration:
        """Replace the expert's note (None or '' removes it)."""

    @abc.abstractmethod
    def set_tags(self, expert_id: str, tags: Mapping[str, str]) -> ExpertCuration:
        """Add tags or overwrite their values."""

    @abc.abstractmethod
    def remove_tags(self, expert_id: str, keys: Collection[str]) -> ExpertCuration:
        """Remove tags; a key the expert does not have is refused (nothing is removed)."""

    @abc.abstractmethod
    def set_alias(self, alias: str, expert_id: str) -> str | None:
        """Point `alias` at the expert, atomically; returns the id it pointed at before (None if it is new)."""

    @abc.abstractmethod
    def remove_alias(self, alias: str) -> str:
        """Remove an alias; returns the id it pointed at."""

    @abc.abstractmethod
    def list_aliases(self) -> dict[str, str]:
        """Every alias and the id it points at, by alias."""

    @abc.abstractmethod
    def dependents(self, expert_id: str) -> list[Dependent]:
        """Experts made from this one (lineage children), and whether each needs it to load."""

    @abc.abstractmethod
    def delete_expert(self, expert_id: str, *, force: bool = False) -> Deletion:
        """Remove the expert, refused while others depend on it unless `force` (see the module docstring)."""


class SqlCuration(CurationStore):
    """`CurationStore` over the registry's SQLAlchemy session (mixed into `SqlAlchemyStore`)."""

    _transaction: Callable[..., AbstractContextManager[Session]]  # SqlAlchemyStore's: one short transaction

    def curation(self, expert_id: str) -> ExpertCuration:
        return self.curations([expert_id])[expert_id]

    def curations(self, expert_ids: Collection[str]) -> dict[str, ExpertCuration]:
        ids = list(dict.fromkeys(expert_ids))
        with self._transaction() as session:
            notes = dict(session.execute(select(ExpertRow.id, ExpertRow.note).where(ExpertRow.id.in_(ids))).all())
            missing = [i for i in ids if i not in notes]
            if missing:
                raise NotFoundError(f"no expert has the id {missing[0]!r}; run `transferkit list` to see the stored experts")
            return _collect(session, ids, notes)

    def set_note(self, expert_id: str, note: str | None) -> ExpertCuration:
        if note is not None and (len(note) > MAX_NOTE or "\x00" in note):
            raise InvalidInputError(f"a note must be text of at most {MAX_NOTE:,} characters without NUL")
        with self._transaction(write=True) as session:
            _expert_row(session, expert_id).note = note or None
            session.flush()
            return _collect(session, [expert_id], {expert_id: note or None})[expert_id]

    def set_tags(self, expert_id: str, tags: Mapping[str, str]) -> ExpertCuration:
        for key, value in tags.items():
            check_tag(key, value)
            if key.startswith(SYSTEM_TAG_PREFIX):
                raise InvalidInputError(f"tag keys starting with {SYSTEM_TAG_PREFIX!r} are transferkit's own; choose another key")
        with self._transaction(write=True) as session:
            row = _expert_row(session, expert_id)
            for key, value in tags.items():
                session.merge(ExpertTagRow(expert_id=expert_id, key=key, value=value))
            session.flush()
            return _collect(session, [expert_id], {expert_id: row.note})[expert_id]

    def remove_tags(self, expert_id: str, keys: Collection[str]) -> ExpertCuration:
        with self._transaction(write=True) as session:
            row = _expert_row(session, expert_id)
            present = set(session.scalars(select(ExpertTagRow.key).where(ExpertTagRow.expert_id == expert_id)))
            absent = [key for key in keys if key not in present]
            if absent:
                having = ", ".join(sorted(present)) or "none"
                raise NotFoundError(f"expert {row.name} has no tag {absent[0]!r} (its tags: {having})")
            session.execute(delete(ExpertTagRow).where(ExpertTagRow.expert_id == expert_id, ExpertTagRow.key.in_(list(keys))))
            return _collect(session, [expert_id], {expert_id: row.note})[expert_id]

    def set_alias(self, alias: str, expert_id: str) -> str | None:
        check_alias(alias)
        try:
            return self._point_alias(alias, expert_id)
        except IntegrityError:  # PostgreSQL: another writer created the same alias between our read and insert
            return self._point_alias(alias, expert_id)

    def _point_alias(self, alias: str, expert_id: str) -> str | None:
        with self._transaction(write=True) as session:
            _expert_row(session, expert_id)
            clash = session.scalar(select(ExpertRow.name).where((ExpertRow.name == alias) | (ExpertRow.id == alias)))
            if clash is not None:
                raise InvalidInputError(
                    f"{alias!r} is already the id or name of expert {clash}, which would always win over the alias; choose another alias"
                )
            row = session.get(ExpertAliasRow, alias, with_for_update=True)
            previous = None if row is None else row.expert_id
            if row is None:
                session.add(ExpertAliasRow(alias=alias, expert_id=expert_id, updated_at=_now()))
            else:
                row.expert_id, row.updated_at = expert_id, _now()
            session.flush()
            return previous

    def remove_alias(self, alias: str) -> str:
        with self._transaction(write=True) as session:
            row = session.get(ExpertAliasRow, alias)
            if row is None:
                known = ", ".join(session.scalars(select(ExpertAliasRow.alias).order_by(ExpertAliasRow.alias).limit(20))) or "none"
                raise NotFoundError(f"no alias {alias!r} (aliases: {known})")
            session.delete(row)
            return row.expert_id

    def list_aliases(self) -> dict[str, str]:
        with self._transaction() as session:
            return dict(session.execute(select(ExpertAliasRow.alias, ExpertAliasRow.expert_id).order_by(ExpertAliasRow.alias)).all())

    def dependents(self, expert_id: str) -> list[Dependent]:
        with self._transaction() as session:
            _expert_row(session, expert_id)
            return list(_dependents(session, expert_id))

    def delete_expert(self, expert_id: str, *, force: bool = False) -> Deletion:
        try:
            return self._delete(expert_id, force)
        except IntegrityError as error:  # PostgreSQL: a new child or evaluation arrived after our checks
            raise RegistryError(
                f"expert {expert_id} gained a dependent while it was being deleted; nothing was deleted, run delete again"
            ) from error

    def _delete(self, expert_id: str, force: bool) -> Deletion:
        with self._transaction(write=True) as session:
            # FOR UPDATE: on PostgreSQL a concurrent writer adding an edge or a tag to this expert waits for us.
            row = session.get(ExpertRow, expert_id, with_for_update=True)
            if row is None:
                raise NotFoundError(f"no expert has the id {expert_id!r}; run `transferkit list` to see the stored experts")
            orphans = list(_dependents(session, expert_id))
            if orphans and not force:
                listed = ", ".join(f"{d.child_name} ({d.role})" for d in orphans[:10])
                more = f" and {len(orphans) - 10} more" if len(orphans) > 10 else ""
                raise InvalidInputError(
                    f"expert {row.name} cannot be deleted: {len(orphans)} expert(s) were made from it ({listed}{more}); "
                    "delete those first, or pass --force to orphan them"
                )
            curation = _collect(session, [expert_id], {expert_id: row.note})[expert_id]
            evaluations = session.scalar(select(func.count()).select_from(EvaluationRow).where(EvaluationRow.expert_id == expert_id))
            for orphan in orphans:
                _mark_orphan(session, orphan.child_id, f"{row.id} ({row.name}, {orphan.role})")
            shared = session.scalar(
                select(func.count()).select_from(ExpertRow).where(ExpertRow.artifact_uri == row.artifact_uri, ExpertRow.id != expert_id)
            )
            edges = LineageEdgeRow.parent_id == expert_id
            session.execute(delete(LineageEdgeRow).where(edges | (LineageEdgeRow.child_id == expert_id)))
            for table in (ExpertTagRow, ExpertAliasRow, EvaluationRow):
                session.execute(delete(table).where(table.expert_id == expert_id))
            session.delete(row)
            session.flush()
            return Deletion(
                expert_id=row.id, expert_name=row.name, run_id=row.run_id, artifact_uri=row.artifact_uri,
                artifact_shared=bool(shared), orphaned=orphans, aliases=curation.aliases, tags=curation.tags,
                evaluations=int(evaluations or 0),
            )


def _expert_row(session: Session, expert_id: str) -> ExpertRow:
    row = session.get(ExpertRow, expert_id)
    if row is None:
        raise NotFoundError(f"no expert has the id {expert_id!r}; run `transferkit list` to see the stored experts")
    return row


def _collect(session: Session, ids: list[str], notes: Mapping[str, str | None]) -> dict[str, ExpertCuration]:
    tags: dict[str, dict[str, str]] = {i: {} for i in ids}
    for expert_id, key, value in session.execute(
        select(ExpertTagRow.expert_id, ExpertTagRow.key, ExpertTagRow.value).where(ExpertTagRow.expert_id.in_(ids)).order_by(ExpertTagRow.key)
    ):
        tags[expert_id][key] = value
    aliases: dict[str, list[str]] = {i: [] for i in ids}
    for alias, expert_id in session.execute(
        select(ExpertAliasRow.alias, ExpertAliasRow.expert_id).where(ExpertAliasRow.expert_id.in_(ids)).order_by(ExpertAliasRow.alias)
    ):
        aliases[expert_id].append(alias)
    return {i: ExpertCuration(i, notes.get(i), tags[i], aliases[i]) for i in ids}


def _dependents(session: Session, expert_id: str) -> Iterator[Dependent]:
    query = (
        select(LineageEdgeRow.child_id, ExpertRow.name, LineageEdgeRow.role)
        .join(ExpertRow, ExpertRow.id == LineageEdgeRow.child_id)
        .where(LineageEdgeRow.parent_id == expert_id)
        .order_by(ExpertRow.name, LineageEdgeRow.role)
    )
    for child_id, name, role in session.execute(query):
        yield Dependent(child_id, name, role, needs_parent_to_load=role == LOAD_TIME_ROLE)


def _mark_orphan(session: Session, child_id: str, parent: str) -> None:
    """Record on the child which parent a forced delete took from it (its lineage edge is gone)."""
    tag = session.get(ExpertTagRow, (child_id, DELETED_PARENTS_TAG))
    if tag is None:
        session.add(ExpertTagRow(expert_id=child_id, key=DELETED_PARENTS_TAG, value=parent))
    elif parent not in tag.value.split("; "):
        tag.value = f"{tag.value}; {parent}"[:MAX_TAG_VALUE]


def restore_curation(session: Session, curations: Collection[ExpertCuration], aliases_taken: dict[str, str]) -> list[str]:
    """Write a bundle's curation for experts just restored: notes where none is set, tags merged, aliases that are
    free or already point at the same expert. Returns the aliases skipped because they point elsewhere here."""
    skipped = []
    for item in curations:
        for key, value in item.tags.items():
            check_tag(key, value)
            session.merge(ExpertTagRow(expert_id=item.expert_id, key=key, value=value))
        row = session.get(ExpertRow, item.expert_id)
        if row is not None and item.note and not row.note:
            row.note = item.note
        for alias in item.aliases:
            check_alias(alias)
            if session.scalar(select(ExpertRow.id).where((ExpertRow.name == alias) | (ExpertRow.id == alias))) is not None:
                skipped.append(alias)  # an expert's own id or name would always win over it here
                continue
            holder = aliases_taken.get(alias)
            if holder is None:
                session.add(ExpertAliasRow(alias=alias, expert_id=item.expert_id, updated_at=_now()))
                aliases_taken[alias] = item.expert_id
            elif holder != item.expert_id:
                skipped.append(alias)
    return skipped


def _now() -> datetime:
    return datetime.now(timezone.utc)
