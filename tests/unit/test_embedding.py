"""Data embeddings are computed once per process for the same sampled texts (a compare grid's cells share their
target's), and again for any other texts."""

from __future__ import annotations

import numpy as np
import pytest

import transferkit.embedding as embedding
from transferkit.tasks.splits import Example


@pytest.fixture
def counted(monkeypatch) -> list[list[str]]:
    """embed_texts replaced by a deterministic fake that records every batch it is asked for."""
    batches: list[list[str]] = []

    def fake(texts: list[str]) -> np.ndarray:
        batches.append(list(texts))
        return np.array([[len(t), 1.0, t.count("a")] for t in texts], dtype=float)

    monkeypatch.setattr(embedding, "embed_texts", fake)
    monkeypatch.setattr(embedding, "embedder_id", lambda: "fake-embedder")
    monkeypatch.setattr(embedding, "_data_cache", type(embedding._data_cache)())
    return batches


def test_the_same_examples_are_embedded_once(counted):
    examples = [Example(("a premise", "a hypothesis"), 0), Example(("another one", "and its pair"), 1)]
    first = embedding.embed_task_data(examples, "superglue/cb")
    again = embedding.embed_task_data(list(examples), "superglue/cb")
    assert len(counted) == 1 and np.array_equal(first, again)
    assert np.isclose(np.linalg.norm(first), 1.0)
    again[0] = 99.0  # callers get a copy: the kept vector cannot be changed through it
    assert np.array_equal(embedding.embed_task_data(examples, "superglue/cb"), first)

    other = embedding.embed_task_data([Example(("a premise", "a different hypothesis"), 0)], "superglue/cb")
    assert len(counted) == 2 and not np.array_equal(other, first)


def test_the_memory_is_bounded(counted):
    for number in range(embedding._DATA_CACHE_SIZE + 1):
        embedding.embed_task_data([Example((f"text {number}",), 0)], "glue/sst2")
    assert len(embedding._data_cache) == embedding._DATA_CACHE_SIZE
    embedding.embed_task_data([Example(("text 0",), 0)], "glue/sst2")  # the oldest was dropped: computed again
    assert len(counted) == embedding._DATA_CACHE_SIZE + 2
