"""A `compare` grid stopped by signals: mid-cell it stops after that cell's checkpoint, between cells before the
next one, and running it again finishes the grid with cells bit-identical to an uninterrupted grid.

In-process (tiny random BERT, real CommitmentBank files): the signal is a real one, sent to this process at a chosen step.
"""

from __future__ import annotations

import os
import signal

import pytest
import torch

from transferkit.composition.compare import Grid, GridBudget, run_grid
from transferkit.errors import TrainingInterrupted
from transferkit.registry import open_registry
from transferkit.training.checkpoint import list_checkpoints
from transferkit.training.cost import CostMeter

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
