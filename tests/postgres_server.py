"""A throwaway PostgreSQL server for tests and benchmarks.

`TemporaryPostgres(bindir).start()` runs initdb into a new temporary folder, starts the
server on 127.0.0.1 on a free port (and a Unix socket in that folder only), and
`stop()` shuts it down and deletes the folder. Durability is switched off: the data is
thrown away anyway, and fsync would dominate the test time.

PostgreSQL refuses to run as root, so as root the server runs as the `postgres` OS
user that Debian's package creates (via runuser). Which binaries: `find_bindirs()`
lists the installed ones (PATH, pg_config, /usr/lib/postgresql/<version>/bin) and
the ones inside the `pgserver` wheel, which bundles the pgvector extension.
"""

from __future__ import annotations

import importlib.util
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

SERVER_SETTINGS = {
    "listen_addresses": "127.0.0.1",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
    "max_connections": "100",
}


class PostgresUnavailable(RuntimeError):
    """No server could be started; the message says why."""


def installed_bindir() -> Path | None:
    """The newest installed server binaries (PATH, pg_config, Debian's /usr/lib/postgresql/<version>/bin)."""
    candidates = []
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    pg_config = shutil.which("pg_config")
    if pg_config:
        result = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True)
        if result.returncode == 0:
            candidates.append(Path(result.stdout.strip()))
    debian = sorted(Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: _version_key(p.parent.name), reverse=True)
    candidates.extend(debian)
    return next((c for c in candidates if (c / "initdb").is_file() and (c / "pg_ctl").is_file()), None)


def pgserver_bindir() -> Path | None:
    """Binaries of the `pgserver` wheel (PostgreSQL with pgvector built in), if it is installed."""
    spec = importlib.util.find_spec("pgserver")
    if spec is None or not spec.submodule_search_locations:
        return None
    bindir = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"
    return bindir if (bindir / "initdb").is_file() else None


def _version_key(name: str) -> tuple[int, ...]:
    return tuple(int(part) for part in name.split(".") if part.isdigit())


class TemporaryPostgres:
    """One throwaway server; `url(database)` gives a psycopg (v3) SQLAlchemy URL for it."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.folder: Path | None = None
        self.port: int | None = None
        self._run_as: str | None = None
        self._count = 0

    def start(self) -> TemporaryPostgres:
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam("postgres")
            except KeyError:
                raise PostgresUnavailable("running as root and there is no `postgres` OS user to run the server as") from None
            self._run_as = "postgres"
        self.folder = Path(tempfile.mkdtemp(prefix="transferkit-pg-"))
        if self._run_as:
            os.chown(self.folder, owner.pw_uid, owner.pw_gid)
        data = self.folder / "data"
        self._run("initdb", "-D", str(data), "-U", "postgres", "--auth=trust", "--no-locale", "-E", "UTF8", "--no-sync")
        last_error = ""
        for _ in range(3):  # another process may take the free port between our probe and the server's bind
            self.port = _free_port()
            options = " ".join(f"-c {k}={v}" for k, v in {**SERVER_SETTINGS, "port": self.port,
                                                         "unix_socket_directories": self.folder}.items())
            try:
                self._run("pg_ctl", "-D", str(data), "-l", str(self.folder / "server.log"), "-w", "-t", "60",
                          "-o", options, "start")
                return self
            except PostgresUnavailable as error:
                last_error = str(error)
        self.stop()
        raise PostgresUnavailable(last_error)

    def url(self, database: str = "postgres") -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{database}"

    def create_database(self, prefix: str = "registry") -> str:
        """A new empty database; returns its URL."""
        self._count += 1
        name = f"{prefix}_{self._count}"
        self.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def execute(self, statement: str, database: str = "postgres") -> None:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname=database, autocommit=True) as conn:
            conn.execute(statement)

    def available_extensions(self) -> set[str]:
        import psycopg

        with psycopg.connect(host="127.0.0.1", port=self.port, user="postgres", dbname="postgres") as conn:
            return {row[0] for row in conn.execute("SELECT name FROM pg_available_extensions")}

    def stop(self) -> None:
        if self.folder is None:
            return
        if (self.folder / "data" / "postmaster.pid").exists():
            try:
                self._run("pg_ctl", "-D", str(self.folder / "data"), "-m", "immediate", "-w", "stop")
            except PostgresUnavailable:
                pass  # already gone; the folder is removed below either way
        shutil.rmtree(self.folder, ignore_errors=True)
        self.folder = None

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bindir / program), *args]
        if self._run_as:
            command = ["runuser", "-u", self._run_as, "--", *command]
        result = subprocess.run(command, capture_output=True, text=True, cwd=self.folder, timeout=120)
        if result.returncode != 0:
            log = self.folder / "server.log" if self.folder else None
            detail = (result.stderr or result.stdout).strip().splitlines()
            if log is not None and log.exists():
                detail += log.read_text(errors="replace").strip().splitlines()[-3:]
            raise PostgresUnavailable(f"{program} failed: {' | '.join(detail[-4:]) or f'exit code {result.returncode}'}")


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
