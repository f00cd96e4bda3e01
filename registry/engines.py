"""Database engines for the registry: SQLite set up for several processes, read-only engines, the write lock.

Concurrent writers (several training processes on one registry): every write transaction takes the
database's write lock before its first read (SQLite: BEGIN IMMEDIATE, waiting up to the busy timeout),
so what it checks (a free name, a run still running) cannot change before it writes; if the lock stays
busy past the timeout, taking it is retried with backoff before the user sees an error.
"""

from __future__ import annotations

import random
import time
from pathlib import Path
from typing import Any

from sqlalchemy import URL, Engine, create_engine, event
from sqlalchemy.orm import Session

from transferkit.errors import RegistryError

SQLITE_BUSY_TIMEOUT_MS = 30_000
# After the busy timeout, a write transaction that could not get the lock is retried for this long.
WRITE_RETRY_SECONDS = 60.0


def writable_engine(url: URL) -> Engine:
    """An engine for reading and writing; SQLite connections get foreign keys, the busy timeout and WAL."""
    engine = create_engine(url, pool_pre_ping=url.get_backend_name() != "sqlite")
    if engine.dialect.name == "sqlite":
        event.listen(engine, "connect", _configure_sqlite)
    return engine


def read_only_engine(url: URL, db_file: Path | None) -> Engine:
    """An engine that cannot write: SQLite opened with mode=ro and query_only, PostgreSQL with read-only transactions."""
    if url.get_backend_name() == "sqlite":
        if db_file is not None:  # a file URI, so SQLite itself refuses to write the file
            url = url.set(database=db_file.as_uri(), query={**url.query, "mode": "ro", "uri": "true"})
        engine = create_engine(url)
        event.listen(engine, "connect", _configure_sqlite_reader)
        return engine
    if url.get_backend_name() == "postgresql":
        return create_engine(url, pool_pre_ping=True, connect_args={"options": "-c default_transaction_read_only=on"})
    raise RegistryError(f"a read-only registry must be SQLite or PostgreSQL, not {url.get_backend_name()}")


def lock_sqlite_for_writing(session: Session, shown_url: str) -> None:
    """BEGIN IMMEDIATE, retried with jittered exponential backoff while another writer holds the lock.

    pysqlite would only begin a transaction at the first INSERT/UPDATE, leaving the reads before it
    outside; beginning explicitly makes the whole body one serialized transaction.
    """
    import sqlite3

    connection = session.connection().connection.driver_connection
    deadline = time.monotonic() + WRITE_RETRY_SECONDS
    delay = 0.05
    while True:
        try:
            connection.execute("BEGIN IMMEDIATE")
            return
        except sqlite3.OperationalError as error:
            if not _is_lock_error(error) or time.monotonic() + delay > deadline:
                raise RegistryError(
                    f"the registry {shown_url} stayed locked by another writer ({error}); "
                    "retry when the other transferkit process has finished writing"
                ) from error
        time.sleep(delay * random.uniform(0.5, 1.5))
        delay = min(delay * 2, 2.0)


def first_line(error: BaseException) -> str:
    """The driver's own message without SQLAlchemy's statement dump and help links."""
    cause = getattr(error, "orig", None) or error
    return (str(cause).strip().splitlines() or [type(cause).__name__])[0]


def _configure_sqlite(dbapi_connection: Any, _record: Any) -> None:
    """Enforce foreign keys, and let readers and writers of several processes share the file."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA foreign_keys = ON")
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
        _enable_wal(cursor)
    finally:
        cursor.close()


def _configure_sqlite_reader(dbapi_connection: Any, _record: Any) -> None:
    """Refuse every write statement on this connection, and wait for writers of other processes like a writer would."""
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA query_only = ON")
        cursor.execute(f"PRAGMA busy_timeout = {SQLITE_BUSY_TIMEOUT_MS}")
    finally:
        cursor.close()


def _enable_wal(cursor: Any) -> None:
    """Switch the database file to WAL once; the mode is stored in the file, so later connections only read it.

    Switching needs an exclusive lock and SQLite does not always wait on the busy handler for it, so
    processes that open a new registry together retry here until the busy timeout runs out.
    """
    import sqlite3

    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT_MS / 1000
    delay = 0.005
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0] == "wal":
                return
            cursor.execute("PRAGMA journal_mode = WAL")
            return
        except sqlite3.OperationalError as error:
            if not _is_lock_error(error) or time.monotonic() + delay > deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def _is_lock_error(error: Exception) -> bool:
    message = str(error).lower()
    return "locked" in message or "busy" in message
