"""Signals sent to this process while it trains (tiny random BERT, real data), for what needs no new process:
a second signal that must stop at once (mid-step, and in the middle of writing the stop checkpoint) without
corrupting anything, a `compare` grid stopped mid-cell and between cells, and a `reproduce` stopped and resumed.
Each resumes bit-identically.
"""

from __future__ import annotations

import os
import signal

import pytest
import torch

import transferkit.training.checkpoint as checkpoint_module
import transferkit.training.interrupt as interrupt
from transferkit.composition.compare import Grid, GridBudget, run_grid
from transferkit.errors import TrainingInterrupted
from transferkit.registry import open_registry
from transferkit.reproduce import reproduce
from transferkit.training.checkpoint import list_checkpoints, read_checkpoint
from transferkit.training.cost import CostMeter
from transferkit.training.loop import TrainingConfig
from transferkit.workflows import SourceJob, train_source

BUDGET = GridBudget(max_steps=6, batch_size=8, max_length=48, eval_every=3)


def _grid(name: str) -> Grid:
    return Grid(name=name, targets=["superglue/cb"], strategies=["scratch"], seeds=[1, 2], budget=BUDGET)


def _signal_once_at(monkeypatch: pytest.MonkeyPatch, step: int, number: int) -> None:
    original, sent = CostMeter.add_batch, []

    def add_batch(self: CostMeter, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        if self.steps == step and not sent:
            sent.append(number)
            os.kill(os.getpid(), number)

    monkeypatch.setattr(CostMeter, "add_batch", add_batch)


def _source_job(tiny_model_dir, shared_data, **changes) -> SourceJob:
    return SourceJob(task="glue/rte", method="lora", method_options=["dropout=0.1"], model=str(tiny_model_dir),
                     data_dir=shared_data, max_train_examples=64, show_progress=False, checkpoint_every=4,
                     training=TrainingConfig(max_steps=12, batch_size=8, eval_every=6, max_length=48, seed=2), **changes)


@pytest.mark.parametrize("where", ["mid-step", "mid-checkpoint-write"])
def test_a_second_signal_stops_at_once_and_corrupts_nothing(where, tmp_path, tiny_model_dir, shared_data, monkeypatch):
    store = open_registry(f"sqlite:///{tmp_path}/r.db")
    reference = train_source(store, _source_job(tiny_model_dir, shared_data))
    monkeypatch.setattr(interrupt, "DUPLICATE_WINDOW", 0.0)  # every signal after the first is a second request
    original_add, original_write = CostMeter.add_batch, checkpoint_module.write_durably

    def add_batch(self: CostMeter, *args, **kwargs) -> None:
        original_add(self, *args, **kwargs)
        if self.steps == 6:
            os.kill(os.getpid(), signal.SIGTERM)  # the first: stop after this step, with a checkpoint
            if where == "mid-step":
                os.kill(os.getpid(), signal.SIGINT)  # the second, while the step is still running

    def write_durably(path, data) -> None:  # the second arrives once the stop checkpoint's tensors are on disk
        original_write(path, data)
        if path.name == checkpoint_module.TENSORS_FILE and "00000006" in str(path):
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(CostMeter, "add_batch", add_batch)
    monkeypatch.setattr(checkpoint_module, "write_durably", write_durably)
    with pytest.raises(TrainingInterrupted) as caught:
        train_source(store, _source_job(tiny_model_dir, shared_data))
    monkeypatch.undo()
    assert caught.value.exit_code == 130
    assert str(caught.value) == ("stopped at once on a second SIGINT; its checkpoint at step 4 is kept; "
                                 "run the same job again with resume=True to continue it")
    [run] = store.list_runs(statuses=("interrupted",))
    folder = store.checkpoint_root / run.id
    assert [c.step for c in list_checkpoints(folder)] == [4] and not list(folder.glob(".*"))  # no half-written step 6
    read_checkpoint(list_checkpoints(folder)[0].path)
    resumed = train_source(store, _source_job(tiny_model_dir, shared_data, resume=True))
    assert resumed.run_id == run.id
    expected, actual = store.load_expert_tensors(reference)[0], store.load_expert_tensors(resumed)[0]
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    store.close()


def test_a_signal_stops_the_grid_and_compare_again_finishes_it_bitwise(tmp_path, tiny_model_dir, shared_data, monkeypatch):
    store = open_registry(f"sqlite:///{tmp_path}/r.db")
    run = lambda grid: run_grid(store, grid, shared_data, str(tiny_model_dir), show_progress=False)  # noqa: E731
    run(_grid("ref"))

    _signal_once_at(monkeypatch, 3, signal.SIGTERM)  # mid-cell: the cell stops after its step-3 checkpoint
    with pytest.raises(TrainingInterrupted) as caught:
        run(_grid("cut"))
    assert caught.value.exit_code == 143
    assert str(caught.value) == ("interrupted at step 3 (SIGTERM); checkpoint saved; "
                                 "run the same `transferkit compare` command again to continue")
    [stopped] = store.list_runs(statuses=("interrupted",))
    assert [c.step for c in list_checkpoints(store.checkpoint_root / stopped.id)] == [3]
    assert not [e for e in store.list_experts() if e.name.startswith("cut-")]

    monkeypatch.undo()
    _signal_once_at(monkeypatch, 6, signal.SIGINT)  # the cell's last step: it is stored, and the grid stops before the next
    with pytest.raises(TrainingInterrupted, match=r"interrupted before cell cut-cb-scratch-s2 \(SIGINT\); every earlier "
                                                  r"cell is stored; run the same `transferkit compare`") as caught:
        run(_grid("cut"))
    assert caught.value.exit_code == 130
    assert [e.name for e in store.list_experts() if e.name.startswith("cut-")] == ["cut-cb-scratch-s1"]
    assert store.get_run(store.get_expert("cut-cb-scratch-s1").run_id).id == stopped.id  # the interrupted run, resumed

    monkeypatch.undo()
    run(_grid("cut"))
    for seed in (1, 2):
        expected = store.load_expert_tensors(store.get_expert(f"ref-cb-scratch-s{seed}"))[0]
        actual = store.load_expert_tensors(store.get_expert(f"cut-cb-scratch-s{seed}"))[0]
        assert all(torch.equal(expected[k], actual[k]) for k in expected)
    assert store.list_runs(statuses=("interrupted", "failed", "running")) == []
    store.close()


def test_an_interrupted_reproduction_resumes_with_its_own_command(tmp_path, tiny_model_dir, shared_data, monkeypatch):
    store = open_registry(f"sqlite:///{tmp_path}/r.db")
    original = train_source(store, _source_job(tiny_model_dir, shared_data))
    command = ["transferkit", "reproduce", original.name]
    _signal_once_at(monkeypatch, 5, signal.SIGUSR1)
    with pytest.raises(TrainingInterrupted) as caught:
        reproduce(store, original.name, data_dir=shared_data, command=command, show_progress=False)
    monkeypatch.undo()
    assert caught.value.exit_code == 128 + signal.SIGUSR1
    assert str(caught.value).endswith("resume with the same command plus --resume")  # `reproduce --resume` exists
    resumed = reproduce(store, original.name, data_dir=shared_data, command=[*command, "--resume"], show_progress=False,
                        resume=True)
    assert resumed.same_weights and store.get_run(resumed.expert.run_id).cost["segments"] == 2
    store.close()
