"""The registry in any SQLAlchemy database (SQLite and PostgreSQL through psycopg are tested).

Each method is one short transaction and returns entities, never rows. Expert artifacts are
safetensors blobs in a content-addressed artifact store (a local folder or any fsspec URL); their
sha256 is recorded in the database and checked before every read. Task similarity search goes
through `transferkit.registry.search` (numpy over cached vectors, or pgvector inside PostgreSQL).
Write transactions take the database's write lock first (`transferkit.registry.engines`).

The store is assembled from one mixin per concern: browsing experts (`expert_query`), reading
artifacts (`expert_artifacts`), lineage (`lineage_queries`), restore, curation and evaluations.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import Engine, func, select, text, update
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from transferkit.errors import InvalidInputError, NotFoundError, RegistryError
from transferkit.registry.abstract_store import RegistryStore
from transferkit.registry.artifacts import ArtifactStore, canonical_safetensors
from transferkit.registry.curation import SqlCuration
from transferkit.registry.engines import first_line, lock_sqlite_for_writing
from transferkit.registry.entities import RUN_STATUSES, ExpertRecord, RunRecord, TaskMatch, TaskRecord
from transferkit.registry.evaluations import SqlEvaluations
from transferkit.registry.expert_artifacts import VerifiedArtifacts
from transferkit.registry.expert_query import SqlExpertQueries
from transferkit.registry.lineage_queries import SqlLineage, checked_lineage
from transferkit.registry.liveness import DEFAULT_MAX_SILENCE, abandonment, current_process
from transferkit.registry.locations import default_checkpoint_root
from transferkit.registry.mapping import dev_score, require_name, run_record, split_cost, to_entity
from transferkit.registry.restore import SqlRestore
from transferkit.registry.rows import CounterRow, ExpertRow, LineageEdgeRow, RunRow, TaskRow

if TYPE_CHECKING:  # torch and numpy are imported lazily: `transferkit list` should not pay for them
    import torch

    from transferkit.registry.search import TaskSearchIndex

_NAME_RACE_ATTEMPTS = 5
# Advisory-lock key space (any int4 unique to this use) for choosing default expert names on PostgreSQL.
_NAME_LOCK_SPACE = 0x746B_6E6D  # "tknm"


class SqlAlchemyStore(
    SqlExpertQueries, VerifiedArtifacts, SqlLineage, SqlRestore, SqlCuration, SqlEvaluations, RegistryStore
):
    """A registry in any SQLAlchemy database, with artifacts in a content-addressed store (folder or fsspec URL)."""

    def __init__(
        self, engine: Engine, artifacts: ArtifactStore, search_index: TaskSearchIndex | None = None,
        checkpoint_root: Path | None = None,
    ) -> None:
        self.engine = engine
        self.artifacts = artifacts
        # Training checkpoints of unfinished runs, one folder per run id (see transferkit.training.checkpoint).
        self.checkpoint_root = checkpoint_root or default_checkpoint_root(artifacts)
        self._sessions = sessionmaker(engine, expire_on_commit=False)
        self._shown_url = engine.url.render_as_string(hide_password=True)
        self._search_index = search_index

    @property
    def search_index(self) -> TaskSearchIndex:
        """pgvector inside PostgreSQL when the extension can be used, else numpy over a local cache (chosen on first use)."""
        if self._search_index is None:
            from transferkit.registry.search import default_search_index  # numpy: only when searching

            self._search_index = default_search_index(self.engine)
        return self._search_index

    @search_index.setter
    def search_index(self, index: TaskSearchIndex) -> None:
        self._search_index = index

    def close(self) -> None:
        """Release pooled connections (lets tests and long-lived processes drop the database file)."""
        self.engine.dispose()

    @contextmanager
    def _transaction(self, write: bool = False) -> Iterator[Session]:
        """One short transaction; `write=True` takes the write lock before the body runs."""
        try:
            with self._sessions.begin() as session:
                if write and self.engine.dialect.name == "sqlite":
                    lock_sqlite_for_writing(session, self._shown_url)
                yield session
        except OperationalError as error:
            raise RegistryError(
                f"the registry {self._shown_url} could not be read or written ({first_line(error)}); "
                "check free disk space and permissions, then retry"
            ) from error

    # tasks

    def upsert_task(self, task: TaskRecord) -> TaskRecord:
        require_name(task.name, "task name")
        try:
            self._merge_task(task)
        except IntegrityError:  # another process inserted the same task between our read and our insert
            self._merge_task(task)
        return task

    def _merge_task(self, task: TaskRecord) -> None:
        with self._transaction(write=True) as session:
            # First statement of the transaction: takes SQLite's write lock at once, and on PostgreSQL the row lock
            # orders writers, so revisions commit in increasing order (what incremental search caches rely on).
            bump = update(CounterRow).where(CounterRow.name == "tasks").values(value=CounterRow.value + 1)
            revision = session.execute(bump.returning(CounterRow.value)).scalar_one()
            session.merge(TaskRow(**asdict(task), revision=revision))

    def get_task(self, name: str) -> TaskRecord | None:
        with self._transaction() as session:
            row = session.get(TaskRow, name)
            return None if row is None else to_entity(TaskRecord, row)

    def list_tasks(self, names: Collection[str] | None = None, *, limit: int | None = None, offset: int = 0) -> list[TaskRecord]:
        if (limit is not None and limit < 0) or offset < 0:
            raise InvalidInputError(f"limit and offset must not be negative (got limit={limit}, offset={offset})")
        query = select(TaskRow).order_by(TaskRow.name).offset(offset).limit(limit)
        if names is not None:
            query = query.where(TaskRow.name.in_(list(names)))
        with self._transaction() as session:
            return [to_entity(TaskRecord, row) for row in session.scalars(query)]

    def count_tasks(self) -> int:
        with self._transaction() as session:
            return int(session.scalar(select(func.count()).select_from(TaskRow)) or 0)

    # runs

    def start_run(
        self,
        kind: str,
        command: list[str],
        hyperparams: dict,
        seed: int | None,
        code_version: dict,
        package_versions: dict,
        data_fingerprint: dict,
    ) -> RunRecord:
        require_name(kind, "run kind")
        row = RunRow(
            id=_new_id(),
            kind=kind,
            status="running",
            command=list(command),
            hyperparams=hyperparams,
            seed=seed,
            code_version=code_version,
            package_versions=package_versions,
            data_fingerprint=data_fingerprint,
            started_at=_now(),
            cost_extra={},
        )
        row.host, row.pid = current_process()
        row.heartbeat_at = row.started_at
        with self._transaction(write=True) as session:
            session.add(row)
            session.flush()
            return run_record(row)

    def finish_run(self, run_id: str, status: str, cost: dict, error: str | None = None) -> RunRecord:
        if status not in RUN_STATUSES[1:]:
            raise InvalidInputError(f"a run can only finish as one of {', '.join(RUN_STATUSES[1:])}, not {status!r}")
        cost_values = split_cost(cost)
        with self._transaction(write=True) as session:
            row = _running_run(session, run_id)
            _close_run(row, status, cost_values, error)
            return run_record(row)

    def get_run(self, run_id: str) -> RunRecord:
        with self._transaction() as session:
            return run_record(_run_row(session, run_id))

    def list_runs(
        self, *, kind: str | None = None, statuses: Sequence[str] | None = None, limit: int | None = None, offset: int = 0
    ) -> list[RunRecord]:
        if (limit is not None and limit < 0) or offset < 0:
            raise InvalidInputError(f"limit and offset must not be negative (got limit={limit}, offset={offset})")
        query = select(RunRow).order_by(RunRow.started_at.desc(), RunRow.id.desc()).offset(offset).limit(limit)
        if kind is not None:
            query = query.where(RunRow.kind == kind)
        if statuses is not None:
            query = query.where(RunRow.status.in_(list(statuses)))
        with self._transaction() as session:
            return [run_record(row) for row in session.scalars(query)]

    def reopen_run(self, run_id: str, max_silence: timedelta = DEFAULT_MAX_SILENCE) -> RunRecord:
        with self._transaction(write=True) as session:
            row = _run_row(session, run_id)
            if row.status == "finished":
                raise InvalidInputError(f"run {run_id} has finished; there is nothing to resume")
            if row.status == "running" and abandonment(run_record(row), max_silence) is None:
                raise InvalidInputError(
                    f"run {run_id} is still running (process {row.pid} on {row.host}); wait for it to end "
                    "or stop it before resuming"
                )
            row.status, row.ended_at, row.error = "running", None, None
            row.host, row.pid = current_process()
            row.heartbeat_at = _now()
            return run_record(row)

    def heartbeat(self, run_id: str) -> None:
        with self._transaction(write=True) as session:
            row = _run_row(session, run_id)
            if row.status == "running":
                row.heartbeat_at = _now()

    def fail_abandoned_run(self, run_id: str, max_silence: timedelta = DEFAULT_MAX_SILENCE) -> str | None:
        with self._transaction(write=True) as session:  # checked under the lock: a resume may have just reopened it
            row = _run_row(session, run_id)
            reason = abandonment(run_record(row), max_silence)
            if reason is not None:
                _close_run(row, "failed", split_cost({}), f"closed by transferkit gc: {reason}")
            return reason

    # experts

    def unique_expert_name(self, base: str) -> str:
        require_name(base, "expert name")
        with self._transaction() as session:
            return _free_name(session, base)

    def register_expert(
        self,
        *,
        run_id: str,
        name: str,
        task_name: str,
        method: str,
        config: dict,
        backbone: dict,
        backbone_id: str,
        trainable_params: int,
        metrics: dict,
        tensors: dict[str, torch.Tensor],
        tensor_metadata: dict[str, str],
        lineage: Sequence[tuple[str, str, float | None]] = (),
        extra: dict | None = None,
        cost: dict | None = None,
        name_is_base: bool = False,
    ) -> ExpertRecord:
        require_name(name, "expert name")
        cost_values = None if cost is None else split_cost(cost)
        edges = checked_lineage(lineage)
        blob = canonical_safetensors(tensors, tensor_metadata)
        for attempt in range(_NAME_RACE_ATTEMPTS):
            row = ExpertRow(
                id=_new_id(), name=name, task_name=task_name, method=method, config=config, backbone=backbone,
                backbone_id=backbone_id, trainable_params=int(trainable_params), metrics=metrics, dev_score=dev_score(metrics), run_id=run_id,
                extra=extra or {},
            )
            try:
                return self._insert_expert(row, name_is_base, cost_values, edges, blob)
            except IntegrityError as error:  # lost a race for the name (SQLite holds the write lock, so: other databases)
                if self.unique_expert_name(name) == name:
                    raise
                if not name_is_base or attempt == _NAME_RACE_ATTEMPTS - 1:
                    raise _name_taken(name) from error
        raise AssertionError("unreachable")

    def _insert_expert(
        self, row: ExpertRow, name_is_base: bool, cost_values: dict | None, edges: list[tuple[str, str, float | None]], blob: bytes
    ) -> ExpertRecord:
        with self._transaction(write=True) as session:
            run = _running_run(session, row.run_id) if cost_values is not None else _run_row(session, row.run_id)
            if session.get(TaskRow, row.task_name) is None:
                raise NotFoundError(
                    f"task {row.task_name!r} is not in the registry; register it (upsert_task) before its experts"
                )
            if name_is_base:
                _take_turns_naming(session, row.name)
                row.name = _free_name(session, row.name)
            elif session.scalar(select(ExpertRow.id).where(ExpertRow.name == row.name)) is not None:
                raise _name_taken(row.name)
            parents = {parent for parent, _, _ in edges}
            missing = parents - set(session.scalars(select(ExpertRow.id).where(ExpertRow.id.in_(parents))))
            if missing:
                raise NotFoundError(
                    f"lineage parent expert(s) {', '.join(sorted(missing))} do not exist; "
                    "pass the ids of stored experts (see `transferkit list`)"
                )
            # The blob goes first: a row must never point at a file that is not there yet. A crash between the
            # two leaves an unreferenced blob (removed by `transferkit gc`), never a row without its file.
            row.artifact_uri, row.artifact_sha256, row.artifact_bytes = self.artifacts.put(blob)
            row.created_at = _now()
            session.add(row)
            session.flush()  # the expert must exist before edges reference it (SQLite checks FKs per statement)
            # The child id is new, so no edge can close a cycle; the CHECK constraint rejects parent == child.
            session.add_all(LineageEdgeRow(parent_id=p, child_id=row.id, role=r, weight=w) for p, r, w in edges)
            if cost_values is not None:
                _close_run(run, "finished", cost_values, None)
            session.flush()
            return to_entity(ExpertRecord, row)

    # search

    def nearest_tasks(
        self, query: Sequence[float], embedder_id: str, limit: int | None = None, among: Collection[str] | None = None
    ) -> list[TaskMatch]:
        if limit is not None and limit < 1:
            raise InvalidInputError(f"a search needs a limit of at least 1, got {limit}")
        try:
            return self.search_index.nearest(query, embedder_id, limit, among)
        except OperationalError as error:
            raise RegistryError(f"the registry {self._shown_url} could not be searched ({first_line(error)}); retry") from error

    # artifacts

    def remove_unreferenced_artifacts(self, uris: Sequence[str], min_age: timedelta) -> list[str]:
        removed = []
        with self._transaction(write=True) as session:
            referenced = set(session.scalars(select(ExpertRow.artifact_uri)))
            for uri in uris:
                if uri not in referenced and self.artifacts.remove(uri, min_age):
                    removed.append(uri)
        return removed


def _close_run(row: RunRow, status: str, cost_values: dict[str, Any], error: str | None) -> None:
    row.status, row.ended_at, row.error = status, _now(), error
    for key, value in cost_values.items():
        setattr(row, key, value)


def _take_turns_naming(session: Session, base: str) -> None:
    """PostgreSQL: writers choosing a free name from one base wait for each other until commit.

    Without it, two transactions see the same free name and one fails on the unique constraint (the
    blob write inside the transaction makes that window wide). SQLite's write lock already serialises them.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:space, hashtext(:base))"), {"space": _NAME_LOCK_SPACE, "base": base})


def _free_name(session: Session, base: str) -> str:
    """`base`, or the first of `base-2`, `base-3`, ... that no expert has."""
    taken = set(
        session.scalars(
            select(ExpertRow.name).where((ExpertRow.name == base) | ExpertRow.name.startswith(f"{base}-", autoescape=True))
        )
    )
    candidate, suffix = base, 1
    while candidate in taken:
        suffix += 1
        candidate = f"{base}-{suffix}"
    return candidate


def _run_row(session: Session, run_id: str) -> RunRow:
    row = session.get(RunRow, run_id)
    if row is None:
        raise NotFoundError(
            f"no run has the id {run_id!r}; start a run (start_run) before finishing it or storing its expert"
        )
    return row


def _running_run(session: Session, run_id: str) -> RunRow:
    row = _run_row(session, run_id)
    if row.status != "running":
        raise InvalidInputError(f"run {run_id} is already {row.status}; start a new run instead of finishing it again")
    return row


def _name_taken(name: str) -> InvalidInputError:
    return InvalidInputError(
        f"an expert named {name!r} already exists; choose another name or let transferkit pick one"
    )


def _new_id() -> str:
    return uuid.uuid4().hex[:12]


def _now() -> datetime:
    return datetime.now(timezone.utc)
