"""Artifact stores at fsspec URLs: local folders (plain paths and file://), fsspec's memory filesystem, and
S3 through s3fs against moto's S3-compatible server on 127.0.0.1 (a real HTTP server in this process).

Each remote store is checked for content addressing, atomic writes (no temporary key left behind),
absolute URIs that any registry handle can read, and sha256 verification of tampered or missing blobs.
"""

from __future__ import annotations

import hashlib
import socket
import uuid

import pytest
import torch

from transferkit.errors import ArtifactCorruptError, RegistryError
from transferkit.registry import FsspecArtifactStore, LocalArtifactStore, TaskRecord, open_artifact_store, open_registry

BUCKET = "transferkit-test"


@pytest.fixture(scope="module")
def s3_endpoint():
    """moto's S3 server on a free loopback port, with one bucket; s3fs finds it through AWS_ENDPOINT_URL."""
    server_module = pytest.importorskip("moto.server", reason="moto[server] is not installed (test extra)")
    s3fs = pytest.importorskip("s3fs", reason="s3fs is not installed (test extra)")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = server_module.ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    with pytest.MonkeyPatch.context() as patch:
        for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                           "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": endpoint}.items():
            patch.setenv(key, value)
        s3fs.S3FileSystem(skip_instance_cache=True).mkdir(BUCKET)
        yield endpoint
    server.stop()


@pytest.fixture(params=["memory", "s3"])
def remote_url(request) -> str:
    """A fresh root on each remote kind of store."""
    if request.param == "s3":
        request.getfixturevalue("s3_endpoint")
        return f"s3://{BUCKET}/{uuid.uuid4().hex[:8]}/blobs"
    return f"memory://transferkit-{uuid.uuid4().hex[:8]}/blobs"


def test_plain_paths_and_file_urls_are_local_folders(tmp_path):
    for location in (tmp_path, str(tmp_path), f"file://{tmp_path}"):
        store = open_artifact_store(location)
        assert isinstance(store, LocalArtifactStore) and store.root == tmp_path
    uri, _, _ = open_artifact_store(f"file://{tmp_path}").put(b"local bytes")
    assert not uri.startswith(("file:", "/")) and (tmp_path / uri).read_bytes() == b"local bytes"


def test_remote_put_is_content_addressed_atomic_and_absolute(remote_url):
    store = open_artifact_store(remote_url)
    assert isinstance(store, FsspecArtifactStore)
    data = b"expert bytes" * 100
    digest = hashlib.sha256(data).hexdigest()
    uri, sha, size = store.put(data)
    assert (uri, sha, size) == (f"{remote_url}/sha256/{digest[:2]}/{digest}.safetensors", digest, len(data))
    assert store.get(uri) == data
    assert store.put(data) == (uri, sha, size)
    assert store.fs.find(store.root) == [f"{store.root}/sha256/{digest[:2]}/{digest}.safetensors"]  # no temporary key left


def test_remote_artifacts_are_verified_and_readable_from_any_handle(remote_url, tmp_path):
    writer = open_registry(f"sqlite:///{tmp_path}/r.db", remote_url)
    writer.upsert_task(TaskRecord("glue/sst2", "d", {}, None, None))
    run = writer.start_run("train-source", [], {}, None, {}, {}, {})
    tensors = {"lora.a": torch.arange(6, dtype=torch.float32).reshape(2, 3)}
    expert = writer.register_expert(
        run_id=run.id, name="remote", task_name="glue/sst2", method="lora", config={}, backbone={}, backbone_id="bb",
        trainable_params=6, metrics={}, tensors=tensors, tensor_metadata={"format": "x"},
    )
    assert expert.artifact_uri.startswith(remote_url)
    writer.close()
    # Another handle with its own local default store still reads the blob from where it was written.
    reader = open_registry(f"sqlite:///{tmp_path}/r.db", tmp_path / "elsewhere")
    loaded, metadata = reader.load_expert_tensors(reader.get_expert("remote"))
    assert torch.equal(loaded["lora.a"], tensors["lora.a"]) and metadata == {"format": "x"}

    blobs = open_artifact_store(remote_url)
    key = expert.artifact_uri.split("://", 1)[1]
    good = blobs.fs.cat_file(key)
    blobs.fs.pipe_file(key, good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(ArtifactCorruptError, match=f"remote.*{remote_url}.*expected sha256 {expert.artifact_sha256[:12]}"):
        reader.verify_artifact(expert)
    blobs.fs.rm(key)
    with pytest.raises(ArtifactCorruptError, match="remote.*missing or unreadable"):
        reader.load_expert_tensors(expert)
    reader.close()


def test_missing_bucket_is_a_one_line_registry_error(s3_endpoint):
    store = open_artifact_store(f"s3://no-such-bucket-{uuid.uuid4().hex[:6]}/blobs")
    with pytest.raises(RegistryError, match="cannot write the artifact s3://no-such-bucket-.*/blobs/sha256/.*--artifacts") as caught:
        store.put(b"x")
    assert "\n" not in str(caught.value)


def test_unknown_protocol_is_a_registry_error():
    with pytest.raises(RegistryError, match="nosuchproto://x.*--artifacts"):
        open_artifact_store("nosuchproto://x/blobs")
