"""Notes, tags, aliases, guarded delete and stored evaluations, on SQLite and PostgreSQL (the `store` fixture)."""

from __future__ import annotations

import os
import threading
import time

import pytest
from conftest import OTHER_TASK, TASK

from transferkit.errors import InvalidInputError, NotFoundError
from transferkit.gc import collect_garbage
from transferkit.registry import open_registry
from transferkit.registry.curation import DELETED_PARENTS_TAG, parse_tag


def test_tags_are_set_overwritten_listed_and_removed(store, register):
    expert = register("a")
    store.set_tags(expert.id, dict([parse_tag("stage=prod"), parse_tag("reviewed")]))
    curation = store.set_tags(expert.id, {"stage": "staging"})
    assert curation.tags == {"reviewed": "", "stage": "staging"}
    assert [e.name for e in store.list_experts(tag=("stage", "staging"))] == ["a"]
    assert store.list_experts(tag=("stage", "prod")) == [] and store.count_experts(tag=("reviewed", None)) == 1
    with pytest.raises(NotFoundError, match="no tag 'nope'"):
        store.remove_tags(expert.id, ["stage", "nope"])
    assert store.curation(expert.id).tags == {"reviewed": "", "stage": "staging"}  # nothing removed
    assert store.remove_tags(expert.id, ["stage"]).tags == {"reviewed": ""}
    for bad in ("", " x", "a\nb", "k" * 251):
        with pytest.raises(InvalidInputError):
            store.set_tags(expert.id, {bad: "v"})
    with pytest.raises(InvalidInputError, match="transferkit's own"):
        store.set_tags(expert.id, {DELETED_PARENTS_TAG: "x"})


def test_note_is_set_and_cleared(store, register):
    expert = register("a")
    assert store.set_note(expert.id, "trained on the 2026 reviews").note == "trained on the 2026 reviews"
    assert store.curation(expert.id).note == "trained on the 2026 reviews"
    assert store.set_note(expert.id, "").note is None


def test_alias_resolves_like_a_name_and_moves(store, register):
    first, second = register("first"), register("second")
    assert store.set_alias("rte-best", first.id) is None
    assert store.get_expert("rte-best").id == first.id
    assert store.set_alias("rte-best", second.id) == first.id
    assert store.get_expert("rte-best").id == second.id
    assert store.curation(second.id).aliases == ["rte-best"] and store.curation(first.id).aliases == []
    assert store.list_aliases() == {"rte-best": second.id}
    for taken in ("first", first.id):
        with pytest.raises(InvalidInputError, match="would always win"):
            store.set_alias(taken, second.id)
    with pytest.raises(InvalidInputError):
        store.set_alias("has space", second.id)
    assert store.remove_alias("rte-best") == second.id
    with pytest.raises(NotFoundError, match="id, name or alias 'rte-best'"):
        store.get_expert("rte-best")
    with pytest.raises(NotFoundError, match="no alias"):
        store.remove_alias("rte-best")


def test_readers_always_see_an_expert_while_an_alias_moves(store, register, registry_url, tmp_path):
    one, two = register("one"), register("two")
    store.set_alias("live", one.id)
    reader = open_registry(registry_url, tmp_path / "blobs")
    seen, errors, stop = set(), [], threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                seen.add(reader.get_expert("live").id)
            except Exception as error:  # noqa: BLE001 - any failure to resolve is the bug this test looks for
                errors.append(error)

    thread = threading.Thread(target=read)
    thread.start()
    try:
        for step in range(40):
            store.set_alias("live", (two if step % 2 == 0 else one).id)
            time.sleep(0.002)
    finally:
        stop.set()
        thread.join()
        reader.close()
    assert errors == [] and seen <= {one.id, two.id} and seen


def test_delete_is_refused_while_others_depend_unless_forced(store, register):
    source = register("source")
    spot = register("spot", lineage=[(source.id, "init", 0.9)])
    mixture = register("mixture", lineage=[(source.id, "source", 0.5)])
    store.set_alias("src", source.id)
    store.set_tags(source.id, {"k": "v"})
    with pytest.raises(InvalidInputError, match=r"2 expert\(s\) were made from it \(mixture \(source\), spot \(init\)\)"):
        store.delete_expert(source.id)
    assert store.get_expert("src").id == source.id  # nothing changed
    assert [(d.child_name, d.needs_parent_to_load) for d in store.dependents(source.id)] == [("mixture", True), ("spot", False)]

    deletion = store.delete_expert(source.id, force=True)
    assert [(d.child_name, d.role, d.needs_parent_to_load) for d in deletion.orphaned] == [
        ("mixture", "source", True), ("spot", "init", False)]
    assert (deletion.aliases, deletion.tags, deletion.run_id) == (["src"], {"k": "v"}, source.run_id)
    with pytest.raises(NotFoundError):
        store.get_expert(source.id)
    assert store.get_run(source.run_id).id == source.run_id  # the run and its cost stay
    assert store.lineage_edges(mixture.id)["parents"] == []
    assert store.curation(mixture.id).tags[DELETED_PARENTS_TAG] == f"{source.id} (source, source)"
    assert store.list_aliases() == {}
    # Leaves go without --force: the spot child has no children of its own.
    assert store.delete_expert(spot.id).orphaned == []


def test_deleted_experts_blob_is_reclaimed_by_gc_unless_shared(store, register):
    same = {"format": "transferkit.expert/1"}
    kept = register("kept", tensor_metadata=same)
    twin = register("twin", tensor_metadata=same)  # the same tensors and metadata give the same content-addressed blob
    lone = register("lone")
    assert twin.artifact_uri == kept.artifact_uri != lone.artifact_uri
    assert store.delete_expert(twin.id).artifact_shared is True
    assert store.delete_expert(lone.id).artifact_shared is False
    for uri in (kept.artifact_uri, lone.artifact_uri):  # past gc's grace period for fresh blobs
        path = store.artifacts.location(uri)
        os.utime(path, (time.time() - 7200, time.time() - 7200))
    report = collect_garbage(store, apply=True)
    assert [(i.kind, i.target) for i in report.items] == [("orphaned-blob", lone.artifact_uri)]
    store.verify_artifact(kept)


def test_evaluations_are_stored_ranked_and_deleted_with_their_expert(store, register):
    good, bad, never = register("good"), register("bad"), register("never")
    common = dict(task_name=OTHER_TASK, split="test", metric="accuracy", interval={"mean": 0.5, "low": 0.4, "high": 0.6},
                  examples=100, data_fingerprint={"fingerprint": "abc"}, details={"seed": 1})
    store.add_evaluation(expert_id=good.id, metrics={"accuracy": 0.4}, **common)
    store.add_evaluation(expert_id=bad.id, metrics={"accuracy": 0.6}, **common)
    store.add_evaluation(expert_id=good.id, metrics={"accuracy": 0.8}, **common)  # the latest one counts
    store.add_evaluation(expert_id=bad.id, metrics={"accuracy": 0.99}, **{**common, "task_name": TASK})
    ranked = store.best_on(OTHER_TASK)
    assert [(e.name, ev.score) for e, ev in ranked] == [("good", 0.8), ("bad", 0.6)]
    assert store.count_evaluations([good.id, never.id]) == {good.id: 2, never.id: 0}
    assert [ev.score for ev in store.list_evaluations(expert_id=good.id)] == [0.8, 0.4]
    with pytest.raises(InvalidInputError):
        store.add_evaluation(expert_id=good.id, metrics={}, **{**common, "split": "train"})
    assert store.delete_expert(good.id).evaluations == 2
    assert [e.name for e, _ in store.best_on(OTHER_TASK)] == ["bad"]
    with pytest.raises(NotFoundError):
        store.add_evaluation(expert_id=good.id, metrics={"accuracy": 1.0}, **common)


def test_a_deleted_experts_spent_cost_stays_counted(store, register):
    from transferkit.accounting import deleted_experts_cost, expert_costs

    kept = register("kept", cost={"wall_seconds": 5.0})
    gone = register("gone", cost={"wall_seconds": 7.0})
    assert deleted_experts_cost(store)["runs"] == 0
    store.delete_expert(gone.id)
    assert [c.name for c in expert_costs(store)] == ["kept"]
    spent = deleted_experts_cost(store)
    assert (spent["runs"], spent["run_ids"], spent["wall_seconds"]) == (1, [gone.run_id], 7.0)
    assert store.get_run(kept.run_id).status == store.get_run(gone.run_id).status == "finished"
