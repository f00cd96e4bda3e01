"""Merging a mixture with input-independent weights into one expert: exact stacks, a task-level gate,
and `transferkit merge` end to end on the tiny BERT with real task files."""

from __future__ import annotations

import json

import pytest
import torch

from transferkit.composition.fixed import FixedExperts
from transferkit.composition.merge import merge_expert
from transferkit.composition.pemt import build_mixture
from transferkit.composition.transfer import TransferJob, transfer
from transferkit.errors import InvalidInputError
from transferkit.methods import get_method
from transferkit.modeling import TaskModel
from transferkit.task_prompt import TaskPrompt, description_prompt
from transferkit.training.loop import TrainingConfig
from transferkit.rebuild import load_expert_model
from transferkit.workflows import SourceJob, train_source

from cli_helpers import assert_one_line_error, run_cli
from test_composition import TOY, batch, random_experts


@pytest.mark.parametrize("method,options", [("lora", ["r=2"]), ("adapter", ["reduction_factor=8"])])
def test_merged_stack_equals_the_weighted_sum_of_deltas(tiny_backbone, method, options):
    experts = random_experts(tiny_backbone, method, 2, options) + random_experts(tiny_backbone, method, 1)
    stack = get_method(method).stack(experts)
    weights = {name: torch.tensor([0.5, 0.0, 0.3]) for name in stack.module_names}
    merged = stack.merge(weights, tiny_backbone)
    assert type(merged) is get_method(method).module_class
    modules = dict(tiny_backbone.model.named_modules())
    merged.attach(tiny_backbone)
    try:
        for name in stack.module_names:
            x = torch.randn(2, 5, modules[name].in_features)
            captured = {}
            handle = modules[name].register_forward_hook(lambda m, a, out: captured.setdefault("y", out))
            output = modules[name](x)
            handle.remove()
            merged.detach()
            base = modules[name](x)
            merged.attach(tiny_backbone)
            index = torch.tensor([[0, 1, 2], [0, 1, 2]])
            deltas = stack.deltas(name, x, base, index)
            expected = base + deltas.mix(weights[name].expand(2, -1))
            assert torch.allclose(output, expected, atol=1e-5), name
    finally:
        merged.detach()
    # The unused source costs nothing: the merged width covers the two used sources only.
    # The stack pads to the widest source (LoRA r 8, adapter 32 // 8 = 4 units), times the two used sources.
    width = merged.config.r if method == "lora" else merged.config.bottleneck_size
    assert width == {"lora": 2 * 8, "adapter": 2 * 4}[method]


def test_task_level_gate_is_the_same_for_every_input_and_learns(tiny_backbone):
    mixture = build_mixture(random_experts(tiny_backbone, "lora", 3), tiny_backbone, None, True, gate_input="task")
    prompt = TaskPrompt(description_prompt(TOY.description, tiny_backbone, 4))
    target = get_method("adapter").build(get_method("adapter").config_class(), tiny_backbone)
    model = TaskModel(tiny_backbone, target, 2, task_prompt=prompt, composition=mixture)
    assert mixture.input_independent
    with torch.no_grad():
        for gate in mixture.gates.values():
            gate.copy_(torch.randn_like(gate))
    mixture.start_recording()
    model.eval()
    model(**batch(tiny_backbone.tokenizer))
    gates = mixture.stop_recording()
    inputs = batch(tiny_backbone.tokenizer)
    mixture.observe_task_prompt(prompt())
    for layer in mixture.layers:
        probabilities = mixture.gate_probabilities(layer, torch.randn(6, 9, tiny_backbone.hidden_size))
        assert torch.allclose(probabilities, probabilities[:1].expand(6, -1))
        assert probabilities[0].tolist() == pytest.approx(gates[layer], abs=1e-5)
    model.train()
    model(**inputs).sum().backward()
    assert all(g.grad is not None and g.grad.abs().sum() > 0 for g in mixture.gates.values())
    model.detach()


@pytest.fixture
def sources(registry, tiny_model_dir, shared_data):
    return [
        train_source(registry, SourceJob(
            task=task, model=str(tiny_model_dir), data_dir=shared_data, max_train_examples=24, show_progress=False,
            method_options=["r=2"], training=TrainingConfig(max_steps=2, batch_size=8, seed=1),
        ))
        for task in ("sst2", "rte")
    ]


def _transfer(registry, tiny_model_dir, shared_data, **options):
    return transfer(registry, TransferJob(
        target="cb", model=str(tiny_model_dir), data_dir=shared_data, max_train_examples=24, show_progress=False,
        training=TrainingConfig(max_steps=3, batch_size=8, seed=2), **options,
    )).expert


@pytest.mark.parametrize("options", [{"strategy": "average"}, {"strategy": "pemt", "gate_input": "task", "route_top_k": 1}])
def test_merge_stores_a_self_contained_expert_with_the_same_outputs(registry, sources, tiny_model_dir, shared_data, options):
    mixture = _transfer(registry, tiny_model_dir, shared_data, **options)
    merged, difference = merge_expert(registry, mixture.name, data_dir=shared_data, name=None, command=["test"])
    assert difference <= 1e-4
    assert merged.method == "merged" and merged.name == f"{mixture.name}-merged"
    assert merged.metrics["test"] == mixture.metrics["test"] and merged.metrics["dev"] == mixture.metrics["dev"]
    assert [(e.parent_id, e.role) for e in registry.lineage_edges(merged.id)["parents"]] == [(mixture.id, "merged-from")]
    # Top-1 routing keeps one source per layer: the merged LoRA has one source's rank.
    assert merged.config["source_config"]["r"] == (2 if options.get("route_top_k") == 1 else 4)

    from transferkit.backbone import load_backbone

    backbone = load_backbone(str(tiny_model_dir))
    original_get = registry.get_expert
    source_ids = {s.id for s in sources}

    def no_sources(reference):  # the merged expert must not need its sources
        assert reference not in source_ids, "merged expert read a source"
        return original_get(reference)

    registry.get_expert = no_sources
    model = load_expert_model(registry, merged, backbone)
    assert isinstance(model.composition, FixedExperts)
    model.detach()


def test_merge_refuses_input_dependent_gates_and_non_mixtures(registry, sources, tiny_model_dir, shared_data, tmp_path):
    pemt = _transfer(registry, tiny_model_dir, shared_data, strategy="pemt")
    before = registry.count_experts()
    with pytest.raises(InvalidInputError, match="--gate-input task"):
        merge_expert(registry, pemt.id, data_dir=shared_data, name=None, command=["test"])
    assert registry.count_experts() == before
    url = str(registry.engine.url)
    assert_one_line_error(run_cli("--registry", url, "--data-dir", str(shared_data), "merge", sources[0].name, cwd=tmp_path),
                          "not a mixture")
    result = run_cli("--registry", url, "--data-dir", str(shared_data), "merge", pemt.name, cwd=tmp_path)
    assert_one_line_error(result, "--gate-input task")
    assert registry.count_experts() == before
    average = _transfer(registry, tiny_model_dir, shared_data, strategy="average")
    merged = run_cli("--registry", url, "--data-dir", str(shared_data), "merge", average.name, "--name", "flat", "--json", cwd=tmp_path)
    assert merged.returncode == 0, merged.stderr
    assert json.loads(merged.stdout)["expert"]["name"] == "flat"
