"""Resume on the real backbone (packaged MiniLM) and real CommitmentBank data, at a tiny budget."""

from __future__ import annotations

import pytest
import torch
from crash_helpers import crash_after_step

from transferkit.registry import open_registry
from transferkit.training.checkpoint import list_checkpoints
from transferkit.training.loop import TrainingConfig
from transferkit.workflows import SourceJob, train_source

pytestmark = pytest.mark.real


def test_crashed_minilm_training_resumes_bitwise(tmp_path, shared_data):
    store = open_registry(f"sqlite:///{tmp_path}/r.db")

    def job(**changes) -> SourceJob:
        return SourceJob(task="superglue/cb", method="lora", data_dir=shared_data, show_progress=False, checkpoint_every=2,
                         training=TrainingConfig(max_steps=6, batch_size=8, eval_every=3, max_length=64, seed=1), **changes)

    reference = train_source(store, job())
    with crash_after_step(3):
        train_source(store, job())
    [failed] = store.list_runs(statuses=("failed",))
    assert [c.step for c in list_checkpoints(store.checkpoint_root / failed.id)] == [2]

    resumed = train_source(store, job(resume=True))
    assert resumed.run_id == failed.id
    expected, actual = store.load_expert_tensors(reference)[0], store.load_expert_tensors(resumed)[0]
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    assert resumed.metrics == reference.metrics and resumed.extra["loss_history"] == reference.extra["loss_history"]
    cost = store.get_run(resumed.run_id).cost
    assert cost["segments"] == 2 and cost["examples"] == 6 * 8
    store.close()
