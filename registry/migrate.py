"""Alembic plumbing: bring any registry database to the schema this code expects.

The migrations ship inside the package (`transferkit/migrations` in a wheel,
`<repo>/alembic` in a source checkout) and are driven programmatically, so no
alembic.ini is needed. To write a new migration, generate it against a
database at head, e.g.
`command.revision(alembic_config(connection), "message", autogenerate=True)`,
then edit it by hand until it reads well.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, Engine, inspect, text

from transferkit.errors import RegistryError

if TYPE_CHECKING:
    from alembic.config import Config

# The newest revision in alembic/versions (a test keeps them equal). Knowing it without importing
# Alembic keeps opening an up-to-date registry, i.e. every CLI command, ~0.2 s faster.
HEAD_REVISION = "0007"
# Advisory lock id (any 64-bit number unique to this use) serialising schema upgrades on PostgreSQL.
MIGRATION_LOCK_KEY = 0x7472_616E_736B_0001  # "transk" + 1


def migrations_dir() -> Path:
    """The folder holding env.py and versions/ (installed wheel or source checkout)."""
    root = Path(__file__).resolve().parent.parent  # the folder holding the transferkit.registry package
    installed = root / "migrations"
    return installed if installed.is_dir() else root / "alembic"


def alembic_config(connection: Connection | None = None) -> Config:
    """An in-memory Alembic config; env.py runs the migrations on `connection`."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(migrations_dir()).replace("%", "%%"))
    config.attributes["connection"] = connection
    return config


def head_revision() -> str:
    """The newest schema revision in the migrations folder, as Alembic reads it."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the migrations folder has no revisions"
    return head


def current_revision(connection: Connection) -> str | None:
    """The revision the database is stamped with (None for an empty database)."""
    if not inspect(connection).has_table("alembic_version"):
        return None
    return connection.execute(text("SELECT version_num FROM alembic_version")).scalar()


def require_head(engine: Engine, shown: str) -> None:
    """Refuse (RegistryError) a database that is not at the current schema, without changing it."""
    with engine.connect() as connection:
        current = current_revision(connection)
    if current == HEAD_REVISION:
        return
    if current is None:
        raise RegistryError(f"{shown} is not a transferkit registry (it has no schema); pass the URL of an existing registry")
    raise RegistryError(
        f"the registry {shown} is at schema revision {current}, and this transferkit reads revision {HEAD_REVISION}; "
        "it is opened read-only, so it is not upgraded: upgrade it first with any other transferkit command "
        "(e.g. `transferkit list`), or use the transferkit version that wrote it"
    )


def upgrade_to_head(engine: Engine) -> None:
    """Create or upgrade the schema; a no-op (read only, no Alembic import) when the database is at head."""
    with engine.connect() as connection:
        if current_revision(connection) == HEAD_REVISION:
            return
    from alembic import command
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError

    script = ScriptDirectory.from_config(alembic_config())
    head = script.get_current_head()
    with engine.begin() as connection:
        if connection.dialect.name == "sqlite":
            # pysqlite runs DDL outside a transaction by default; an explicit write transaction makes
            # the whole upgrade atomic and serialises processes that open a new registry at once.
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        elif connection.dialect.name == "postgresql":
            # DDL is transactional on PostgreSQL; a transaction-scoped advisory lock makes processes that
            # open a new registry at once wait for the first upgrade instead of racing it.
            connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": MIGRATION_LOCK_KEY})
        current = current_revision(connection)
        if current == head:
            return
        if current is not None and current not in {s.revision for s in script.walk_revisions()}:
            raise RegistryError(
                f"the registry database is at schema revision {current}, which this transferkit does not know; "
                "upgrade transferkit to the version that last wrote this registry"
            )
        try:
            command.upgrade(alembic_config(connection), "head")
        except CommandError as error:
            raise RegistryError(f"cannot upgrade the registry schema: {error}") from error
