"""The adaptive schedule and early stopping: lengths from the data size, explicit flags win, best kept."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from transferkit.methods import get_method
from transferkit.modeling import TaskModel
from transferkit.training.data import tokenize_examples
from transferkit.training.loop import TrainingConfig, train
from transferkit.training.schedule import (
    AUTO_EPOCHS,
    AUTO_EXAMPLE_BUDGET,
    AUTO_PATIENCE,
    AUTO_TOKEN_BUDGET,
    evaluations_since_best,
    improved,
    plan_schedule,
)

from unit.test_training import TOY, toy_examples


def test_small_sets_get_many_epochs_and_large_sets_a_bounded_number_of_steps():
    cb = plan_schedule(250, 28, 32)
    assert cb.adaptive and cb.max_steps == math.ceil(AUTO_EPOCHS * 250 / 32) and cb.patience == AUTO_PATIENCE
    assert cb.epochs(250, 32) == pytest.approx(AUTO_EPOCHS, rel=0.01)
    rte = plan_schedule(2490, 138, 32)
    assert rte.max_steps == AUTO_EXAMPLE_BUDGET // 32 and rte.epochs(2490, 32) < AUTO_EPOCHS
    sst2 = plan_schedule(66349, 1000, 32)
    assert sst2.max_steps == rte.max_steps  # the example budget bounds every large set alike
    assert "20 epochs" in cb.reason and "budget" in rte.reason and "early stopping after 5" in cb.reason
    assert cb.min_steps == math.ceil(cb.max_steps / 2) and f"not before step {cb.min_steps}" in cb.reason


def test_long_inputs_get_a_token_budget():
    rte = plan_schedule(2490, 138, 32, train_tokens=2490 * 70)
    assert rte.max_steps == math.ceil(AUTO_TOKEN_BUDGET / 70 / 32) and "800,000-token budget (70 tokens per example)" in rte.reason
    sst2 = plan_schedule(66349, 1000, 32, train_tokens=66349 * 13)
    assert sst2.max_steps == AUTO_EXAMPLE_BUDGET // 32  # short inputs: the example budget binds first


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 2_000_000), st.integers(1, 20_000), st.integers(1, 512), st.integers(1, 512))
def test_adaptive_schedule_bounds_hold_for_any_size(train_size, dev_size, batch_size, mean_length):
    schedule = plan_schedule(train_size, dev_size, batch_size, train_tokens=train_size * mean_length)
    examples = schedule.max_steps * batch_size
    bound = min(AUTO_EPOCHS * train_size, AUTO_EXAMPLE_BUDGET, math.ceil(AUTO_TOKEN_BUDGET / mean_length))
    assert examples < bound + batch_size  # never past any bound by more than one batch
    assert schedule.max_steps >= 1 and 1 <= schedule.eval_every <= max(1, math.ceil(train_size / batch_size))


def test_explicit_flags_win_and_turn_early_stopping_off_unless_asked():
    steps = plan_schedule(250, 28, 32, max_steps=50)
    assert (steps.max_steps, steps.patience, steps.adaptive) == (50, None, False) and "--max-steps 50" in steps.reason
    epochs = plan_schedule(250, 28, 32, epochs=2)
    assert epochs.max_steps == 16 and epochs.patience is None
    assert plan_schedule(250, 28, 32, max_steps=50, patience=3).patience == 3
    assert plan_schedule(250, 28, 32, patience=0).patience is None  # adaptive length, no early stopping
    assert plan_schedule(250, 28, 32, eval_every=7).eval_every == 7


def test_improvement_is_a_higher_metric_or_the_same_metric_at_a_lower_loss():
    assert improved(0.8, 0.5, 0.7, 0.1)
    assert not improved(0.7, 0.1, 0.8, 0.5)
    assert improved(0.8, 0.4, 0.8, 0.5) and not improved(0.8, 0.5, 0.8, 0.5) and not improved(0.8, 0.6, 0.8, 0.5)
    history = [{"step": s} for s in (10, 20, 30, 40)]
    assert evaluations_since_best(history, 20) == 2


def _toy_splits(tiny_backbone):
    return [
        tokenize_examples(toy_examples(n, seed), tiny_backbone.tokenizer, 32, regression=False, use_cache=False)
        for n, seed in ((64, 1), (32, 2), (32, 3))
    ]


def test_training_stops_early_after_patience_and_keeps_the_best(tiny_backbone):
    train_split, dev, test = _toy_splits(tiny_backbone)
    torch.manual_seed(0)
    expert = get_method("lora").build(get_method("lora").config_class(r=2), tiny_backbone)
    model = TaskModel(tiny_backbone, expert, 2)
    # A learning rate of ~0 keeps the dev metric flat, so no evaluation after the first improves on it.
    config = TrainingConfig(batch_size=8, lr=1e-12, head_lr=1e-12, prompt_lr=1e-12, eval_every=2, patience=3, seed=0)
    result = train(model, TOY, train_split, dev, test, config, tiny_backbone.tokenizer.pad_token_id, show_progress=False)
    model.detach()
    schedule = result.schedule
    assert schedule["adaptive"] and schedule["max_steps"] == AUTO_EPOCHS * 64 // 8
    evaluated = [entry["step"] for entry in result.eval_history]
    # It waits for half the schedule, then stops at the first evaluation 3 or more evaluations after the best.
    assert schedule["min_steps"] == schedule["max_steps"] // 2
    assert schedule["min_steps"] <= result.steps < schedule["max_steps"] and result.steps == evaluated[-1]
    assert evaluations_since_best(result.eval_history, result.best_step) >= 3
    assert result.steps - 2 < schedule["min_steps"] or evaluations_since_best(result.eval_history[:-1], result.best_step) < 3
    assert "early stop" in result.stop_reason and f"kept step {result.best_step}" in result.stop_reason
    assert all("dev_loss" in entry for entry in result.eval_history)
    assert len(result.test_predictions) == len(test)


def test_a_fixed_budget_runs_to_the_end(tiny_backbone):
    train_split, dev, test = _toy_splits(tiny_backbone)
    expert = get_method("lora").build(get_method("lora").config_class(r=2), tiny_backbone)
    model = TaskModel(tiny_backbone, expert, 2)
    config = TrainingConfig(max_steps=6, batch_size=8, lr=1e-12, head_lr=1e-12, prompt_lr=1e-12, eval_every=2, seed=0)
    result = train(model, TOY, train_split, dev, test, config, tiny_backbone.tokenizer.pad_token_id, show_progress=False)
    model.detach()
    assert result.steps == 6 and result.stop_reason.startswith("completed all 6 steps")
    assert not result.schedule["adaptive"] and result.schedule["patience"] is None
