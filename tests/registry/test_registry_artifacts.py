"""Artifacts are content-addressed, written atomically, and verified before they are parsed."""

from __future__ import annotations

import hashlib
import shutil

import pytest
import safetensors.torch
import torch

from transferkit.errors import ArtifactCorruptError, RegistryError
from transferkit.registry import LocalArtifactStore, TaskRecord, open_registry
from transferkit.registry.artifacts import canonical_safetensors, safetensors_metadata


def test_put_is_content_addressed_and_idempotent(tmp_path):
    blobs = LocalArtifactStore(tmp_path / "blobs")
    data = b"expert bytes"
    digest = hashlib.sha256(data).hexdigest()
    uri, sha, size = blobs.put(data)
    assert (uri, sha, size) == (f"sha256/{digest[:2]}/{digest}.safetensors", digest, len(data))
    assert blobs.path(uri) == tmp_path / "blobs" / "sha256" / digest[:2] / f"{digest}.safetensors"
    assert blobs.get(uri) == data
    assert blobs.put(data) == (uri, sha, size)
    assert [p.name for p in (tmp_path / "blobs").rglob("*") if p.is_file()] == [f"{digest}.safetensors"]


def test_put_replaces_a_damaged_blob(tmp_path):
    blobs = LocalArtifactStore(tmp_path)
    uri, _, _ = blobs.put(b"good")
    blobs.path(uri).write_bytes(b"bad!")
    blobs.put(b"good")
    assert blobs.get(uri) == b"good"
    assert not list(tmp_path.rglob("*.tmp"))


def test_put_into_an_unwritable_root_is_a_registry_error(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(RegistryError, match="--artifacts or TRANSFERKIT_ARTIFACTS"):
        LocalArtifactStore(tmp_path / "file" / "blobs").put(b"x")


def test_uris_cannot_escape_the_root(tmp_path):
    with pytest.raises(ArtifactCorruptError):
        LocalArtifactStore(tmp_path).path("../outside.safetensors")


def test_metadata_is_read_from_the_header():
    data = safetensors.torch.save({"w": torch.zeros(2)}, {"format": "x", "task": "glue/sst2"})
    assert safetensors_metadata(data) == {"format": "x", "task": "glue/sst2"}
    with pytest.raises(ValueError):
        safetensors_metadata(b"\xff" * 8)


def test_flipped_byte_is_detected_before_parsing(store, register):
    expert = register("victim")
    path = store.artifacts.path(expert.artifact_uri)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    for check in (store.verify_artifact, store.load_expert_tensors):
        with pytest.raises(ArtifactCorruptError, match=f"victim.*{expert.artifact_sha256[:12]}.*re-train") as caught:
            check(expert)
        assert str(path) in str(caught.value)


def test_missing_blob_is_reported(store, register):
    expert = register("victim")
    store.artifacts.path(expert.artifact_uri).unlink()
    for check in (store.verify_artifact, store.load_expert_tensors):
        with pytest.raises(ArtifactCorruptError, match="victim.*missing"):
            check(expert)


def test_registry_folder_can_be_moved(tmp_path):
    store = open_registry(f"sqlite:///{tmp_path}/registry.db")
    store.upsert_task(TaskRecord("glue/sst2", "d", {}, None, None))
    run = store.start_run("train-source", [], {}, None, {}, {}, {})
    expert = store.register_expert(
        run_id=run.id, name="portable", task_name="glue/sst2", method="lora", config={}, backbone={},
        backbone_id="bb", trainable_params=6, metrics={}, tensors={"lora.a": torch.arange(6, dtype=torch.float32).reshape(2, 3)},
        tensor_metadata={},
    )
    store.close()
    shutil.copytree(tmp_path, tmp_path.parent / "moved")
    moved = open_registry(f"sqlite:///{tmp_path.parent / 'moved' / 'registry.db'}")
    assert moved.artifacts.root == tmp_path.parent / "moved" / "registry-artifacts"
    tensors, _ = moved.load_expert_tensors(moved.get_expert("portable"))
    assert torch.equal(tensors["lora.a"], torch.arange(6, dtype=torch.float32).reshape(2, 3))
    assert expert.artifact_uri == moved.get_expert(expert.id).artifact_uri
    moved.close()


def test_equal_tensors_and_metadata_always_give_the_same_bytes():
    # safetensors orders its header by hash maps: without canonical bytes equal experts got different addresses.
    metadata = {"format": "transferkit-expert", "method": "lora", "config": "{}", "task": "glue/rte", "num_outputs": "2", "backbone": "b"}
    tensors = {"layer.1.w": torch.randn(3, 5), "a": torch.ones(3, dtype=torch.bfloat16), "count": torch.arange(7)}
    blobs = {canonical_safetensors(tensors, metadata) for _ in range(30)}
    assert len(blobs) == 1
    [blob] = blobs
    assert int.from_bytes(blob[:8], "little") % 8 == 0  # the header stays padded as safetensors pads it
    loaded = safetensors.torch.load(blob)
    assert loaded.keys() == tensors.keys() and all(torch.equal(loaded[k], tensors[k]) for k in tensors)
    assert safetensors_metadata(blob) == metadata
