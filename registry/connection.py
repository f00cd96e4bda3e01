"""Opening a registry from its URL: the default location, driver choice, and the schema brought to head.

`open_registry(url)` picks the implementation from the database URL (every SQLAlchemy URL maps to
`SqlAlchemyStore`) and brings the schema to head with the packaged Alembic migrations, or, read-only,
refuses a schema that is not at head. Passwords never appear in messages.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from sqlalchemy import URL, make_url
from sqlalchemy.exc import SQLAlchemyError

from transferkit.errors import RegistryError
from transferkit.registry.artifacts import open_artifact_store
from transferkit.registry.engines import first_line, read_only_engine, writable_engine
from transferkit.registry.locations import REGISTRY_ENV, artifacts_location, checkpoint_location, user_data_dir
from transferkit.registry.migrate import require_head, upgrade_to_head
from transferkit.registry.sql_store import SqlAlchemyStore


def open_registry(url: str | None = None, artifacts: str | Path | None = None, *, read_only: bool = False) -> SqlAlchemyStore:
    """Open (creating or upgrading as needed) the registry at `url`, defaulting to a per-user SQLite file.

    `artifacts` is a folder or any fsspec URL for the blobs; without it (or TRANSFERKIT_ARTIFACTS), a
    SQLite registry keeps them in a folder beside its file, any other in the user data dir.
    A bare `postgresql://` URL uses the psycopg (v3) driver.

    `read_only=True` opens an existing registry without ever writing it: nothing is created or upgraded (a
    registry whose schema is not the current one is refused), a SQLite file is opened in read-only mode with
    `query_only` set, and every PostgreSQL transaction is read-only, so a write would fail in the database.
    """
    raw = url or os.environ.get(REGISTRY_ENV) or None
    shown = re.sub(r"//([^:/@]*):[^@/]*@", r"//\1:***@", raw) if raw else "the default registry"
    try:
        parsed = URL.create("sqlite", database=str(user_data_dir() / "registry.db")) if raw is None else make_url(raw)
        shown = parsed.render_as_string(hide_password=True)
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")
        db_file = _sqlite_file(parsed)
        if db_file is not None and read_only and not db_file.is_file():
            raise RegistryError(f"there is no registry at {shown}; pass the URL of an existing registry (nothing is created read-only)")
        if db_file is not None and not read_only:
            db_file.parent.mkdir(parents=True, exist_ok=True)
        if db_file is not None:
            parsed = parsed.set(database=str(db_file))
        location = artifacts_location(artifacts, db_file)
        checkpoint_root = checkpoint_location(db_file)
        if read_only:
            engine = read_only_engine(parsed, db_file)
            require_head(engine, shown)
        else:
            engine = writable_engine(parsed)
            upgrade_to_head(engine)
    except ImportError as error:
        raise RegistryError(
            f"cannot open the registry {shown} ({first_line(error)}); install the Python driver for that database "
            "(PostgreSQL: pip install 'transferkit[postgres]') or use a SQLite URL (e.g. sqlite:////abs/path/registry.db)"
        ) from error
    except (SQLAlchemyError, OSError) as error:
        where = "a readable" if read_only else "a writable"
        raise RegistryError(
            f"cannot open the registry {shown} ({first_line(error)}); pass a valid SQLAlchemy URL "
            f"(e.g. sqlite:////abs/path/registry.db) for {where} location via --registry or {REGISTRY_ENV}"
        ) from error
    checkpoints = Path(checkpoint_root).expanduser().resolve() if checkpoint_root else None
    return SqlAlchemyStore(engine, open_artifact_store(location), checkpoint_root=checkpoints)


def _sqlite_file(url: URL) -> Path | None:
    """The database file of a file-based SQLite URL, made absolute; None for memory or URI-style databases."""
    if url.get_backend_name() != "sqlite" or url.database in (None, "", ":memory:") or url.query.get("uri"):
        return None
    return Path(url.database).expanduser().resolve()
