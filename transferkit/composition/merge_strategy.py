"""`transfer --strategy merge`: the sources merged without training into one expert of their method, then the
target's head, task prompt and (optionally, `-O target=`) a small target expert trained on top.

Recipe (`-O KEY=VALUE`, math in `transferkit.composition.merging`):
- `combine=linear|ties|dare_linear|dare_ties` (default ties; linear with uniform weights is what the
  `average` strategy already computes);
- `weights=w1,w2,...`, one per source in `--sources` order (default: 1/J each for linear and dare_linear,
  the sources' mean change; 1 each for ties and dare_ties, whose disjoint merge already averages, the
  papers' lambda = 1);
- `density` in (0, 1] for ties/dare (default 0.5): the fraction of entries TIES keeps, DARE's keep probability;
- `seed` for DARE's drop masks (default: the run's --seed);
- `rank` of the LoRA that ties/dare's merged change is refactored into by SVD (default: the sum of the
  sources' ranks, which is what the exact linear merge has).

LoRA sources take every combine. Adapter sources are non-linear (ReLU between their two projections),
so no per-entry weight change exists to trim or drop: they merge with `linear` only, which is exact in
output space (the used adapters side by side). The merged expert is stored inside the new expert's
artifact, so it loads without its sources; the recipe (sources, weights, combine, density, seed, rank)
is its config and each source a lineage parent (role `merge-source`, weight = its merge weight), and
`transferkit reproduce` re-runs the same recipe.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Literal

import torch

from transferkit.backbone import Backbone
from transferkit.composition.fixed import FixedExperts
from transferkit.composition.merging import COMBINES, DROPPING, merge_lora_entrywise, module_shapes
from transferkit.composition.plugins import (
    Lineage,
    Preparation,
    Prepared,
    Strategy,
    StrategyContext,
    TargetOptions,
    build_target,
    check_config,
    rebuild_target,
)
from transferkit.errors import InvalidInputError
from transferkit.methods import ExpertModule, MethodConfig, get_method
from transferkit.methods.base import option
from transferkit.modeling import TaskModel
from transferkit.registry import ExpertReader, ExpertRecord
from transferkit.task_prompt import TaskPrompt

MERGE_METHOD = "merge"  # how merge and lorahub experts are stored: one merged source expert + the target's parts
MERGE_SOURCE_ROLE = "merge-source"
DEFAULT_DENSITY = 0.5
MERGEABLE = ("lora", "adapter")


@dataclass
class MergeConfig(TargetOptions):
    """`transfer --strategy merge` options (`-O KEY=VALUE`)."""

    combine: Literal["linear", "ties", "dare_linear", "dare_ties"] = option("ties", "how the sources' changes merge")
    weights: list[float] | None = option(None, "one weight per source in --sources order (default 1/J for linear/dare_linear, 1 for ties/dare_ties)")
    density: float | None = option(None, f"ties/dare: fraction of entries kept, in (0, 1] (default {DEFAULT_DENSITY})")
    seed: int | None = option(None, "dare: seed of the drop masks (default: the run's --seed)")
    rank: int | None = option(None, "ties/dare: rank of the refactored LoRA (default: the sum of the sources' ranks)")

    def validate(self) -> None:
        if self.density is not None:
            if self.combine == "linear":
                raise InvalidInputError("-O density applies to ties and dare; linear keeps every entry (drop -O density)")
            if not (math.isfinite(self.density) and 0.0 < self.density <= 1.0):
                raise InvalidInputError(f"-O density must be in (0, 1], got {self.density}")
        if self.seed is not None and self.combine not in DROPPING:
            raise InvalidInputError(f"-O seed sets DARE's drop masks; {self.combine} is deterministic (drop -O seed)")
        if self.seed is not None and not 0 <= self.seed < 2**63:
            raise InvalidInputError(f"-O seed must be a non-negative integer below 2^63, got {self.seed}")
        if self.rank is not None and self.combine == "linear":
            raise InvalidInputError("-O rank applies to ties and dare (refactored by SVD); linear is exact at the stacked rank (drop -O rank)")
        if self.rank is not None and self.rank < 1:
            raise InvalidInputError(f"-O rank must be at least 1, got {self.rank}")
        if self.weights is not None and (not self.weights or not all(math.isfinite(w) for w in self.weights)
                                         or not any(w != 0 for w in self.weights)):
            raise InvalidInputError(f"-O weights must be finite numbers, not all zero, got {self.weights}")


@dataclass(frozen=True)
class Recipe:
    """A merge, resolved for the chosen sources (weights in the stored source order)."""

    combine: str
    weights: list[float]
    density: float | None
    seed: int | None
    rank: int | None  # the merged LoRA's rank (linear: the stacked rank, known once merged); None for adapters

    def to_dict(self) -> dict:
        return {"combine": self.combine, "weights": [float(w) for w in self.weights], "density": self.density,
                "seed": self.seed, "rank": self.rank}


def resolve_recipe(ctx: StrategyContext, config: MergeConfig, seed: int) -> tuple[str, Recipe]:
    """The source method and the recipe for these sources; refuses what the math does not allow, in one line."""
    method = ctx.source_method(MERGEABLE, "merge")
    count = len(ctx.ranking)
    if config.weights is not None:
        weights = ctx.in_ranking_order(config.weights)
    else:
        weights = [1.0 / count if config.combine in ("linear", "dare_linear") else 1.0] * count
    if method == "adapter":
        if config.combine != "linear":
            raise InvalidInputError(
                f"{config.combine} trims or drops entries of each source's weight change, which adapter sources (non-linear) "
                "do not have; merge adapters with -O combine=linear, or pass LoRA sources"
            )
        return method, Recipe("linear", weights, None, None, None)
    if config.combine == "linear":
        return method, Recipe("linear", weights, None, None, None)
    shapes = module_shapes(ctx.modules())  # type: ignore[arg-type]
    largest = min(min(shape) for shape in shapes.values())
    rank = config.rank or min(sum(int(r.expert.config["r"]) for r in ctx.ranking), largest)
    if rank > largest:
        narrow = next(name for name, shape in shapes.items() if min(shape) == largest)
        raise InvalidInputError(f"-O rank {rank} is more than module {narrow} ({' x '.join(map(str, shapes[narrow]))}) can hold; "
                                f"use a rank of at most {largest}")
    density = config.density if config.density is not None else DEFAULT_DENSITY
    return method, Recipe(config.combine, weights, density, (config.seed if config.seed is not None else seed)
                          if config.combine in DROPPING else None, rank)


def merge_sources(modules: list[ExpertModule], method: str, recipe: Recipe, backbone: Backbone) -> tuple[ExpertModule, dict]:
    """One expert of the sources' method holding the merged change, and how faithful it is."""
    if recipe.combine == "linear":  # exact: stacked factors (LoRA) or side-by-side units (adapter)
        stack = get_method(method).stack(modules)
        if not any(w != 0 for w in recipe.weights):  # (a search may find that no source helps) one that changes nothing
            merged = stack.merge({name: torch.eye(len(modules))[0] for name in stack.module_names}, backbone)
            merged.silence()
            return merged, {"exact": True, "no_change": True}
        weights = {name: torch.tensor(recipe.weights, dtype=torch.float32) for name in stack.module_names}
        return stack.merge(weights, backbone), {"exact": True}
    merged, report = merge_lora_entrywise(
        modules, recipe.weights, recipe.combine, recipe.density or 1.0, recipe.rank or 1, recipe.seed, backbone  # type: ignore[arg-type]
    )
    return merged, {"exact": False, **report.to_dict()}


def prepare_merged(
    ctx: StrategyContext, strategy: str, method: str, recipe: Recipe, target_kind: str, preparation: Preparation,
    search: dict | None = None,
) -> Prepared:
    """Merge the sources by `recipe` and build the model whose head, task prompt and target expert train on top."""
    with preparation.measure():
        merged, faithfulness = merge_sources(ctx.modules(), method, recipe, ctx.backbone)
    if method == "lora":
        recipe = dataclasses.replace(recipe, rank=merged.config.r)
    target, target_method, target_config = build_target(target_kind, ctx.backbone)
    model = TaskModel(ctx.backbone, target, ctx.task.num_labels, ctx.training.precision, ctx.prompt, FixedExperts(merged))
    config = {
        "strategy": strategy, "sources": ctx.source_ids, "recipe": recipe.to_dict(), "search": search,
        "source_method": method, "source_config": merged.config.to_dict(),
        "target_method": target_method, "target_config": target_config,
    }

    def finalize(trained: TaskModel) -> tuple[Lineage, dict]:
        extra = {
            "merge": {"recipe": recipe.to_dict(), "faithfulness": faithfulness, "search": search},
            "gate_weights": {"mean": dict(zip(ctx.source_names, recipe.weights)), "sources": ctx.source_names},
        }
        return [(sid, MERGE_SOURCE_ROLE, float(w)) for sid, w in zip(ctx.source_ids, recipe.weights)], extra

    return Prepared(model, MERGE_METHOD, config, ctx.target_lr(target), finalize, preparation.to_dict())


def prepare(ctx: StrategyContext, config: MethodConfig) -> Prepared:
    if not isinstance(config, MergeConfig):
        raise TypeError("merge needs a MergeConfig")
    method, recipe = resolve_recipe(ctx, config, ctx.training.seed)
    what = f"{recipe.combine} merge of {len(ctx.ranking)} {method} sources"
    return prepare_merged(ctx, "merge", method, recipe, config.target, Preparation(what))


_CONFIG_FIELDS: dict[str, tuple[type, ...]] = {
    "strategy": (str,), "sources": (list,), "recipe": (dict,), "search": (dict, type(None)), "source_method": (str,),
    "source_config": (dict,), "target_method": (str,), "target_config": (dict,),
}


def rebuild(reader: ExpertReader, expert: ExpertRecord, backbone: Backbone, num_outputs: int, prompt: TaskPrompt | None) -> TaskModel:
    """A stored merge or lorahub expert from its own artifact (the merged sources are inside it; none is read)."""
    config = expert.config
    check_config(config, _CONFIG_FIELDS, expert.name, MERGE_METHOD)
    if config["source_method"] not in MERGEABLE or config["strategy"] not in ("merge", "lorahub"):
        raise InvalidInputError(f"merge expert {expert.name}: unknown source method or strategy in its config")
    if config["recipe"].get("combine") not in COMBINES:
        raise InvalidInputError(f"merge expert {expert.name}: its recipe names no known combine")
    source_method = get_method(config["source_method"])
    merged = source_method.build(source_method.config_class.from_dict(config["source_config"]), backbone)
    target = rebuild_target(config["target_method"], config["target_config"], backbone)
    return TaskModel(backbone, target, num_outputs, task_prompt=prompt, composition=FixedExperts(merged))


class MergeStrategy(Strategy):
    name = "merge"
    summary = "training-free merge of the sources (linear, ties, dare_linear, dare_ties)"
    config_class = MergeConfig
    source_methods = frozenset(MERGEABLE)
    stored_methods = (MERGE_METHOD,)

    def prepare(self, ctx: StrategyContext, config: MethodConfig) -> Prepared:
        return prepare(ctx, config)

    def rebuild(self, reader: ExpertReader, expert: ExpertRecord, backbone: Backbone, num_outputs: int,
                prompt: TaskPrompt | None) -> TaskModel:
        return rebuild(reader, expert, backbone, num_outputs, prompt)


STRATEGY = MergeStrategy()
