"""A process killed while storing an expert leaves no half-written expert, and `gc` cleans up after it.

The kill is a real SIGKILL, injected at the boundaries of `register_expert`: while the blob's
temporary file is being written, and after the blob is durable but before its row is committed.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from datetime import timedelta

import pytest
import torch

from transferkit.gc import collect_garbage
from transferkit.registry import TaskRecord, open_registry

# Stores one expert; `put` is wrapped so the process dies at the chosen boundary.
STORE_AND_DIE = """
import os, signal, sys
import torch
import transferkit.registry.artifacts as artifacts
from transferkit.registry import TaskRecord, open_registry

url, boundary = sys.argv[1], sys.argv[2]
store = open_registry(url)
store.upsert_task(TaskRecord("glue/rte", "d", {}, None, None))
run = store.start_run("train-source", ["test"], {}, 1, {}, {}, {})
die = lambda *args, **kwargs: os.kill(os.getpid(), signal.SIGKILL)
if boundary == "blob-written":
    real_put = artifacts.LocalArtifactStore.put
    artifacts.LocalArtifactStore.put = lambda self, data, suffix=".safetensors": (real_put(self, data, suffix), die())[0]
else:  # the temporary file is written, the rename into place never happens
    artifacts.os.replace = die
store.register_expert(
    run_id=run.id, name="half", task_name="glue/rte", method="lora", config={}, backbone={}, backbone_id="bb",
    trainable_params=3, metrics={}, tensors={"w": torch.ones(3)}, tensor_metadata={"format": "transferkit.expert/1"}, cost={},
)
print("not killed")
"""


def _age(path, hours: float) -> None:
    then = time.time() - hours * 3600
    os.utime(path, (then, then))


@pytest.mark.parametrize("boundary,partial", [("blob-written", False), ("blob-being-written", True)])
def test_kill_while_storing_leaves_no_expert_and_gc_cleans_up(tmp_path, boundary, partial):
    url = f"sqlite:///{tmp_path}/reg.db"
    died = subprocess.run([sys.executable, "-c", STORE_AND_DIE, url, boundary], capture_output=True, text=True, timeout=300)
    assert died.returncode == -signal.SIGKILL, died.stderr

    with sqlite3.connect(tmp_path / "reg.db") as connection:
        assert connection.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    store = open_registry(url)
    assert store.list_experts() == []  # no row: nothing visible points at a missing or partial file
    [run] = store.list_runs()
    assert run.status == "running" and run.pid is not None
    [blob] = store.artifacts.blobs()
    assert blob.partial is partial

    fresh = collect_garbage(store)  # dry run: the process is gone; the blob is too young to touch
    assert [(i.kind, i.target) for i in fresh.items] == [("stale-run", run.id)]
    assert [i.target for i in fresh.kept] == [blob.uri]

    _age(store.artifacts.path(blob.uri), hours=2)
    planned = collect_garbage(store)
    assert [(i.kind, i.target) for i in planned.items] == [("stale-run", run.id), ("orphaned-blob", blob.uri)]
    assert store.get_run(run.id).status == "running" and list(store.artifacts.blobs())  # a dry run changes nothing

    applied = collect_garbage(store, apply=True)
    assert applied.to_dict()["items"] == planned.to_dict()["items"]
    assert list(store.artifacts.blobs()) == []
    closed = store.get_run(run.id)
    assert closed.status == "failed" and "closed by transferkit gc" in closed.error and f"process {run.pid}" in closed.error
    assert collect_garbage(store).items == []

    # The registry is fully usable: the same expert can be stored now.
    again = store.start_run("train-source", ["test"], {}, 1, {}, {}, {})
    expert = store.register_expert(
        run_id=again.id, name="half", task_name="glue/rte", method="lora", config={}, backbone={}, backbone_id="bb",
        trainable_params=3, metrics={}, tensors={"w": torch.ones(3)}, tensor_metadata={"format": "transferkit.expert/1"}, cost={},
    )
    assert torch.equal(store.load_expert_tensors(expert)[0]["w"], torch.ones(3))
    store.close()


def test_gc_keeps_a_blob_that_is_referenced_or_reused(tmp_path):
    store = open_registry(f"sqlite:///{tmp_path}/reg.db")
    store.upsert_task(TaskRecord("glue/rte", "d", {}, None, None))
    run = store.start_run("train-source", ["test"], {}, 1, {}, {}, {})
    kwargs = dict(task_name="glue/rte", method="lora", config={}, backbone={}, backbone_id="bb", trainable_params=3, metrics={},
                  tensors={"w": torch.ones(3)}, tensor_metadata={"format": "transferkit.expert/1"})
    expert = store.register_expert(run_id=run.id, name="kept", cost={}, **kwargs)
    path = store.artifacts.path(expert.artifact_uri)
    _age(path, hours=48)
    assert collect_garbage(store, apply=True).items == []
    assert path.exists()
    # An old blob whose bytes a new expert reuses is refreshed on reuse, so gc's grace period would protect it.
    store.artifacts.put(path.read_bytes())
    assert time.time() - path.stat().st_mtime < timedelta(minutes=5).total_seconds()
    store.close()
