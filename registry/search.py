"""Task similarity search served from the registry.

Every task row carries its description embedding (float32 bytes) and a revision: the
value of the `tasks` counter when it was last written (migration 0002). Revisions commit
in increasing order, so an index that has seen revision R brings itself up to date by
reading only the rows with a larger revision: one primary-key read per query when nothing
changed. Two interchangeable indexes rank tasks by cosine similarity, ties by task name:

- `NumpyTaskIndex` (default): brute force, one matrix-vector product over the
  L2-normalised vectors of one embedder. The matrix is cached on disk per registry and
  embedder (`<cache dir>/search/`), so a new process does not re-read every embedding.
- `PgvectorTaskIndex` (PostgreSQL with the pgvector extension): the vectors are copied
  into a derived table inside the database (`transferkit_task_vectors`, not part of the
  Alembic schema: it can be dropped at any time) and PostgreSQL ranks them with `<=>`
  (cosine distance, exact scan). Used automatically when the extension is installed or
  can be created; otherwise a PostgreSQL registry uses the numpy index too.
"""

from __future__ import annotations

import abc
import contextlib
import hashlib
import json
import os
import struct
import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from sqlalchemy import Connection, Engine, text
from sqlalchemy.exc import SQLAlchemyError

from transferkit.errors import InvalidInputError
from transferkit.paths import cache_root
from transferkit.registry.entities import TaskMatch

PGVECTOR_TABLE = "transferkit_task_vectors"
PGVECTOR_SYNCED = "pgvector_tasks"  # registry_counters row: the last task revision copied into PGVECTOR_TABLE
SEARCH_LOCK_KEY = 0x7472_616E_736B_0002  # advisory lock serialising pgvector setup and syncs


@dataclass(frozen=True)
class TaskVectorChange:
    """A task row written after some revision: its new vector, or None if it no longer has one."""

    name: str
    revision: int
    embedder_id: str | None
    embedding: bytes | None


class TaskSearchIndex(abc.ABC):
    """Ranks the registry's tasks by cosine similarity of their description embeddings to a query vector."""

    kind: str

    @abc.abstractmethod
    def nearest(
        self, query: Sequence[float], embedder_id: str, limit: int | None = None, among: Collection[str] | None = None
    ) -> list[TaskMatch]:
        """Tasks embedded by `embedder_id`, most similar first (ties by name); only `among` if given."""


def default_search_index(engine: Engine) -> TaskSearchIndex:
    """pgvector when this is PostgreSQL and the extension can be used, else the numpy index."""
    if engine.dialect.name == "postgresql":
        index = PgvectorTaskIndex.create(engine)
        if index is not None:
            return index
    return NumpyTaskIndex(engine)


def registry_state(connection: Connection) -> tuple[int, int]:
    """(registry id, latest task revision) of the database."""
    rows = dict(connection.execute(text("SELECT name, value FROM registry_counters WHERE name IN ('registry_id', 'tasks')")).all())
    return int(rows["registry_id"]), int(rows["tasks"])


def task_changes(connection: Connection, since: int) -> list[TaskVectorChange]:
    """Task rows with a revision above `since`, oldest first."""
    rows = connection.execute(
        text("SELECT name, revision, embedder_id, embedding FROM tasks WHERE revision > :since ORDER BY revision"),
        {"since": since},
    )
    return [TaskVectorChange(name, int(revision), embedder, None if blob is None else bytes(blob)) for name, revision, embedder, blob in rows]


@dataclass
class _Matrix:
    """The unit vectors of one embedder's tasks, rows sorted by task name (so a stable sort breaks ties by name)."""

    registry_id: int
    revision: int
    names: list[str] = field(default_factory=list)
    vectors: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), dtype=np.float32))

    def __post_init__(self) -> None:
        self.rows = {name: row for row, name in enumerate(self.names)}

    def updated(self, changes: Iterable[TaskVectorChange], embedder_id: str, revision: int) -> _Matrix:
        current = {name: self.vectors[row] for name, row in self.rows.items()}
        for change in changes:
            if change.embedding is None or change.embedder_id != embedder_id:
                current.pop(change.name, None)
            else:
                current[change.name] = _unit(np.frombuffer(change.embedding, dtype="<f4"))
            revision = max(revision, change.revision)
        names = sorted(current)
        vectors = np.stack([current[n] for n in names]).astype(np.float32) if names else np.zeros((0, 0), np.float32)
        return _Matrix(self.registry_id, revision, names, vectors)


class NumpyTaskIndex(TaskSearchIndex):
    """Brute force over a cached matrix of unit vectors; works on every database."""

    kind = "numpy"

    def __init__(self, engine: Engine, cache_folder: Path | None = None) -> None:
        self._engine = engine
        shown = engine.url.render_as_string(hide_password=True)
        self._folder = cache_folder or cache_root() / "search" / hashlib.sha256(shown.encode()).hexdigest()[:16]
        self._matrices: dict[str, _Matrix] = {}

    def nearest(
        self, query: Sequence[float], embedder_id: str, limit: int | None = None, among: Collection[str] | None = None
    ) -> list[TaskMatch]:
        matrix = self._current(embedder_id)
        vector = _unit(np.asarray(query, dtype=np.float32))
        if not matrix.names:
            return []
        if vector.shape[0] != matrix.vectors.shape[1]:
            raise InvalidInputError(
                f"the query has {vector.shape[0]} dimensions but the tasks embedded by {embedder_id} have "
                f"{matrix.vectors.shape[1]}; embed the query with the same model"
            )
        if among is None:
            rows = np.arange(len(matrix.names))
            scores = matrix.vectors @ vector
        else:
            rows = np.sort(np.fromiter((matrix.rows[n] for n in set(among) if n in matrix.rows), dtype=np.int64))
            scores = matrix.vectors[rows] @ vector
        if limit is not None and limit < len(rows):
            kth = np.partition(scores, len(scores) - limit)[len(scores) - limit]
            keep = scores >= kth  # every tie of the k-th score, so the name order decides between them
            rows, scores = rows[keep], scores[keep]
        order = np.argsort(-scores, kind="stable")[:limit]
        return [TaskMatch(matrix.names[rows[i]], float(scores[i])) for i in order]

    def _current(self, embedder_id: str) -> _Matrix:
        with self._engine.connect() as connection:
            registry_id, revision = registry_state(connection)
            matrix = self._matrices.get(embedder_id) or self._load(embedder_id)
            if matrix is not None and matrix.registry_id == registry_id and matrix.revision == revision:
                self._matrices[embedder_id] = matrix
                return matrix
            if matrix is None or matrix.registry_id != registry_id or matrix.revision > revision:
                matrix = _Matrix(registry_id, 0)  # another database, or one rolled back: start over
            changes = task_changes(connection, matrix.revision)
        matrix = matrix.updated(changes, embedder_id, revision)
        self._matrices[embedder_id] = matrix
        self._save(embedder_id, matrix)
        return matrix

    def _paths(self, embedder_id: str) -> Path:
        return self._folder / f"{hashlib.sha256(embedder_id.encode()).hexdigest()[:16]}.json"

    def _load(self, embedder_id: str) -> _Matrix | None:
        state_path = self._paths(embedder_id)
        try:
            state = json.loads(state_path.read_text())
            names = json.loads((self._folder / state["names"]).read_text())
            vectors = np.load(self._folder / state["vectors"], mmap_mode="r")
        except (OSError, ValueError, KeyError):
            return None  # no cache yet, or a damaged one: rebuilt from the database
        if state.get("embedder_id") != embedder_id or len(names) != len(vectors):
            return None
        return _Matrix(int(state["registry_id"]), int(state["revision"]), names, vectors)

    def _save(self, embedder_id: str, matrix: _Matrix) -> None:
        """Write new files, then switch the state file to them atomically; a reader never sees a mix."""
        state_path = self._paths(embedder_id)
        stem = f"{state_path.stem}-{uuid.uuid4().hex[:8]}"
        new_files = [self._folder / f"{stem}.npy", self._folder / f"{stem}.names.json"]
        temporary = state_path.with_suffix(f".{uuid.uuid4().hex[:8]}.tmp")
        try:
            self._folder.mkdir(parents=True, exist_ok=True)
            np.save(new_files[0], np.ascontiguousarray(matrix.vectors))
            new_files[1].write_text(json.dumps(matrix.names))
            state = {"registry_id": matrix.registry_id, "revision": matrix.revision, "embedder_id": embedder_id,
                     "vectors": new_files[0].name, "names": new_files[1].name}
            temporary.write_text(json.dumps(state))
            os.replace(temporary, state_path)
        except OSError:  # an unwritable cache only costs the next process a rebuild; no partial file stays
            for partial in (*new_files, temporary):
                partial.unlink(missing_ok=True)
            return
        for old in self._folder.glob(f"{state_path.stem}-*"):
            if not old.name.startswith(stem):
                with contextlib.suppress(OSError):
                    old.unlink(missing_ok=True)


class PgvectorTaskIndex(TaskSearchIndex):
    """Vectors in a pgvector table inside PostgreSQL, ranked by the database."""

    kind = "pgvector"

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    @classmethod
    def create(cls, engine: Engine) -> PgvectorTaskIndex | None:
        """The index, after creating the extension and table if needed; None if pgvector cannot be used here."""
        try:
            with engine.begin() as connection:
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SEARCH_LOCK_KEY})
                available = connection.execute(text("SELECT 1 FROM pg_available_extensions WHERE name = 'vector'")).first()
                if available is None:
                    return None
                connection.execute(text("CREATE EXTENSION IF NOT EXISTS vector"))
                connection.execute(text(
                    f"CREATE TABLE IF NOT EXISTS {PGVECTOR_TABLE} (name text PRIMARY KEY, embedder_id text, "
                    "revision bigint NOT NULL, embedding vector NOT NULL)"
                ))
        except SQLAlchemyError:
            return None  # e.g. no privilege to create the extension: numpy serves instead
        return cls(engine)

    def nearest(
        self, query: Sequence[float], embedder_id: str, limit: int | None = None, among: Collection[str] | None = None
    ) -> list[TaskMatch]:
        self._sync()
        vector = _unit(np.asarray(query, dtype=np.float32))
        literal = "[" + ",".join(repr(float(x)) for x in vector) + "]"
        where = "embedder_id = :embedder AND vector_dims(embedding) = :dims"
        parameters: dict = {"query": literal, "embedder": embedder_id, "dims": int(vector.shape[0]), "limit": limit}
        if among is not None:
            where += " AND name = ANY(:among)"
            parameters["among"] = list(among)
        statement = text(
            f"SELECT name, 1 - (embedding <=> CAST(:query AS vector)) AS similarity FROM {PGVECTOR_TABLE} "
            f"WHERE {where} ORDER BY embedding <=> CAST(:query AS vector), name LIMIT :limit"
        )
        with self._engine.connect() as connection:
            return [TaskMatch(name, float(similarity)) for name, similarity in connection.execute(statement, parameters)]

    def _sync(self) -> None:
        """Copy task rows newer than the last sync into the vector table (binary COPY through a staging table)."""
        synced_query = text("SELECT value FROM registry_counters WHERE name = :name")
        with self._engine.connect() as connection:
            _, revision = registry_state(connection)
            synced = connection.execute(synced_query, {"name": PGVECTOR_SYNCED}).scalar() or 0
        if synced >= revision:
            return
        with self._engine.begin() as connection:
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": SEARCH_LOCK_KEY})
            synced = connection.execute(synced_query, {"name": PGVECTOR_SYNCED}).scalar() or 0
            changes = task_changes(connection, synced)
            if not changes:
                return
            connection.execute(text(f"CREATE TEMPORARY TABLE staging (LIKE {PGVECTOR_TABLE}) ON COMMIT DROP"))
            connection.execute(text("ALTER TABLE staging ALTER COLUMN embedding DROP NOT NULL"))
            cursor = connection.connection.driver_connection.cursor()
            with cursor.copy("COPY staging (name, embedder_id, revision, embedding) FROM STDIN (FORMAT BINARY)") as copy:
                copy.write(_binary_copy(changes))
            connection.execute(text(f"DELETE FROM {PGVECTOR_TABLE} AS t USING staging AS s WHERE t.name = s.name"))
            connection.execute(text(f"INSERT INTO {PGVECTOR_TABLE} SELECT * FROM staging WHERE embedding IS NOT NULL"))
            connection.execute(
                text(
                    "INSERT INTO registry_counters (name, value) VALUES (:name, :value) "
                    "ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value"
                ),
                {"name": PGVECTOR_SYNCED, "value": max(change.revision for change in changes)},
            )


def _binary_copy(changes: Sequence[TaskVectorChange]) -> bytes:
    """PostgreSQL's binary COPY stream for (text, text, bigint, vector) rows; a vector is int16 dims, int16 0, float4s."""
    parts = [b"PGCOPY\n\xff\r\n\x00", struct.pack(">ii", 0, 0)]
    for change in changes:
        name = change.name.encode()
        parts.append(struct.pack(">hi", 4, len(name)) + name)
        if change.embedder_id is None:
            parts.append(struct.pack(">i", -1))
        else:
            embedder = change.embedder_id.encode()
            parts.append(struct.pack(">i", len(embedder)) + embedder)
        parts.append(struct.pack(">iq", 8, change.revision))
        if change.embedding is None:
            parts.append(struct.pack(">i", -1))
        else:
            values = _unit(np.frombuffer(change.embedding, dtype="<f4")).astype(">f4")
            parts.append(struct.pack(">ihh", 4 + 4 * len(values), len(values), 0) + values.tobytes())
    parts.append(struct.pack(">h", -1))
    return b"".join(parts)


def _unit(vector: np.ndarray) -> np.ndarray:
    norm = float(np.linalg.norm(vector))
    return (vector / norm).astype(np.float32) if norm > 0 else vector.astype(np.float32)
