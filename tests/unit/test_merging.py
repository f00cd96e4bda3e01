"""The peers' merges and Arrow's prototypes against their definitions, on tiny LoRA stacks."""

from __future__ import annotations

import itertools

import pytest
import torch

from transferkit.composition.arrow import ArrowRouter, top_right_singular_vectors
from transferkit.composition.lorahub import WeightedSources, held_out_loss, search_examples
from transferkit.composition.merge_strategy import Recipe, merge_sources
from transferkit.composition.merging import combine_deltas, disjoint_mean, drop_and_rescale, elect_sign, refactor, trim
from transferkit.methods import get_method
from transferkit.methods.lora.stack import LoraStack
from transferkit.tasks import Example

from test_composition import random_experts


def delta_of(expert, name: str) -> torch.Tensor:
    pair = expert.pairs[name.replace(".", "/")]
    return expert.scaling * (pair.lora_B.detach().double() @ pair.lora_A.detach().double())


def ties_by_definition(deltas: torch.Tensor, weights: torch.Tensor, density: float) -> torch.Tensor:
    """TIES entry by entry, written from the paper's three steps (with per-source weights)."""
    J = deltas.shape[0]
    keep = max(1, round(density * deltas[0].numel()))
    trimmed = torch.zeros_like(deltas)
    for j in range(J):
        threshold = deltas[j].abs().flatten().sort(descending=True).values[keep - 1]
        trimmed[j] = torch.where(deltas[j].abs() >= threshold, deltas[j], torch.zeros_like(deltas[j]))
    merged = torch.zeros_like(deltas[0])
    for index in itertools.product(*(range(n) for n in deltas.shape[1:])):
        values = [float(weights[j]) * float(trimmed[j][index]) for j in range(J)]
        sign = 1.0 if sum(values) >= 0 else -1.0
        agreeing = [v for v in values if v != 0 and (v > 0) == (sign > 0)]
        merged[index] = sum(agreeing) / len(agreeing) if agreeing else 0.0
    return merged


def test_trim_keeps_the_largest_magnitudes():
    delta = torch.tensor([[0.1, -3.0, 0.5], [2.0, -0.2, 0.05]])
    assert torch.equal(trim(delta, 0.5), torch.tensor([[0.0, -3.0, 0.5], [2.0, 0.0, 0.0]]))
    assert torch.equal(trim(delta, 1.0), delta)
    assert int((trim(delta, 0.01) != 0).sum()) == 1  # at least one entry survives


def test_elect_sign_and_disjoint_merge_on_a_worked_example():
    # Three sources, four entries: agreement, a conflict the larger mass wins, a zero sum, all trimmed away.
    weighted = torch.tensor([[1.0, 2.0, -1.0, 0.0], [3.0, -1.0, 1.0, 0.0], [0.0, -0.5, 0.0, 0.0]])
    sign = elect_sign(weighted)
    assert sign.tolist() == [1.0, 1.0, 1.0, 1.0]  # 4, 0.5, 0 (ties go to +), 0
    assert disjoint_mean(weighted, sign).tolist() == [2.0, 2.0, 1.0, 0.0]
    weighted[0, 1] = -2.0  # now the second entry's mass is negative: mean of -2, -1, -0.5
    assert disjoint_mean(weighted, elect_sign(weighted))[1].item() == pytest.approx(-3.5 / 3)


@pytest.mark.parametrize("density", [0.3, 0.7, 1.0])
def test_ties_matches_its_definition(density):
    torch.manual_seed(0)
    deltas = torch.randn(3, 4, 5, dtype=torch.float64)
    weights = torch.tensor([1.0, 0.5, 2.0], dtype=torch.float64)
    assert torch.allclose(combine_deltas(deltas, weights, "ties", density), ties_by_definition(deltas, weights, density))


def test_dare_drops_and_rescales_and_keeps_the_expectation():
    torch.manual_seed(1)
    delta = torch.randn(6, 7, dtype=torch.float64)
    density = 0.3
    generator = torch.Generator().manual_seed(5)
    draws = torch.stack([drop_and_rescale(delta, density, generator) for _ in range(4000)])
    # Every entry is either dropped or divided by the density ...
    kept = draws != 0
    assert torch.allclose(draws[kept], (delta.expand_as(draws) / density)[kept])
    assert float(kept.double().mean()) == pytest.approx(density, abs=0.01)
    # ... so the mean over many seeds is the input (standard error: |x| sqrt((1-p)/p / n) ~ 0.024 |x|).
    assert torch.allclose(draws.mean(0), delta, atol=0.12 * float(delta.abs().max()))
    # The same seed gives the same masks.
    again = drop_and_rescale(delta, density, torch.Generator().manual_seed(5))
    assert torch.equal(again, draws[0])


def test_dare_linear_and_dare_ties_merge_the_dropped_changes():
    torch.manual_seed(2)
    deltas = torch.randn(2, 3, 4, dtype=torch.float64)
    weights = torch.tensor([0.5, 0.5], dtype=torch.float64)
    masks = torch.Generator().manual_seed(9)  # one generator, drawn source after source (as the merge draws)
    dropped = torch.stack([drop_and_rescale(delta, 0.5, masks) for delta in deltas])
    generator = torch.Generator().manual_seed(9)
    assert torch.allclose(combine_deltas(deltas, weights, "dare_linear", 0.5, generator), (dropped * 0.5).sum(0))
    generator = torch.Generator().manual_seed(9)
    weighted = dropped * 0.5
    assert torch.allclose(combine_deltas(deltas, weights, "dare_ties", 0.5, generator), disjoint_mean(weighted, elect_sign(weighted)))


def test_refactor_is_exact_at_the_matrix_rank_and_reports_the_truncation():
    torch.manual_seed(3)
    low = torch.randn(8, 2, dtype=torch.float64) @ torch.randn(2, 6, dtype=torch.float64)
    a, b, error = refactor(low, 2)
    assert a.shape == (2, 6) and b.shape == (8, 2) and error < 1e-6
    assert torch.allclose(b.double() @ a.double(), low, atol=1e-5)
    full = torch.randn(5, 5, dtype=torch.float64)
    s = torch.linalg.svdvals(full)
    assert refactor(full, 3)[2] == pytest.approx(float(s[3:].norm() / s.norm()), rel=1e-6)
    a, b, _ = refactor(torch.randn(3, 4), 6)  # more rank than the matrix has: zero directions, still exact
    assert a.shape == (6, 4) and b.shape == (3, 6)


@pytest.mark.parametrize("combine,density", [("linear", None), ("ties", 1.0), ("dare_linear", 1.0), ("dare_ties", 1.0)])
def test_merging_one_source_with_weight_one_returns_it(tiny_backbone, combine, density):
    [source] = random_experts(tiny_backbone, "lora", 1, ["r=2"])
    recipe = Recipe(combine, [1.0], density, 7 if combine.startswith("dare") else None, None if combine == "linear" else 2)
    merged, report = merge_sources([source], "lora", recipe, tiny_backbone)
    for name in source.module_names:
        assert torch.allclose(delta_of(merged, name), delta_of(source, name), atol=1e-5), name
    assert report["exact"] or report["max_relative_error"] < 1e-6


def test_ties_merge_of_lora_sources_is_the_refactored_definition(tiny_backbone):
    sources = random_experts(tiny_backbone, "lora", 3, ["r=2"])
    recipe = Recipe("ties", [1.0, 1.0, 1.0], 0.4, None, 32)  # rank 32 = the full 32 x 32 module: no truncation
    merged, report = merge_sources(sources, "lora", recipe, tiny_backbone)
    name = sources[0].module_names[0]
    expected = ties_by_definition(torch.stack([delta_of(s, name) for s in sources]), torch.ones(3, dtype=torch.float64), 0.4)
    assert torch.allclose(delta_of(merged, name), expected, atol=1e-5)
    assert report["max_relative_error"] < 1e-6


def test_linear_merge_and_weighted_sources_both_equal_the_weighted_sum(tiny_backbone):
    sources = random_experts(tiny_backbone, "lora", 2, ["r=2"]) + random_experts(tiny_backbone, "lora", 1, ["r=4"])
    weights = [0.7, -0.4, 1.2]  # LoRAHub searches negative weights too
    merged, report = merge_sources(sources, "lora", Recipe("linear", weights, None, None, None), tiny_backbone)
    assert report == {"exact": True} and merged.config.r == 3 * 4
    name = sources[0].module_names[1]
    expected = sum(w * delta_of(s, name) for w, s in zip(weights, sources))
    assert torch.allclose(delta_of(merged, name), expected, atol=1e-5)
    composition = WeightedSources(LoraStack(sources), 3)
    composition.weights.copy_(torch.tensor(weights))
    x = torch.randn(2, 3, 32)
    change = composition.stack.deltas(name, x, torch.zeros(2, 3, 32), None).mix(composition.weights.expand(2, -1))
    assert torch.allclose(change.double(), x.double() @ expected.t(), atol=1e-4)


def test_arrow_prototypes_are_the_top_right_singular_vectors(tiny_backbone):
    sources = random_experts(tiny_backbone, "lora", 3, ["r=2"])
    with torch.no_grad():
        sources[2].pairs[sources[2].module_names[0].replace(".", "/")].lora_B.zero_()  # no change: no direction
    stack = LoraStack(sources)
    for name in stack.module_names:
        prototypes = top_right_singular_vectors(*stack.factors(name))
        for j, source in enumerate(sources):
            delta = delta_of(source, name)
            if not delta.any():
                assert not prototypes[j].any()
                continue
            top = torch.linalg.svd(delta).Vh[0]
            assert abs(float(prototypes[j].double() @ top)) == pytest.approx(1.0, abs=1e-5)
            assert float(prototypes[j].norm()) == pytest.approx(1.0, abs=1e-5)


def test_arrow_routes_each_token_to_its_top_k_sources(tiny_backbone):
    sources = random_experts(tiny_backbone, "lora", 3, ["r=2"])
    router = ArrowRouter(LoraStack(sources), 3, top_k=2, temperature=0.5)
    name = router.module_names[0]
    hidden = torch.randn(2, 5, 32)
    weights = router.routing(name, hidden)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 5)) and bool(((weights > 0).sum(-1) == 2).all())
    scores = (hidden @ router.prototypes(name).t()).abs()
    top = scores.topk(2, dim=-1)
    assert torch.equal(weights.topk(2, dim=-1).indices.sort(-1).values, top.indices.sort(-1).values)
    assert torch.allclose(weights.gather(-1, top.indices), torch.softmax(top.values / 0.5, dim=-1))
    with pytest.raises(Exception, match="top_k"):
        ArrowRouter(LoraStack(sources), 3, top_k=4, temperature=1.0)


def test_search_examples_cover_every_class_in_both_folds():
    examples = [Example(("x",), label) for label in [0] * 20 + [1] * 5 + [2] * 2]
    chosen, folds = search_examples(examples, 12, seed=3, regression=False)
    assert len(chosen) == 12
    for label in (0, 1, 2):
        assert {int(f) for e, f in zip(chosen, folds) if e.label == label} == {0, 1}


def test_held_out_loss_rewards_features_that_separate_the_classes():
    torch.manual_seed(4)
    labels = torch.tensor([0, 1] * 10)
    folds = torch.tensor([0, 0, 1, 1] * 5).numpy()
    noise = torch.randn(20, 8)
    informative = noise.clone()
    informative[:, 0] += 4 * labels
    assert held_out_loss(informative, labels, folds, 2, False) < 0.5 * held_out_loss(noise, labels, folds, 2, False)
    targets = labels.float() * 3
    assert held_out_loss(informative, targets, folds, 1, True) < held_out_loss(noise, targets, folds, 1, True)
