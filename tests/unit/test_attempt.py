"""ATTEMPT on a tiny random BERT: per-example attention summing to 1, only the target side trains,
stored experts reload exactly, and the transfer strategy records sources and attention in the registry."""

from __future__ import annotations

import pytest
import torch

from transferkit.backbone import load_backbone
from transferkit.composition.attempt import AttemptConfig, AttemptExpert
from transferkit.composition.transfer import TransferJob, transfer
from transferkit.errors import InvalidInputError
from transferkit.modeling import TaskModel
from transferkit.reproduce import reproduce
from transferkit.tasks import compute_metrics, load_splits, resolve_task
from transferkit.training.data import tokenize_examples
from transferkit.training.loop import TrainingConfig, predict
from transferkit.rebuild import load_expert_model
from transferkit.workflows import SourceJob, train_source

from test_composition import batch


def source_prompts(backbone, count: int, length: int = 4) -> list[torch.Tensor]:
    generator = torch.Generator().manual_seed(7)
    return [torch.randn(length, backbone.hidden_size, generator=generator) for _ in range(count)]


def test_attention_is_per_example_and_sums_to_one(tiny_backbone):
    expert = AttemptExpert(AttemptConfig(), tiny_backbone, source_prompts(tiny_backbone, 3))
    inputs = batch(tiny_backbone.tokenizer)
    embeddings = tiny_backbone.input_embeddings()(inputs["input_ids"])
    weights = expert.attention(embeddings, inputs["attention_mask"])
    assert weights.shape == (6, 4)  # 3 sources + the target prompt
    assert torch.allclose(weights.sum(-1), torch.ones(6))
    assert (weights.std(dim=0) > 1e-4).all(), "different inputs must get different attention"
    # The prepended prompt is P_target + sum_j a_j P_j, example by example.
    prepended, mask, virtual = expert.prepare_inputs(embeddings, inputs["attention_mask"])
    assert virtual == 4 and mask[:, :4].all()
    expected = expert.target + torch.einsum("bj,jmd->bmd", weights, expert.prompts())
    assert torch.allclose(prepended[:, :4], expected, atol=1e-6)
    assert torch.equal(prepended[:, 4:], embeddings)


def test_padding_does_not_change_an_examples_attention(tiny_backbone):
    expert = AttemptExpert(AttemptConfig(), tiny_backbone, source_prompts(tiny_backbone, 2))
    tokenizer = tiny_backbone.tokenizer
    alone = tokenizer(["the cat sat"], return_tensors="pt")
    padded = tokenizer(["the cat sat", "a much longer sentence about the dog in the house"], padding=True, return_tensors="pt")
    embed = tiny_backbone.input_embeddings()
    one = expert.attention(embed(alone["input_ids"]), alone["attention_mask"])
    two = expert.attention(embed(padded["input_ids"]), padded["attention_mask"])
    assert torch.allclose(one[0], two[0], atol=1e-6)


def test_only_the_target_prompt_and_attention_module_train(tiny_backbone):
    prompts = source_prompts(tiny_backbone, 2)
    expert = AttemptExpert(AttemptConfig(attention_hidden=8), tiny_backbone, prompts)
    trainable = {name for name, p in expert.named_parameters() if p.requires_grad}
    assert trainable == {"target", "down.weight", "down.bias", "up.weight", "up.bias", "norm.weight", "norm.bias"}
    assert "sources" not in expert.state_dict() and set(expert.export_tensors()) == trainable
    model = TaskModel(tiny_backbone, expert, 2)
    inputs = batch(tiny_backbone.tokenizer)
    model(**inputs).sum().backward()
    assert expert.target.grad is not None and expert.down.weight.grad.abs().sum() > 0
    assert torch.equal(expert.sources[0], prompts[0])


def test_mismatched_prompt_shapes_are_refused(tiny_backbone):
    with pytest.raises(InvalidInputError, match="same num_virtual_tokens"):
        AttemptExpert(AttemptConfig(), tiny_backbone, [*source_prompts(tiny_backbone, 1, 4), *source_prompts(tiny_backbone, 1, 5)])
    with pytest.raises(InvalidInputError, match="temperature"):
        AttemptConfig.from_options(["temperature=0"])


def _source(registry, tiny_model_dir, shared_data, task: str, method: str, options: list[str]):
    return train_source(registry, SourceJob(
        task=task, method=method, model=str(tiny_model_dir), data_dir=shared_data, max_train_examples=24,
        show_progress=False, method_options=options, training=TrainingConfig(max_steps=2, batch_size=8, seed=1),
    ))


def test_attempt_transfer_stores_sources_attention_and_reloads(registry, tiny_model_dir, shared_data):
    prompts = [_source(registry, tiny_model_dir, shared_data, t, "prompt", ["num_virtual_tokens=3"]) for t in ("sst2", "rte")]
    _source(registry, tiny_model_dir, shared_data, "mrpc", "lora", ["r=2"])  # not a prompt: never an attempt source
    job = TransferJob(
        target="cb", strategy="attempt", model=str(tiny_model_dir), data_dir=shared_data, max_train_examples=24,
        show_progress=False, method_options=["attention_hidden=8"], training=TrainingConfig(max_steps=3, batch_size=8, seed=2),
    )
    outcome = transfer(registry, job)
    expert = outcome.expert
    assert expert.method == "attempt" and expert.config["target_config"]["attention_hidden"] == 8
    assert {r.expert.id for r in outcome.ranking} == {p.id for p in prompts}
    gates = expert.extra["gate_weights"]
    assert set(gates["mean"]) == {p.name for p in prompts}
    assert sum(gates["mean"].values()) + gates["target"] == pytest.approx(1.0, abs=1e-4)
    edges = registry.lineage_edges(expert.id)["parents"]
    assert {(e.parent_id, e.role) for e in edges} == {(p.id, "source") for p in prompts}
    assert {e.weight for e in edges} == set(gates["mean"].values())
    # The artifact holds the target side only; the reloaded model (sources read back from the registry) predicts the same.
    tensors, _ = registry.load_expert_tensors(expert)
    assert {name.split(".")[0] for name in tensors} == {"expert", "head", "task_prompt"}
    assert {name.split(".")[1] for name in tensors if name.startswith("expert.")} == {"target", "down", "up", "norm"}
    assert expert.trainable_params == sum(t.numel() for t in tensors.values())

    backbone = load_backbone(str(tiny_model_dir))
    task = resolve_task("cb")
    test = tokenize_examples(load_splits(task, shared_data, seed=2, max_train_examples=24).test, backbone.tokenizer, 128, False)
    reloaded = load_expert_model(registry, expert, backbone)
    predictions = predict(reloaded, test, 64, backbone.tokenizer.pad_token_id, task)
    reloaded.detach()
    assert compute_metrics(task, predictions.tolist(), test.labels.tolist(), test.groups) == expert.metrics["test"]
    # The run's job record rebuilds the same transfer (ATTEMPT has no --method; its options ride in -O).
    job_record = registry.get_run(expert.run_id).hyperparams["job"]
    assert job_record["method"] is None and job_record["method_options"] == ["attention_hidden=8"]
    again = reproduce(registry, expert.name, data_dir=shared_data, show_progress=False, command=["test"])
    assert again.same_weights and again.max_difference == 0.0


def test_attempt_refuses_non_prompt_sources_and_a_target_method(registry, tiny_model_dir, shared_data):
    lora = _source(registry, tiny_model_dir, shared_data, "sst2", "lora", ["r=2"])
    common = dict(target="cb", strategy="attempt", model=str(tiny_model_dir), data_dir=shared_data, show_progress=False)
    with pytest.raises(InvalidInputError, match="prompt experts"):
        transfer(registry, TransferJob(sources=[lora.name], **common))
    with pytest.raises(InvalidInputError, match="drop --method"):
        transfer(registry, TransferJob(method="lora", **common))
    assert registry.count_experts() == 1
