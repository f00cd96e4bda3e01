"""Write transactions take SQLite's write lock up front, wait for another writer, and retry past the busy timeout."""

from __future__ import annotations

import sqlite3
import threading

import pytest

import transferkit.registry.engines as engines
from transferkit.errors import RegistryError
from transferkit.registry import open_registry


@pytest.fixture
def short_busy_timeout(monkeypatch):
    monkeypatch.setattr(engines, "SQLITE_BUSY_TIMEOUT_MS", 50)  # read when each connection opens


def _hold_write_lock(db) -> sqlite3.Connection:
    holder = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    holder.execute("BEGIN IMMEDIATE")
    return holder


def test_write_retries_until_another_writer_lets_go(tmp_path, short_busy_timeout):
    store = open_registry(f"sqlite:///{tmp_path}/r.db")
    holder = _hold_write_lock(tmp_path / "r.db")
    releaser = threading.Timer(0.5, holder.rollback)  # far past the 50 ms busy timeout, far inside the retry window
    releaser.start()
    try:
        run = store.start_run("train-source", [], {}, 1, {}, {}, {})
    finally:
        releaser.join()
        holder.close()
    assert store.get_run(run.id).status == "running"
    store.close()


def test_a_lock_held_past_the_retry_window_is_one_clear_error(tmp_path, short_busy_timeout, monkeypatch):
    monkeypatch.setattr(engines, "WRITE_RETRY_SECONDS", 0.3)
    store = open_registry(f"sqlite:///{tmp_path}/r.db")
    holder = _hold_write_lock(tmp_path / "r.db")
    try:
        with pytest.raises(RegistryError, match="stayed locked by another writer") as caught:
            store.start_run("train-source", [], {}, 1, {}, {}, {})
    finally:
        holder.rollback()
        holder.close()
    assert "\n" not in str(caught.value)
    assert store.list_runs() == []  # nothing half-written
    store.start_run("train-source", [], {}, 1, {}, {}, {})  # and the store works again
    store.close()


def test_reads_do_not_wait_for_a_writer(tmp_path, short_busy_timeout):
    store = open_registry(f"sqlite:///{tmp_path}/r.db")
    store.start_run("train-source", [], {}, 1, {}, {}, {})
    holder = _hold_write_lock(tmp_path / "r.db")
    try:
        assert len(store.list_runs()) == 1  # WAL: readers see the last commit while a writer holds the lock
    finally:
        holder.rollback()
        holder.close()
    store.close()
