"""Task similarity search served from the registry: the numpy index on both backends (cached on disk,
updated from task revisions), and pgvector inside PostgreSQL when the extension is there."""

from __future__ import annotations

import numpy as np
import pytest

import transferkit.registry.search as search_module
from transferkit.errors import InvalidInputError
from transferkit.registry import TaskRecord, open_registry
from transferkit.registry.search import NumpyTaskIndex, PgvectorTaskIndex

EMBEDDER = "search-test-embedder"  # the `store` fixture's two tasks use another embedder


def put_tasks(store, vectors: dict[str, list[float]], embedder: str = EMBEDDER) -> None:
    for name, vector in vectors.items():
        store.upsert_task(TaskRecord(name, f"the {name} task", {}, vector, embedder))


def cosine(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / np.linalg.norm(a) / np.linalg.norm(b))


@pytest.fixture
def numpy_index(store, tmp_path) -> NumpyTaskIndex:
    store.search_index = NumpyTaskIndex(store.engine, tmp_path / "search-cache")
    return store.search_index


def test_ranks_by_cosine_with_ties_by_name(store, numpy_index):
    vectors = {"t/b": [1.0, 0.0, 0.0], "t/a": [2.0, 0.0, 0.0], "t/c": [1.0, 1.0, 0.0], "t/d": [0.0, 0.0, 3.0]}
    put_tasks(store, vectors)
    query = [0.9, 0.1, 0.0]
    matches = store.nearest_tasks(query, EMBEDDER)
    assert [m.task_name for m in matches] == ["t/a", "t/b", "t/c", "t/d"]  # a and b point the same way
    assert [m.similarity for m in matches] == pytest.approx([cosine(query, vectors[m.task_name]) for m in matches], abs=1e-6)
    assert [m.task_name for m in store.nearest_tasks(query, EMBEDDER, limit=1)] == ["t/a"]
    assert [m.task_name for m in store.nearest_tasks(query, EMBEDDER, limit=3, among={"t/d", "t/b", "t/x"})] == ["t/b", "t/d"]
    assert store.nearest_tasks(query, "another-embedder") == []
    with pytest.raises(InvalidInputError, match="dimensions"):
        store.nearest_tasks([1.0, 0.0], EMBEDDER)
    with pytest.raises(InvalidInputError, match="at least 1"):
        store.nearest_tasks(query, EMBEDDER, limit=0)


def test_index_reads_only_changed_rows(store, numpy_index, monkeypatch):
    put_tasks(store, {"t/a": [1.0, 0.0], "t/b": [0.0, 1.0]})
    seen: list[int] = []
    original = search_module.task_changes
    monkeypatch.setattr(search_module, "task_changes", lambda connection, since: seen.append(since) or original(connection, since))
    assert [m.task_name for m in store.nearest_tasks([1.0, 0.1], EMBEDDER)] == ["t/a", "t/b"]
    store.nearest_tasks([1.0, 0.1], EMBEDDER)
    assert seen == [0]  # built once, then served while nothing changed
    put_tasks(store, {"t/b": [1.0, 0.05], "t/c": [0.5, 0.5]})  # b moves next to the query, c is new
    assert [m.task_name for m in store.nearest_tasks([1.0, 0.1], EMBEDDER)] == ["t/b", "t/a", "t/c"]
    assert seen == [0, 4]  # only rows written after revision 4 (2 fixture tasks + a + b) were read
    put_tasks(store, {"t/c": [1.0, 0.1]}, embedder="other")  # re-embedded by another model: leaves this index
    assert [m.task_name for m in store.nearest_tasks([1.0, 0.1], EMBEDDER)] == ["t/b", "t/a"]


def test_cache_file_serves_the_next_process(store, tmp_path, monkeypatch):
    put_tasks(store, {"t/a": [1.0, 0.0], "t/b": [0.0, 1.0]})
    folder = tmp_path / "search-cache"
    assert NumpyTaskIndex(store.engine, folder).nearest([0.0, 1.0], EMBEDDER)[0].task_name == "t/b"
    monkeypatch.setattr(search_module, "task_changes", lambda *a: pytest.fail("read task rows despite a current cache"))
    fresh = NumpyTaskIndex(store.engine, folder)  # as in a new `transferkit search` process
    assert [m.task_name for m in fresh.nearest([0.0, 1.0], EMBEDDER)] == ["t/b", "t/a"]


def test_cache_of_a_recreated_database_is_not_reused(tmp_path):
    folder = tmp_path / "search-cache"
    for vector, expected in (([1.0, 0.0], "t/a"), ([0.0, 1.0], "t/b")):
        store = open_registry(f"sqlite:///{tmp_path}/r.db", tmp_path / "blobs")
        put_tasks(store, {"t/a" if expected == "t/a" else "t/b": vector})  # same revision numbers, another database
        assert [m.task_name for m in NumpyTaskIndex(store.engine, folder).nearest([1.0, 1.0], EMBEDDER)] == [expected]
        store.close()
        (tmp_path / "r.db").unlink()


def test_default_index_is_numpy_without_pgvector(store, registry_url, postgres_server):
    uses_pgvector = registry_url.startswith("postgresql") and "vector" in postgres_server.available_extensions()
    assert store.search_index.kind == ("pgvector" if uses_pgvector else "numpy")


def test_pgvector_ranks_like_numpy_and_follows_changes(pgvector_server, tmp_path):
    store = open_registry(pgvector_server.create_database(), tmp_path / "blobs")
    assert isinstance(store.search_index, PgvectorTaskIndex)
    rng = np.random.default_rng(0)
    put_tasks(store, {f"t/{i:02d}": rng.normal(size=16).tolist() for i in range(40)})
    put_tasks(store, {"t/twin-a": [1.0] * 16, "t/twin-b": [2.0] * 16})  # a tie, broken by name
    numpy_index = NumpyTaskIndex(store.engine, tmp_path / "search-cache")
    for query in ([1.0] * 16, rng.normal(size=16).tolist()):
        for limit, among in ((None, None), (5, None), (None, {"t/03", "t/17", "t/twin-b", "t/nope"})):
            expected = numpy_index.nearest(query, EMBEDDER, limit, among)
            got = store.nearest_tasks(query, EMBEDDER, limit, among)
            assert [m.task_name for m in got] == [m.task_name for m in expected]
            assert [m.similarity for m in got] == pytest.approx([m.similarity for m in expected], abs=1e-5)
    put_tasks(store, {"t/05": [1.0] * 16})  # an update is synced on the next query
    assert [m.task_name for m in store.nearest_tasks([1.0] * 16, EMBEDDER, limit=3)] == ["t/05", "t/twin-a", "t/twin-b"]
    store.close()


def test_tasks_restored_from_another_registry_are_found_by_an_index_that_is_already_up_to_date(store, numpy_index, tmp_path):
    put_tasks(store, {"t/local": [1.0, 0.0, 0.0]})
    assert [m.task_name for m in store.nearest_tasks([1.0, 0.0, 0.0], EMBEDDER)] == ["t/local"]  # the index has state now
    imported = [TaskRecord(name, f"the {name} task", {}, vector, EMBEDDER) for name, vector in
                {"t/imported-a": [0.0, 1.0, 0.0], "t/imported-b": [0.0, 0.0, 1.0]}.items()]
    store.restore(imported, [], [], [])  # what importing a bundle does with its tasks
    assert [m.task_name for m in store.nearest_tasks([0.0, 1.0, 0.1], EMBEDDER)] == ["t/imported-a", "t/imported-b", "t/local"]
    fresh = NumpyTaskIndex(store.engine, tmp_path / "another-cache")  # and so is one built from nothing
    assert {m.task_name for m in fresh.nearest([0.0, 0.0, 1.0], EMBEDDER)} == {"t/local", "t/imported-a", "t/imported-b"}
