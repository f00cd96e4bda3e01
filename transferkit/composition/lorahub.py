"""`transfer --strategy lorahub`: the sources' mixing weights found without gradients on a few target examples
(LoRAHub, Huang et al. 2023), then the exact linear merge with those weights, trained on top like `merge`.

Search: `-O examples=N` training examples (default 32, taken class by class so every label appears, split
into two folds) and a derivative-free optimiser from nevergrad (`-O optimizer=NGOpt`, LoRAHub's choice)
over weights w in [-bound, bound]^J (LoRAHub: 1.5), starting from w = 0 (no source), for `-O budget=`
evaluations (LoRAHub: 40). Each evaluation runs the frozen backbone with the sources' change Σ_j w_j ΔW_j
(and the target's description prompt) over the examples, once, and scores

    objective(w) = held-out loss of a head fitted on the pooled features + l1 x mean_j |w_j|   (LoRAHub: 0.05)

The head is fitted cheaply inside the objective, cross-fitted on the two folds so it is never scored on
the examples it was fitted to: an L2-regularised multinomial logistic regression (L-BFGS, penalty as
scikit-learn's default C = 1) for classification, ridge regression (alpha 1) for a regression target; the
loss is the cross-entropy or the mean squared error on the other fold. LoRAHub scores the loss of a
sequence-to-sequence model that needs no head; a classifier on a frozen encoder has none until one is fitted.

LoRAHub's code mixes the A and B factors separately (Σ w A and Σ w B, which is not Σ w ΔW and needs equal
ranks); here the change is exactly Σ_j w_j ΔW_j, stacked, for any ranks (adapter sources: their outputs
mixed, equally exact). The optimiser is seeded from the run's --seed. The found weights, every evaluation
and the search's cost (wall time, CPU seconds, FLOPs of every forward pass and head fit) are recorded on the expert.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from transferkit.backbone import Backbone
from transferkit.composition.merge_strategy import MERGEABLE, Recipe, prepare_merged
from transferkit.composition.plugins import (
    HookedComposition,
    NoExpert,
    NoExpertConfig,
    Preparation,
    Prepared,
    Strategy,
    StrategyContext,
    TargetOptions,
)
from transferkit.errors import InvalidInputError
from transferkit.methods import ExpertStack, MethodConfig, get_method
from transferkit.methods.base import option
from transferkit.modeling import TaskModel
from transferkit.tasks import Example
from transferkit.training.data import TokenizedSplit, collate, sequential_batches, tokenize_examples

SEARCH_BATCH = 64


@dataclass
class LorahubConfig(TargetOptions):
    """`transfer --strategy lorahub` options (`-O KEY=VALUE`)."""

    recommended_lr: ClassVar[float] = 1e-3

    examples: int = option(32, "target training examples the weights are searched on")
    budget: int = option(40, "objective evaluations of the derivative-free search")
    l1: float = option(0.05, "weight of the L1 penalty mean_j |w_j|")
    bound: float = option(1.5, "each weight is searched in [-bound, bound]")
    optimizer: str = option("NGOpt", "nevergrad optimiser (ng.optimizers.registry name)")

    def validate(self) -> None:
        if self.examples < 4:
            raise InvalidInputError(f"-O examples must be at least 4 (two folds of two), got {self.examples}")
        if self.budget < 1:
            raise InvalidInputError(f"-O budget must be at least 1, got {self.budget}")
        if not (math.isfinite(self.l1) and self.l1 >= 0):
            raise InvalidInputError(f"-O l1 must be a number >= 0, got {self.l1}")
        if not (math.isfinite(self.bound) and self.bound > 0):
            raise InvalidInputError(f"-O bound must be a positive number, got {self.bound}")


class WeightedSources(HookedComposition):
    """The sources' changes with fixed scalar weights, y = base + Σ_j w_j δ_j (for evaluating candidate weights)."""

    def __init__(self, stack: ExpertStack, num_sources: int) -> None:
        super().__init__()
        self.stack = stack
        self.register_buffer("weights", torch.zeros(num_sources), persistent=False)

    def attach(self, backbone: Backbone, prompt_length: int) -> None:
        self.detach()
        modules = dict(backbone.model.named_modules())
        for name in self.stack.module_names:
            self._handles.append(modules[name].register_forward_hook(self._hook(name)))

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            deltas = self.stack.deltas(name, args[0], output, None)
            return output + deltas.mix(self.weights.expand(output.shape[0], -1)).to(output.dtype)

        return hook

    def export_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def import_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        if tensors:
            raise InvalidInputError("weighted sources store no tensors")


def search_examples(examples: list[Example], count: int, seed: int, regression: bool) -> tuple[list[Example], np.ndarray]:
    """Up to `count` examples drawn class by class (round robin over a seeded shuffle), and their fold (0/1) each:
    alternating within each class, so a class with two or more examples is in both folds."""
    order = np.random.default_rng(seed).permutation(len(examples))
    groups: dict[object, list[int]] = {}
    for index in order:
        groups.setdefault(None if regression else examples[index].label, []).append(int(index))
    chosen: list[int] = []
    folds: list[int] = []
    lists = list(groups.values())
    for position in range(max(len(g) for g in lists)):
        for group in lists:
            if position < len(group) and len(chosen) < count:
                chosen.append(group[position])
                folds.append(position % 2)
    return [examples[i] for i in chosen], np.asarray(folds)


def _standardise(fit: torch.Tensor, other: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mean, std = fit.mean(0), fit.std(0, unbiased=False).clamp_min(1e-6)
    return (fit - mean) / std, (other - mean) / std


def held_out_loss(features: torch.Tensor, labels: torch.Tensor, folds: np.ndarray, num_outputs: int, regression: bool) -> float:
    """Mean loss over both folds of a head fitted on the other fold (logistic regression, or ridge for regression)."""
    total, count = 0.0, 0
    for held in (0, 1):
        fit, test = torch.from_numpy(folds != held), torch.from_numpy(folds == held)
        if not bool(fit.any()) or not bool(test.any()):
            continue
        x_fit, x_test = _standardise(features[fit].double(), features[test].double())
        if regression:
            y = labels[fit].double()
            gram = x_fit.t() @ x_fit + torch.eye(x_fit.shape[1], dtype=torch.float64)
            weight = torch.linalg.solve(gram, x_fit.t() @ (y - y.mean()))
            predictions = x_test @ weight + y.mean()
            total += float(((predictions - labels[test].double()) ** 2).sum())
        else:
            weight, bias = _logistic(x_fit, labels[fit].long(), num_outputs)
            total += float(nn.functional.cross_entropy(x_test @ weight.t() + bias, labels[test].long(), reduction="sum"))
        count += int(test.sum())
    if count == 0:
        raise InvalidInputError("lorahub needs examples in both folds; raise -O examples")
    return total / count


def _logistic(x: torch.Tensor, y: torch.Tensor, classes: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression: mean cross-entropy + |W|^2 / (2n) (scikit-learn's C = 1), by L-BFGS."""
    weight = torch.zeros(classes, x.shape[1], dtype=x.dtype, requires_grad=True)
    bias = torch.zeros(classes, dtype=x.dtype, requires_grad=True)
    optimiser = torch.optim.LBFGS([weight, bias], max_iter=100, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimiser.zero_grad()
        loss = nn.functional.cross_entropy(x @ weight.t() + bias, y) + (weight**2).sum() / (2 * x.shape[0])
        loss.backward()
        return loss

    with torch.enable_grad():
        optimiser.step(closure)
    return weight.detach(), bias.detach()


@torch.no_grad()
def pooled_features(model: TaskModel, split: TokenizedSplit, pad_id: int) -> torch.Tensor:
    """(N, d) pooled representations in the split's order (eval mode)."""
    model.eval()
    features = torch.zeros(len(split), model.backbone.hidden_size)
    for indices in sequential_batches(split.lengths(), SEARCH_BATCH):
        batch = collate(split, indices, pad_id)
        batch.pop("labels")
        features[indices] = model.pooled(**{k: v.to(model.device) for k, v in batch.items()}).float().cpu()
    return features


def search_weights(ctx: StrategyContext, config: LorahubConfig, method: str, preparation: Preparation) -> tuple[list[float], dict]:
    """The weights nevergrad finds, and the search's record (examples, every evaluation, the best objective)."""
    import nevergrad as ng

    if config.optimizer not in ng.optimizers.registry:
        raise InvalidInputError(f"-O optimizer={config.optimizer!r} is not a nevergrad optimiser (e.g. NGOpt, CMA, TwoPointsDE)")
    task, backbone, seed = ctx.task, ctx.backbone, ctx.training.seed
    examples, folds = search_examples(ctx.splits.train, config.examples, seed, task.is_regression)
    split = tokenize_examples(examples, backbone.tokenizer, ctx.training.max_length, task.is_regression)
    labels = torch.from_numpy(split.labels)
    composition = WeightedSources(get_method(method).stack(ctx.modules()), len(ctx.ranking))
    model = TaskModel(backbone, NoExpert(NoExpertConfig(), backbone), task.num_labels, ctx.training.precision, ctx.prompt, composition)
    history: list[dict] = []

    def objective(weights: np.ndarray) -> float:
        composition.weights.copy_(torch.as_tensor(weights, dtype=torch.float32))
        features = pooled_features(model, split, backbone.tokenizer.pad_token_id)
        loss = held_out_loss(features, labels, folds, task.num_labels, task.is_regression)
        value = loss + config.l1 * float(np.abs(weights).mean())
        history.append({"weights": [round(float(w), 6) for w in weights], "loss": round(loss, 6), "objective": round(value, 6)})
        return value

    parametrization = ng.p.Array(init=np.zeros(len(ctx.ranking)), lower=-config.bound, upper=config.bound)
    parametrization.random_state = np.random.RandomState(seed % 2**32)
    try:
        with preparation.measure(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nevergrad's and scipy's notes on their own settings
            optimiser = ng.optimizers.registry[config.optimizer](parametrization=parametrization, budget=config.budget, num_workers=1)
            for _ in range(config.budget):
                candidate = optimiser.ask()
                optimiser.tell(candidate, objective(candidate.value))
            found = [float(w) for w in optimiser.provide_recommendation().value]
    finally:
        model.detach()
    best = min(history, key=lambda h: h["objective"])
    record = {
        "optimizer": config.optimizer, "budget": config.budget, "l1": config.l1, "bound": config.bound, "seed": seed,
        "examples": len(examples), "folds": [int(f) for f in folds], "weights": [round(w, 6) for w in found],
        "best_evaluated": best, "no_sources_objective": history[0]["objective"] if history[0]["weights"] == [0.0] * len(found) else None,
        "evaluations": history,
    }
    return found, record


def prepare(ctx: StrategyContext, config: MethodConfig) -> Prepared:
    if not isinstance(config, LorahubConfig):
        raise TypeError("lorahub needs a LorahubConfig")
    method = ctx.source_method(MERGEABLE, "lorahub")
    preparation = Preparation(f"lorahub search: {config.budget} evaluations on up to {config.examples} examples")
    weights, record = search_weights(ctx, config, method, preparation)
    recipe = Recipe("linear", weights, None, None, None)
    preparation.details["evaluations"] = len(record["evaluations"])
    return prepare_merged(ctx, "lorahub", method, recipe, config.target, preparation, search=record)


class LorahubStrategy(Strategy):
    name = "lorahub"
    summary = "LoRAHub: gradient-free search of the sources' linear-merge weights"
    config_class = LorahubConfig
    source_methods = frozenset(MERGEABLE)
    stored_methods = ()  # stored as merge experts: merge_strategy rebuilds them

    def prepare(self, ctx: StrategyContext, config: MethodConfig) -> Prepared:
        return prepare(ctx, config)


STRATEGY = LorahubStrategy()
