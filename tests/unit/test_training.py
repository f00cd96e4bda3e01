"""Tokenisation cache, length-bucketed batching and the training loop on a tiny random BERT."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from transferkit.methods import get_method
from transferkit.modeling import TaskModel
from transferkit.tasks import Example, TaskSpec
from transferkit.training import data as data_module
from transferkit.training.cost import CostMeter
from transferkit.training.data import collate, length_bucketed_batches, tokenize_examples
from transferkit.training.loop import TrainingConfig, train
from transferkit.errors import InvalidInputError

TOY = TaskSpec("test/toy", "test", "toy", "Decide whether the sentence mentions a cat.", ("sentence",), ("no", "yes"), ("accuracy",), "small")
TOY_REGRESSION = TaskSpec("test/toyreg", "test", "toyreg", "Count the cats.", ("sentence",), None, ("pearson", "spearman"), "small")


def toy_examples(n: int, seed: int) -> list[Example]:
    rng = np.random.default_rng(seed)
    words = ["the", "dog", "ran", "far", "away", "house", "tree", "blue", "green", "sun"]
    examples = []
    for _ in range(n):
        sentence = list(rng.choice(words, size=int(rng.integers(3, 12))))
        label = int(rng.integers(0, 2))
        if label:
            sentence.insert(int(rng.integers(0, len(sentence))), "cat")
        examples.append(Example((" ".join(sentence),), label))
    return examples


def test_tokenisation_is_cached_and_identical(tiny_backbone, monkeypatch):
    examples = toy_examples(20, 0)
    first = tokenize_examples(examples, tiny_backbone.tokenizer, 32, regression=False)
    calls = []
    monkeypatch.setattr(tiny_backbone, "tokenizer", _CountingTokenizer(tiny_backbone.tokenizer, calls))
    second = tokenize_examples(examples, tiny_backbone.tokenizer, 32, regression=False)
    assert calls == []  # served from the on-disk cache
    assert np.array_equal(first.ids, second.ids) and np.array_equal(first.offsets, second.offsets)
    assert list(data_module.cache_dir().glob("*.npz"))


class _CountingTokenizer:
    def __init__(self, inner, calls):
        self.inner, self.calls = inner, calls

    def __call__(self, *args, **kwargs):
        self.calls.append(1)
        return self.inner(*args, **kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_pairs_truncate_and_keep_token_types(tiny_backbone):
    examples = [Example(("a premise " * 40, "a hypothesis"), 1)]
    split = tokenize_examples(examples, tiny_backbone.tokenizer, 24, regression=False, use_cache=False)
    assert split.lengths()[0] == 24 and split.types is not None and split.types.max() == 1


def test_batches_cover_everything_once_and_group_lengths():
    lengths = np.random.default_rng(0).integers(5, 120, size=1000)
    batches = length_bucketed_batches(lengths, 16, seed=3)
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(1000))
    spread = np.mean([lengths[b].max() - lengths[b].min() for b in batches])
    random_spread = np.mean([lengths[b].max() - lengths[b].min() for b in np.array_split(np.arange(1000), 63)])
    assert spread < random_spread / 4
    assert batches == length_bucketed_batches(lengths, 16, seed=3)
    assert batches != length_bucketed_batches(lengths, 16, seed=4)


def test_collate_pads_dynamically(tiny_backbone):
    split = tokenize_examples(toy_examples(8, 1), tiny_backbone.tokenizer, 64, regression=False, use_cache=False)
    batch = collate(split, [0, 1, 2], tiny_backbone.tokenizer.pad_token_id)
    assert batch["input_ids"].shape[1] == max(split.lengths()[:3])
    assert batch["attention_mask"].sum().item() == split.lengths()[:3].sum()


def _toy_model(backbone, method, task=TOY):
    method_type = get_method(method)
    torch.manual_seed(0)
    return TaskModel(backbone, method_type.build(method_type.config_class(), backbone), task.num_labels)


@pytest.mark.parametrize("method", ["prompt", "lora", "adapter"])
def test_loop_learns_a_toy_task(tiny_backbone, method):
    tokenizer = tiny_backbone.tokenizer
    splits = [tokenize_examples(toy_examples(n, s), tokenizer, 32, regression=False, use_cache=False) for n, s in ((256, 1), (64, 2), (64, 3))]
    model = _toy_model(tiny_backbone, method)
    config = TrainingConfig(max_steps=90, batch_size=16, lr=3e-2, head_lr=1e-2, eval_every=30, seed=0)
    result = train(model, TOY, *splits, config, tokenizer.pad_token_id, show_progress=False)
    losses = [loss for _, loss in result.loss_history]
    assert np.mean(losses[-10:]) < np.mean(losses[:10])
    assert result.metrics["test"]["accuracy"] > 0.6
    assert [h["step"] for h in result.eval_history] == [30, 60, 90]
    assert result.best_step in (30, 60, 90)
    best_dev = max(h["dev"]["accuracy"] for h in result.eval_history)
    assert result.metrics["dev"]["accuracy"] == pytest.approx(best_dev)  # the best parameters are kept
    assert result.cost["examples"] == 90 * 16 and result.cost["steps"] == 90


def test_loop_is_deterministic_per_seed(tiny_backbone):
    tokenizer = tiny_backbone.tokenizer
    splits = [tokenize_examples(toy_examples(n, s), tokenizer, 32, regression=False, use_cache=False) for n, s in ((64, 1), (16, 2), (16, 3))]
    runs = []
    for _ in range(2):
        model = _toy_model(tiny_backbone, "lora")
        config = TrainingConfig(max_steps=5, batch_size=8, eval_every=5, seed=7)
        runs.append(train(model, TOY, *splits, config, tokenizer.pad_token_id, show_progress=False).loss_history)
        model.expert.detach()
    assert runs[0] == runs[1]


def test_regression_task_trains(tiny_backbone):
    tokenizer = tiny_backbone.tokenizer
    examples = [Example((e.texts[0],), float(e.texts[0].count("cat") * 2.5)) for e in toy_examples(128, 4)]
    split = tokenize_examples(examples, tokenizer, 32, regression=True, use_cache=False)
    model = _toy_model(tiny_backbone, "adapter", TOY_REGRESSION)
    config = TrainingConfig(max_steps=20, batch_size=16, lr=1e-2, head_lr=1e-2, eval_every=20)
    result = train(model, TOY_REGRESSION, split, split, split, config, tokenizer.pad_token_id, show_progress=False)
    assert set(result.metrics["test"]) == {"pearson", "spearman"}


@pytest.mark.parametrize("field,value", [("max_steps", 0), ("batch_size", 0), ("lr", -1.0), ("max_length", 2), ("precision", "fp8")])
def test_bad_training_config(field, value):
    config = TrainingConfig(**{field: value})
    with pytest.raises(InvalidInputError):
        config.validate()


def test_cost_meter_measures_cpu_work():
    meter = CostMeter(torch.device("cpu"))
    x = torch.randn(400, 400)
    for _ in range(30):
        x = torch.tanh(x @ x)
    meter.add_batch(examples=4, tokens=100, seconds=0.5)
    cost = meter.finish()
    assert cost["wall_seconds"] > 0 and cost["device_seconds"] > 0
    assert cost["device_kind"] == "cpu" and cost["device_seconds_kind"] == "cpu-core-seconds"
    assert cost["examples"] == 4 and cost["tokens"] == 100 and cost["peak_memory_bytes"] > 0
    assert cost["train_examples_per_second"] == 8.0
    # Energy is either measured or explained, never invented.
    assert (cost["energy_joules"] is None) == bool(cost["energy_note"])


@pytest.mark.parametrize("method", ["prompt", "lora", "adapter", "prefix", "ept", "mept"])
def test_every_trainable_parameter_gets_a_gradient(tiny_backbone, method):
    """DDP (multi-process training) runs without searching for unused parameters: every step must reach them all,
    with a task prompt correlated with source prompts and, for mixable methods, a top-1 routed source mixture."""
    from transferkit.composition.pemt import build_mixture
    from transferkit.methods import METHODS
    from transferkit.task_prompt import TaskPrompt, description_prompt

    spec = METHODS[method]
    prompt = TaskPrompt(description_prompt(TOY.description, tiny_backbone, 4), [torch.randn(4, tiny_backbone.hidden_size)])
    expert, composition = spec.build(spec.config_class(), tiny_backbone), None
    if spec.composable:
        composition = build_mixture([spec.build(spec.config_class(), tiny_backbone) for _ in range(3)], tiny_backbone, 1, True)
    model = TaskModel(tiny_backbone, expert, 2, task_prompt=prompt, composition=composition)
    model.train()
    batch = collate(tokenize_examples(toy_examples(4, 0), tiny_backbone.tokenizer, 32, regression=False), range(4), 0)
    labels = batch.pop("labels")
    loss = torch.nn.functional.cross_entropy(model(**batch), labels)
    if composition is not None:
        loss = loss + composition.auxiliary_loss()
    loss.backward()
    assert [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None] == []
    model.detach()
