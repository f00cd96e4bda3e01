"""Source selection on a real SQLite registry: candidate filters, one best expert per task, ranking, and
that it reads the registry through grouped counts, similarity search and one-row lookups only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import transferkit.composition.selection as selection
from transferkit.composition.selection import MAX_SOURCES, TaskQuery, select_sources
from transferkit.errors import NotFoundError
from transferkit.registry import TaskRecord

EMBEDDER = "unit-embedder"
TARGET = "glue/rte"
QUERY = TaskQuery(np.array([1.0, 0, 0]))  # a description embedding only: ranks by description


@pytest.fixture
def registry(registry, monkeypatch):
    """The shared empty registry (tests/conftest.py) with six tasks embedded by EMBEDDER."""
    monkeypatch.setattr(selection, "embedder_id", lambda: EMBEDDER)
    vectors = {TARGET: [1, 0, 0], "glue/mnli": [0.9, 0.1, 0], "glue/qnli": [0.5, 0.5, 0], "glue/sst2": [0, 0, 1],
               "glue/qqp": [0.5, 0.5, 0], "glue/cola": [0.8, 0.2, 0]}
    for name, vector in vectors.items():
        registry.upsert_task(TaskRecord(name, name, {}, [float(x) for x in vector], EMBEDDER))
    return registry


def add(store, name, task, method="lora", dev=0.5, backbone="bb", kind="train-source"):
    run = store.start_run(kind, [], {}, None, {}, {}, {})
    return store.register_expert(
        run_id=run.id, name=name, task_name=task, method=method, config={}, backbone={}, backbone_id=backbone,
        trainable_params=1, metrics={"primary": "accuracy", "dev": {"accuracy": dev}}, tensors={"w": torch.zeros(1)},
        tensor_metadata={},
    )


def test_one_best_expert_per_task_ranked_by_similarity(registry, monkeypatch):
    add(registry, "mnli-weak", "glue/mnli", dev=0.6)
    add(registry, "mnli-best", "glue/mnli", dev=0.8)
    add(registry, "mnli-later-tie", "glue/mnli", dev=0.7)
    add(registry, "qnli", "glue/qnli"), add(registry, "qqp", "glue/qqp")  # equally similar: ordered by name
    add(registry, "sst2", "glue/sst2")
    add(registry, "cola-adapter", "glue/cola", method="adapter")  # the minority method is left out
    add(registry, "rte-own", TARGET)  # the target's own task
    add(registry, "cola-transferred", "glue/cola", kind="transfer")  # made by transfer
    add(registry, "cola-foreign", "glue/cola", backbone="other")  # another backbone
    add(registry, "cola-prompt", "glue/cola", method="prompt")  # cannot be mixed
    monkeypatch.setattr(registry, "list_experts", lambda **kw: pytest.fail("selection listed experts"))
    ranked = select_sources(registry, TARGET, QUERY, "bb", None, None)
    assert [r.expert.name for r in ranked] == ["mnli-best", "qnli", "qqp", "sst2"]
    assert [r.similarity for r in ranked] == pytest.approx([0.9 / np.hypot(0.9, 0.1), 0.5**0.5, 0.5**0.5, 0.0], abs=1e-6)
    assert [r.expert.name for r in select_sources(registry, TARGET, QUERY, "bb", None, 2)] == ["mnli-best", "qnli"]


def test_most_common_method_wins(registry):
    add(registry, "mnli-lora", "glue/mnli")
    add(registry, "qnli-adapter", "glue/qnli", method="adapter")
    add(registry, "sst2-adapter", "glue/sst2", method="adapter")
    ranked = select_sources(registry, TARGET, QUERY, "bb", None, None)
    assert [r.expert.name for r in ranked] == ["qnli-adapter", "sst2-adapter"]


def test_explicit_sources_are_ranked_and_capped(registry):
    experts = [add(registry, f"cola-{i:02d}", "glue/cola") for i in range(MAX_SOURCES)]
    experts.append(add(registry, "mnli", "glue/mnli"))
    ranked = select_sources(registry, TARGET, QUERY, "bb", [e.id for e in experts], None)
    assert len(ranked) == MAX_SOURCES and ranked[0].expert.name == "mnli"
    assert [r.expert.name for r in ranked[1:]] == [f"cola-{i:02d}" for i in range(MAX_SOURCES - 1)]


def test_missing_candidates_and_embeddings_are_reported(registry):
    with pytest.raises(NotFoundError, match="no adapter or lora experts"):
        select_sources(registry, TARGET, QUERY, "bb", None, None)
    registry.upsert_task(TaskRecord("glue/wnli", "wnli", {}, None, None))
    add(registry, "wnli", "glue/wnli")
    with pytest.raises(NotFoundError, match="glue/wnli has no description embedding"):
        select_sources(registry, TARGET, QUERY, "bb", None, None)


def test_data_embeddings_join_the_ranking_when_every_candidate_task_has_one(registry):
    for name, description, data in (("glue/mnli", [0.9, 0.1, 0], [0, 1, 0]), ("glue/sst2", [0, 0, 1], [1, 0, 0])):
        registry.upsert_task(TaskRecord(name, name, {}, [float(x) for x in description], EMBEDDER, [float(x) for x in data]))
    add(registry, "mnli", "glue/mnli"), add(registry, "sst2", "glue/sst2"), add(registry, "qqp", "glue/qqp")
    query = TaskQuery(np.array([1.0, 0, 0]), np.array([1.0, 0, 0]))
    ranked = {r.expert.name: r for r in select_sources(registry, TARGET, query, "bb", None, None)}
    mnli_description = 0.9 / np.hypot(0.9, 0.1)
    assert ranked["mnli"].description_similarity == pytest.approx(mnli_description, abs=1e-6)
    assert ranked["mnli"].data_similarity == pytest.approx(0.0) and ranked["sst2"].data_similarity == pytest.approx(1.0)
    # qqp has no data embedding, so one scale for all: the description alone ranks (both similarities still shown).
    assert ranked["qqp"].data_similarity is None
    assert ranked["mnli"].similarity == pytest.approx(mnli_description, abs=1e-6) and ranked["sst2"].similarity == pytest.approx(0.0)
    assert [r.expert.name for r in select_sources(registry, TARGET, query, "bb", None, None)] == ["mnli", "qqp", "sst2"]
    # Once every candidate has one, each scores the mean of its two similarities.
    registry.upsert_task(TaskRecord("glue/qqp", "glue/qqp", {}, [0.5, 0.5, 0.0], EMBEDDER, [0.0, 0.0, 1.0]))
    ranked = {r.expert.name: r for r in select_sources(registry, TARGET, query, "bb", None, None)}
    assert ranked["mnli"].similarity == pytest.approx(mnli_description / 2, abs=1e-6)
    assert ranked["sst2"].similarity == pytest.approx(0.5)
    assert ranked["qqp"].similarity == pytest.approx(0.5**0.5 / 2, abs=1e-6)
    assert [r.expert.name for r in select_sources(registry, TARGET, query, "bb", None, None)] == ["sst2", "mnli", "qqp"]
    # Without a data embedding for the target, the description alone ranks.
    assert [r.expert.name for r in select_sources(registry, TARGET, QUERY, "bb", None, None)] == ["mnli", "qqp", "sst2"]
