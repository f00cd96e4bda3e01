"""Everything transferkit reads back from disk is parsed as data (safetensors, JSON, npy), never unpickled or run.

Each test puts a pickle "bomb" (unpickling it would create a marker file) where transferkit reads:
an expert artifact whose registry row was edited to match it, the tokenisation cache, a backbone
folder, and (in test_checkpoint.py) a training checkpoint. A source scan keeps it that way.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import re
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch

from transferkit.backbone import _load_backbone, load_backbone
from transferkit.errors import ArtifactCorruptError, InvalidInputError
from transferkit.registry import TaskRecord, open_registry
from transferkit.tasks import Example
from transferkit.training import data as data_module
from transferkit.training.data import tokenize_examples

REPO = Path(__file__).resolve().parents[2]


class _Bomb:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def _pickle_bomb(marker: Path) -> bytes:
    return pickle.dumps({"head.linear.weight": _Bomb(marker)})


@pytest.fixture
def stored(tmp_path):
    store = open_registry(f"sqlite:///{tmp_path}/r.db")
    store.upsert_task(TaskRecord("glue/rte", "d", {}, None, None))
    run = store.start_run("train-source", [], {}, 1, {}, {}, {})
    expert = store.register_expert(
        run_id=run.id, name="victim", task_name="glue/rte", method="lora", config={}, backbone={}, backbone_id="bb",
        trainable_params=4, metrics={}, tensors={"head.linear.weight": torch.ones(2, 2)},
        tensor_metadata={"format": "transferkit.expert/1"}, cost={},
    )
    yield store, expert
    store.close()


def _replace_artifact(tmp_path, store, expert, data: bytes):
    """What an attacker with write access to the registry folder could do: new bytes and a matching row."""
    path = store.artifacts.path(expert.artifact_uri)
    path.chmod(0o644)
    path.write_bytes(data)
    with sqlite3.connect(tmp_path / "r.db") as connection:
        connection.execute("UPDATE experts SET artifact_sha256 = ?, artifact_bytes = ? WHERE id = ?",
                           (hashlib.sha256(data).hexdigest(), len(data), expert.id))
    return store.get_expert(expert.id)


def test_pickled_expert_artifact_is_refused_unexecuted(tmp_path, stored):
    store, expert = stored
    marker = tmp_path / "pwned-artifact"
    tampered = _replace_artifact(tmp_path, store, expert, _pickle_bomb(marker))
    with pytest.raises(ArtifactCorruptError, match="not a readable safetensors file") as caught:
        store.load_expert_tensors(tampered)
    assert not marker.exists() and "\n" not in str(caught.value)


@pytest.mark.parametrize("cut", [7, 40, -5])
def test_truncated_expert_artifact_is_refused(tmp_path, stored, cut):
    store, expert = stored
    data = store.artifacts.path(expert.artifact_uri).read_bytes()
    tampered = _replace_artifact(tmp_path, store, expert, data[:cut])
    with pytest.raises(ArtifactCorruptError, match="not a readable safetensors file"):
        store.load_expert_tensors(tampered)


def test_pickled_tokenisation_cache_is_rebuilt_unexecuted(tmp_path, tiny_backbone, monkeypatch):
    monkeypatch.setenv("TRANSFERKIT_CACHE_DIR", str(tmp_path / "cache"))  # this test's entry alone
    examples = [Example(("a cat sat",), 1), Example(("a dog ran",), 0)]
    clean = tokenize_examples(examples, tiny_backbone.tokenizer, 16, regression=False)
    [entry] = data_module.cache_dir().glob("*.npz")
    marker = tmp_path / "pwned-cache"
    bomb = np.empty(1, dtype=object)
    bomb[0] = _Bomb(marker)
    with open(entry, "wb") as handle:  # an .npz whose arrays need unpickling
        np.savez(handle, ids=bomb, types=bomb, offsets=bomb, labels=bomb)
    again = tokenize_examples(examples, tiny_backbone.tokenizer, 16, regression=False)
    assert not marker.exists()
    assert np.array_equal(again.ids, clean.ids) and np.array_equal(again.offsets, clean.offsets)


def test_pickled_backbone_weights_are_refused_unexecuted(tmp_path, tiny_model_dir):
    folder = tmp_path / "model"
    shutil.copytree(tiny_model_dir, folder)
    for weights in folder.glob("*.safetensors"):
        weights.unlink()
    marker = tmp_path / "pwned-backbone"
    torch.save({"embeddings.word_embeddings.weight": _Bomb(marker)}, folder / "pytorch_model.bin")  # noqa: S614 - the bomb
    _load_backbone.cache_clear()
    with pytest.raises(InvalidInputError, match="cannot load model"):
        load_backbone(str(folder))
    assert not marker.exists()


def test_no_code_path_can_unpickle():
    """torch.load only with weights_only=True, no pickle/joblib loads, no allow_pickle, no remote code."""
    forbidden = [
        (re.compile(r"(?<!safetensors\.)torch\.load\((?![^)]*weights_only=True)"), "torch.load without weights_only=True"),
        (re.compile(r"\bpickle\.loads?\(|\bjoblib\.load\(|\bdill\.load"), "unpickling"),
        (re.compile(r"allow_pickle\s*=\s*True"), "numpy allow_pickle=True"),
        (re.compile(r"trust_remote_code\s*=\s*True"), "remote code"),
    ]
    found = []
    for folder in ("transferkit", "registry", "cli", "alembic"):
        for path in (REPO / folder).rglob("*.py"):
            source = path.read_text(encoding="utf-8")
            found += [f"{path.relative_to(REPO)}: {what}" for pattern, what in forbidden if pattern.search(source)]
    assert found == []
