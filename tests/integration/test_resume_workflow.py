"""`--resume` semantics on a tiny model and the real RTE files: which run is continued, and when a new one starts."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from crash_helpers import crash_after_step

from transferkit.errors import InvalidInputError, TrainingDivergedError
from transferkit.registry import open_registry
from transferkit.training.checkpoint import list_checkpoints, read_checkpoint
from transferkit.training.loop import TrainingConfig
from transferkit.workflows import SourceJob, train_source


@pytest.fixture
def store(tmp_path):
    registry = open_registry(f"sqlite:///{tmp_path}/r.db")
    yield registry
    registry.close()


@pytest.fixture
def job(tiny_model_dir, shared_data):
    def make(**changes) -> SourceJob:
        base = SourceJob(
            task="glue/rte", method="lora", model=str(tiny_model_dir), data_dir=shared_data, max_train_examples=64,
            training=TrainingConfig(max_steps=12, batch_size=8, eval_every=6, max_length=48, seed=2),
            show_progress=False, checkpoint_every=4,
        )
        return dataclasses.replace(base, **{"training": dataclasses.replace(base.training), **changes})

    return make


def test_resume_continues_the_failed_run_to_the_uninterrupted_result(store, job):
    reference = train_source(store, job())
    with crash_after_step(7):
        train_source(store, job())
    failed = store.list_runs(statuses=("failed",))
    assert len(failed) == 1 and "Crash" in failed[0].error
    assert [c.step for c in list_checkpoints(store.checkpoint_root / failed[0].id)] == [4]

    resumed = train_source(store, job(resume=True))
    assert resumed.run_id == failed[0].id  # the same run, continued
    assert store.get_run(resumed.run_id).status == "finished" and store.get_run(resumed.run_id).cost["segments"] == 2
    expected, actual = store.load_expert_tensors(reference)[0], store.load_expert_tensors(resumed)[0]
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    assert resumed.extra["loss_history"] == reference.extra["loss_history"] and resumed.metrics == reference.metrics
    assert (reference.name, resumed.name) == ("rte-lora", "rte-lora-2")
    assert not (store.checkpoint_root / resumed.run_id).exists()


def test_resume_only_matches_the_same_settings(store, job):
    with crash_after_step(5):
        train_source(store, job(name="mine"))
    [crashed] = store.list_runs()
    with crash_after_step(5):  # a newer unfinished run, other data size: must not be picked for "mine" as first set up
        train_source(store, job(name="mine", max_train_examples=32, resume=True))
    newer = store.list_runs()[0]
    assert newer.id != crashed.id and newer.status == "failed"
    for different in (job(name="other", resume=True), job(resume=True)):  # another --name, no --name
        assert train_source(store, different).run_id not in (crashed.id, newer.id)
    assert train_source(store, job(name="mine", resume=True)).run_id == crashed.id
    assert store.get_run(newer.id).status == "failed"


def test_resume_refuses_a_run_whose_process_is_alive(store, job):
    with crash_after_step(5):
        train_source(store, job())
    [run] = store.list_runs()
    store.reopen_run(run.id)  # now `running` in this very (alive) process, as if another job were training it
    with pytest.raises(InvalidInputError, match=f"run {run.id} is still running") as caught:
        train_source(store, job(resume=True))
    assert "\n" not in str(caught.value)
    assert store.list_experts() == [] and len(store.list_runs()) == 1


def test_real_divergence_fails_the_run_and_keeps_its_last_checkpoint(store, job):
    with pytest.raises(TrainingDivergedError, match=r"training diverged at step \d+: .*(nan|inf).*kept") as caught:
        train_source(store, job(lr=1e30, training=TrainingConfig(max_steps=12, batch_size=8, eval_every=6, max_length=48, seed=2,
                                                                  head_lr=1e30), checkpoint_every=1))
    [run] = store.list_runs()
    assert run.status == "failed" and run.error.startswith("TrainingDivergedError: training diverged")
    assert store.list_experts() == [] and "\n" not in str(caught.value)
    [checkpoint] = list_checkpoints(store.checkpoint_root / run.id)
    assert f"checkpoint (step {checkpoint.step}) is kept" in str(caught.value)
    tensors, _ = read_checkpoint(checkpoint.path)
    assert all(torch.isfinite(t.float()).all() for key, t in tensors.items() if key.startswith("model/"))


def test_transfer_resumes_a_crashed_pemt_run_exactly(store, job):
    from transferkit.composition.transfer import TransferJob, transfer

    for task in ("glue/mrpc", "glue/qnli"):  # two tiny sources for the mixture
        train_source(store, job(task=task, training=TrainingConfig(max_steps=2, batch_size=8, eval_every=2, max_length=48)))

    def transfer_job(**changes) -> TransferJob:
        base = job()
        return TransferJob(target="glue/rte", strategy="pemt", model=base.model, data_dir=base.data_dir, max_train_examples=64,
                           training=TrainingConfig(max_steps=10, batch_size=8, eval_every=5, max_length=48, seed=4),
                           show_progress=False, checkpoint_every=3, **changes)

    reference = transfer(store, transfer_job()).expert
    with crash_after_step(8):
        transfer(store, transfer_job())
    resumed = transfer(store, transfer_job(resume=True)).expert
    assert store.get_run(resumed.run_id).cost["segments"] == 2
    expected, actual = store.load_expert_tensors(reference)[0], store.load_expert_tensors(resumed)[0]
    assert expected.keys() == actual.keys() and any(k.startswith("composition.") for k in expected)
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    assert resumed.extra["gate_weights"] == reference.extra["gate_weights"]
