"""The reads behind `transferkit ui`, on SQLite and PostgreSQL: text and strategy filters, sort keys, read-only
opening, a page's costs from its ancestors alone, grid cells found by command, task pages."""

from __future__ import annotations

import pytest
from sqlalchemy.exc import InternalError
from conftest import OTHER_TASK, TASK, execute_sql

from transferkit.accounting import expert_costs, expert_costs_for
from transferkit.errors import InvalidInputError, RegistryError
from transferkit.registry import TaskRecord, open_registry


def test_text_filter_finds_words_in_names_tags_aliases_and_notes(store, register):
    a = register("alpha-lora", extra={"strategy": "pemt"})
    b = register("beta_50%", task_name=OTHER_TASK)
    c = register("gamma")
    store.set_tags(c.id, {"stage": "prod"})
    store.set_alias("sentiment-best", a.id)
    store.set_note(b.id, "Trained on the REVIEWS of 2026")

    def names(**filters):
        found = [e.name for e in store.list_experts(order="name", **filters)]
        assert store.count_experts(**filters) == len(found)
        return found

    assert names(text="ALPHA") == ["alpha-lora"]
    assert names(text="reviews 2026") == ["beta_50%"]  # every word, anywhere, any case
    assert names(text="reviews gamma") == []
    assert names(text="prod") == ["gamma"] and names(text="stage") == ["gamma"]
    assert names(text="sentiment") == ["alpha-lora"]
    assert names(text="50%") == ["beta_50%"] and names(text="_5") == ["beta_50%"]  # % and _ match literally
    assert names(text=a.id[:6]) == ["alpha-lora"]
    assert names(text="rte") == ["beta_50%"]  # the task name
    assert names(strategy="pemt") == ["alpha-lora"] and names(strategy="spot") == []
    with pytest.raises(InvalidInputError, match="at most 8 words"):
        store.list_experts(text="a b c d e f g h i")
    with pytest.raises(InvalidInputError, match="printable"):
        store.count_experts(text="x\x00")


def test_sort_keys_both_directions_with_missing_values_last(store, register):
    register("small", trainable_params=5, metrics={"primary": "accuracy", "dev": {"accuracy": 0.9}},
                     cost={"wall_seconds": 30.0})
    register("large", trainable_params=50, metrics={"primary": "accuracy", "dev": {"accuracy": 0.2}},
                     cost={"wall_seconds": 10.0})
    register("unknown", trainable_params=20, metrics={}, task_name=OTHER_TASK)  # no dev score; its run records no cost

    def order(key):
        return [e.name for e in store.list_experts(order=key)]

    assert order("params") == ["small", "unknown", "large"] and order("-params") == ["large", "unknown", "small"]
    assert order("dev") == ["large", "small", "unknown"] and order("-dev") == ["small", "large", "unknown"]
    assert order("best") == order("-dev")
    assert order("cost") == ["large", "small", "unknown"] and order("-cost") == ["small", "large", "unknown"]
    assert order("name") == ["large", "small", "unknown"]
    assert order("task") == ["unknown", "large", "small"] and order("-task") == ["large", "small", "unknown"]  # ties: newest first
    assert order("created") == ["small", "large", "unknown"] == order("-created")[::-1] == order("newest")[::-1]
    assert [e.name for e in store.list_experts(order="-params", limit=1, offset=1)] == ["unknown"]
    for bad in ("size", "--name", "-", "newest-"):
        with pytest.raises(InvalidInputError, match="expert order must be one of"):
            store.list_experts(order=bad)


def test_costs_of_a_page_equal_the_whole_registry_reading(store, register):
    a = register("a", cost={"wall_seconds": 10.0, "device_kind": "cpu"})
    b = register("b", cost={"wall_seconds": 4.0})
    c = register("c", lineage=[(a.id, "source", 0.5), (b.id, "source", 0.5)], cost={"wall_seconds": 1.0})
    d = register("d", lineage=[(a.id, "init", 0.9), (c.id, "source", 1.0)], cost={"wall_seconds": 2.0})
    register("e", lineage=[(d.id, "reproduces", None)], cost={"wall_seconds": 3.0})
    everything = {cost.expert_id: cost for cost in expert_costs(store)}
    for ids in ([d.id], [c.id, a.id], [e.id for e in store.list_experts()]):
        page = expert_costs_for(store, ids)
        assert set(page) == set(ids)
        for expert_id in ids:
            assert page[expert_id].amortized == everything[expert_id].amortized
            assert page[expert_id].own == everything[expert_id].own
    assert store.count_children([a.id, b.id, c.id], ["source", "init"]) == {a.id: 2, b.id: 1, c.id: 1}
    assert {(x.parent_id, x.child_id) for x in store.lineage_closure([d.id])} == {
        (a.id, d.id), (c.id, d.id), (a.id, c.id), (b.id, c.id)}


def test_runs_are_found_by_their_command_and_tasks_come_in_pages(store, register):
    run = store.start_run("transfer", ["transferkit", "compare", "--grid=g1", "cell=g1-rte-pemt-s1"], {}, 1, {}, {}, {})
    register("plain")
    cell = register("g1-rte-pemt-s1", run_id=run.id)
    assert [e.id for e, _ in store.list_expert_runs(command_contains="--grid=")] == [cell.id]
    assert store.list_expert_runs(command_contains="--grid=%") == []  # a literal match
    for name in ("z/one", "a/two"):
        store.upsert_task(TaskRecord(name, name, {}, None, None))
    assert store.count_tasks() == 4
    assert [t.name for t in store.list_tasks()] == ["a/two", OTHER_TASK, TASK, "z/one"]
    assert [t.name for t in store.list_tasks(limit=2, offset=1)] == [OTHER_TASK, TASK]


def test_read_only_registry_reads_and_never_writes(registry_url, tmp_path, register, store):
    register("kept")
    reader = open_registry(registry_url, tmp_path / "blobs", read_only=True)
    try:
        assert [e.name for e in reader.list_experts()] == ["kept"]
        # SQLite: query_only refuses it (RegistryError); PostgreSQL: the read-only transaction does (InternalError).
        with pytest.raises((RegistryError, InternalError)):
            reader.upsert_task(TaskRecord("glue/cola", "d", {}, None, None))
        with pytest.raises((RegistryError, InternalError)):
            reader.set_note(reader.get_expert("kept").id, "a note")
    finally:
        reader.close()
    assert store.curation(store.get_expert("kept").id).note is None
    assert store.get_task("glue/cola") is None


def test_read_only_refuses_a_registry_behind_the_schema(registry_url, store):
    execute_sql(store, "UPDATE alembic_version SET version_num = '0004'")
    with pytest.raises(RegistryError, match="schema revision 0004.*not upgraded"):
        open_registry(registry_url, read_only=True)
    with store.engine.connect() as connection:  # untouched: still stamped 0004
        assert connection.exec_driver_sql("SELECT version_num FROM alembic_version").scalar() == "0004"
    execute_sql(store, "UPDATE alembic_version SET version_num = '0005'")


def test_restored_experts_rank_by_their_dev_metric(store, register, tmp_path):
    low = register("low", metrics={"primary": "accuracy", "dev": {"accuracy": 0.1}})
    high = register("high", metrics={"primary": "accuracy", "dev": {"accuracy": 0.9}})
    copy = open_registry(f"sqlite:///{tmp_path}/copy.db", tmp_path / "copy-blobs")
    try:
        copy.restore([store.get_task(TASK)], [store.get_run(low.run_id), store.get_run(high.run_id)],
                     [(e, store.read_artifact(e)) for e in (low, high)], [])
        assert [e.name for e in copy.list_experts(order="best")] == ["high", "low"]  # bundles imported: ranked too
    finally:
        copy.close()
