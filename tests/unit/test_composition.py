"""The PEMT mixture on a tiny random BERT: uniform start, normalised gates, exact top-k, sparsity concentrates."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from transferkit.composition.mixture import SourceMixture, layer_of
from transferkit.composition.pemt import build_mixture
from transferkit.errors import InvalidInputError
from transferkit.methods import get_method
from transferkit.modeling import TaskModel
from transferkit.task_prompt import TaskPrompt, description_prompt
from transferkit.training.data import tokenize_examples
from transferkit.training.loop import TrainingConfig, train

from test_training import TOY, toy_examples


def random_experts(backbone, method: str, count: int, options=(), scale=0.3):
    experts = []
    for seed in range(count):
        torch.manual_seed(100 + seed)
        method_type = get_method(method)
        expert = method_type.build(method_type.config_class.from_options(list(options)), backbone)
        with torch.no_grad():
            for parameter in expert.parameters():
                parameter.copy_(torch.randn_like(parameter) * scale)
        experts.append(expert)
    return experts


def mixture_model(backbone, sources, route_top_k=None, learn_gate=True, zero_expert=False):
    mixture = build_mixture(sources, backbone, route_top_k, learn_gate, zero_expert=zero_expert)
    prompt = TaskPrompt(description_prompt(TOY.description, backbone, 4))
    target = get_method("adapter").build(get_method("adapter").config_class(), backbone)
    return TaskModel(backbone, target, 2, task_prompt=prompt, composition=mixture)


def batch(tokenizer, n=6):
    texts = [e.texts[0] for e in toy_examples(n, 9)]
    return dict(tokenizer(texts, padding=True, return_tensors="pt"))


def test_layer_names():
    assert layer_of("encoder.layer.3.attention.self.query") == "encoder.layer.3"
    assert layer_of("model.layers.10.mlp.down_proj") == "model.layers.10"
    with pytest.raises(InvalidInputError):
        layer_of("classifier")


def test_gate_starts_uniform_and_sums_to_one(tiny_backbone):
    model = mixture_model(tiny_backbone, random_experts(tiny_backbone, "lora", 3))
    mixture = model.composition
    hidden = torch.randn(5, 9, tiny_backbone.hidden_size)
    for layer in mixture.layers:
        assert torch.allclose(mixture.gate_probabilities(layer, hidden), torch.full((5, 3), 1 / 3))
    with torch.no_grad():
        for gate in mixture.gates.values():
            gate.copy_(torch.randn_like(gate))
    for layer in mixture.layers:
        probabilities = mixture.gate_probabilities(layer, hidden)
        assert torch.allclose(probabilities.sum(-1), torch.ones(5)) and probabilities.std() > 0.01


def each_delta(deltas) -> torch.Tensor:
    """Materialise every chosen expert's change, (B, k, T, out), from the factored form."""
    up = deltas.up if deltas.up.dim() == 4 else deltas.up.unsqueeze(0).expand(deltas.code.shape[0], -1, -1, -1)
    each = torch.einsum("btkr,bkor->bkto", deltas.code, up)
    if deltas.bias is not None:
        bias = deltas.bias if deltas.bias.dim() == 3 else deltas.bias.unsqueeze(0)
        each = each + bias[:, :, None, :]
    return each


@pytest.mark.parametrize("method,options", [("lora", ["r=2"]), ("adapter", ["reduction_factor=8"])])
def test_stack_deltas_equal_each_experts_own_hook(tiny_backbone, method, options):
    experts = random_experts(tiny_backbone, method, 2, options) + random_experts(tiny_backbone, method, 1)
    stack = get_method(method).stack(experts)
    modules = dict(tiny_backbone.model.named_modules())
    name = stack.module_names[0]
    x = torch.randn(2, 5, modules[name].in_features)
    base = modules[name](x)
    index = torch.tensor([[0, 2], [1, 0]])
    deltas = each_delta(stack.deltas(name, x, base, index))
    for b in range(2):
        for k in range(2):
            expert = experts[int(index[b, k])]
            expert.attach(tiny_backbone)
            own = modules[name](x[b : b + 1])[0] - base[b]
            expert.detach()
            assert torch.allclose(deltas[b, k], own, atol=1e-5)
    # Dense routing (no index) is the same computation without the gather.
    dense = each_delta(stack.deltas(name, x, base, None))
    gathered = each_delta(stack.deltas(name, x, base, torch.arange(3).expand(2, -1)))
    assert torch.allclose(dense, gathered, atol=1e-6)


@pytest.mark.parametrize("method,options", [("lora", ["r=2"]), ("adapter", ["reduction_factor=8"])])
@pytest.mark.parametrize("dense", [True, False])
def test_factored_mix_and_disagreement_match_the_direct_formulas(tiny_backbone, method, options, dense):
    experts = random_experts(tiny_backbone, method, 2, options) + random_experts(tiny_backbone, method, 2)
    stack = get_method(method).stack(experts)
    modules = dict(tiny_backbone.model.named_modules())
    name = stack.module_names[-1]
    x = torch.randn(3, 6, modules[name].in_features)
    base = modules[name](x).detach()
    index = None if dense else torch.tensor([[0, 3], [2, 1], [3, 0]])
    weights = torch.softmax(torch.randn(3, 4 if dense else 2), dim=-1)
    deltas = stack.deltas(name, x, base, index)
    each = each_delta(deltas)
    change = deltas.mix(weights)
    assert torch.allclose(change, torch.einsum("bk,bkto->bto", weights, each), atol=1e-5)
    direct = 1 - torch.nn.functional.cosine_similarity(change.unsqueeze(1), each, dim=-1).mean(-1)
    assert torch.allclose(deltas.disagreement(change), direct, atol=1e-5)
    assert direct.abs().max() > 1e-2  # the experts really disagree, so the comparison is not between zeros


def test_top_k_keeps_exactly_k_experts_active(tiny_backbone):
    model = mixture_model(tiny_backbone, random_experts(tiny_backbone, "lora", 4), route_top_k=2)
    mixture = model.composition
    with torch.no_grad():
        for gate in mixture.gates.values():
            gate.copy_(torch.randn_like(gate) * 3)
    hidden = torch.randn(7, 9, tiny_backbone.hidden_size)
    for layer in mixture.layers:
        weights, index = mixture.route(layer, hidden)
        assert weights.shape == (7, 2) and index.shape == (7, 2)
        assert torch.allclose(weights.sum(-1), torch.ones(7))
        assert all(len(set(row.tolist())) == 2 for row in index)
    mixture.start_recording()
    model.eval()
    with torch.no_grad():
        model(**batch(tiny_backbone.tokenizer))
    recorded = mixture.stop_recording()
    for weights in recorded.values():
        assert sum(weights) == pytest.approx(1.0, abs=1e-5)


def test_top_k_bounds(tiny_backbone):
    with pytest.raises(InvalidInputError, match="route-top-k"):
        mixture_model(tiny_backbone, random_experts(tiny_backbone, "lora", 2), route_top_k=3)


def test_mixed_methods_are_refused(tiny_backbone):
    with pytest.raises(InvalidInputError, match="one method"):
        build_mixture(random_experts(tiny_backbone, "lora", 1) + random_experts(tiny_backbone, "adapter", 1), tiny_backbone, None, True)


def test_uniform_mixture_of_identical_experts_equals_one_expert(tiny_backbone):
    expert = random_experts(tiny_backbone, "lora", 1)[0]
    copies = [expert] * 3
    mixture = build_mixture(copies, tiny_backbone, None, learn_gate=False)
    mixture.attach(tiny_backbone, 0)
    inputs = batch(tiny_backbone.tokenizer)
    with torch.no_grad():
        mixed = tiny_backbone.model(**inputs).last_hidden_state
    mixture.detach()
    expert.attach(tiny_backbone)
    with torch.no_grad():
        single = tiny_backbone.model(**inputs).last_hidden_state
    expert.detach()
    assert torch.allclose(mixed, single, atol=1e-5)


def _gate_entropy(model) -> float:
    split = tokenize_examples(toy_examples(32, 5), model.backbone.tokenizer, 32, regression=False, use_cache=False)
    from transferkit.training.loop import predict

    model.composition.start_recording()
    predict(model, split, 16, model.backbone.tokenizer.pad_token_id, TOY)
    gates = model.composition.stop_recording()
    mean = np.mean(list(gates.values()), axis=0)
    return float(-(mean * np.log(mean + 1e-12)).sum())


def test_sparsity_weight_concentrates_the_gate(tiny_backbone):
    tokenizer = tiny_backbone.tokenizer
    splits = [tokenize_examples(toy_examples(n, s), tokenizer, 32, regression=False, use_cache=False) for n, s in ((128, 1), (32, 2), (32, 3))]
    entropies = {}
    for weight in (0.0, 5.0):
        model = mixture_model(tiny_backbone, random_experts(tiny_backbone, "lora", 3, scale=0.5))
        config = TrainingConfig(max_steps=40, batch_size=16, lr=1e-2, head_lr=1e-2, eval_every=40, seed=0)
        result = train(model, TOY, *splits, config, tokenizer.pad_token_id, show_progress=False, auxiliary_weight=weight)
        assert all(math.isfinite(loss) for _, loss in result.loss_history)
        entropies[weight] = _gate_entropy(model)
        model.detach()
    print(entropies)
    assert entropies[5.0] < entropies[0.0] - 0.1


def test_zero_expert_takes_a_share_of_the_gate_and_scales_the_change_down(tiny_backbone):
    model = mixture_model(tiny_backbone, random_experts(tiny_backbone, "lora", 3), zero_expert=True)
    mixture, prompt, target = model.composition, model.task_prompt, model.expert
    hidden = torch.randn(5, 9, tiny_backbone.hidden_size)
    layer = mixture.layers[0]
    assert mixture.gate_probabilities(layer, hidden).shape == (5, 4)  # uniform over the 3 sources and the zero expert
    weights, _ = mixture.route(layer, hidden)
    assert torch.allclose(weights, torch.full((5, 3), 0.25))
    inputs = batch(tiny_backbone.tokenizer)
    model.eval()
    with torch.no_grad():
        uniform = model(**inputs)
    # All gate mass on the zero expert: the mixture changes nothing.
    all_on_zero = lambda layer, hidden: torch.tensor([0.0, 0.0, 0.0, 1.0]).expand(hidden.shape[0], -1)  # noqa: E731
    mixture.gate_probabilities = all_on_zero
    with torch.no_grad():
        mixed = model(**inputs)
    model.detach()
    plain = TaskModel(tiny_backbone, target, 2, task_prompt=prompt)
    plain.head.load_state_dict(model.head.state_dict())
    plain.eval()
    with torch.no_grad():
        alone = plain(**inputs)
    plain.detach()
    assert torch.allclose(mixed, alone, atol=1e-4) and not torch.allclose(uniform, alone, atol=1e-3)
    mixture.start_recording()
    mixture.route(layer, hidden)
    mixture.stop_recording()
    assert mixture.zero_shares[layer] == pytest.approx(1.0, abs=1e-4)


def test_zero_expert_keeps_top_k_weights_at_the_sources_share(tiny_backbone):
    mixture = mixture_model(tiny_backbone, random_experts(tiny_backbone, "lora", 4), route_top_k=2, zero_expert=True).composition
    with torch.no_grad():
        for gate in mixture.gates.values():
            gate.copy_(torch.randn_like(gate) * 3)
    hidden = torch.randn(7, 9, tiny_backbone.hidden_size)
    for layer in mixture.layers:
        probabilities = mixture.gate_probabilities(layer, hidden)
        weights, index = mixture.route(layer, hidden)
        assert weights.shape == (7, 2)
        assert torch.allclose(weights.sum(-1), 1 - probabilities[:, -1], atol=1e-6)
        assert (index < 4).all()  # the zero expert is never gathered


def test_zero_expert_needs_a_learned_gate(tiny_backbone):
    with pytest.raises(InvalidInputError, match="zero expert"):
        build_mixture(random_experts(tiny_backbone, "lora", 2), tiny_backbone, None, learn_gate=False, zero_expert=True)


@pytest.mark.parametrize("prior", [0.2, 0.5, 0.9])
def test_zero_expert_prior_sets_its_starting_share_and_the_gate_can_still_move_it(tiny_backbone, prior):
    mixture = build_mixture(random_experts(tiny_backbone, "lora", 3), tiny_backbone, None, True, zero_expert=True, zero_prior=prior)
    layer = mixture.layers[0]
    mixture.prompt_length = 2
    hidden = torch.randn(4, 6, tiny_backbone.hidden_size)
    start = mixture.gate_probabilities(layer, hidden).detach()
    assert torch.allclose(start[:, -1], torch.full((4,), prior), atol=1e-6)
    assert torch.allclose(start[:, :3], torch.full((4, 3), (1 - prior) / 3), atol=1e-6)  # sources stay uniform among themselves
    with torch.no_grad():
        mixture.gates[layer.replace(".", "/")][:, 0] += 1.0  # the learned part still moves mass between all columns
    assert (mixture.gate_probabilities(layer, hidden).detach()[:, -1] != start[:, -1]).all()


@pytest.mark.parametrize("prior", [0.0, 1.0, -0.5])
def test_zero_expert_prior_outside_the_open_unit_interval_is_refused(tiny_backbone, prior):
    with pytest.raises(InvalidInputError, match="prior share"):
        build_mixture(random_experts(tiny_backbone, "lora", 2), tiny_backbone, None, True, zero_expert=True, zero_prior=prior)


def test_the_cli_states_the_librarys_default_sparsity_weight():
    from transferkit.cli.common import DEFAULT_SPARSITY_WEIGHT as shown
    from transferkit.composition.compare import Grid
    from transferkit.composition.options import DEFAULT_SPARSITY_WEIGHT, TransferJob

    grid = Grid(name="g", targets=["glue/rte"], strategies=["pemt"], seeds=[1])
    assert shown == DEFAULT_SPARSITY_WEIGHT == TransferJob(target="glue/rte").sparsity_weight == grid.sparsity_weight
