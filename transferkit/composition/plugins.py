"""What a transfer strategy written as its own module (merge, lorahub, arrow) is given and returns.

`transfer` selects and loads the sources, builds the target's description prompt and hands both to
the strategy's `prepare`, which returns the model to train (target head, task prompt and an optional
small target expert on top of the sources in the strategy's form), the config that rebuilds it, and
the cost of any work done before training. Registration is one line in `transferkit.composition.strategies`.
"""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from transferkit.backbone import Backbone
from transferkit.composition.selection import RankedSource
from transferkit.errors import InvalidInputError
from transferkit.methods import ExpertModule, MethodConfig, get_method
from transferkit.methods.base import option
from transferkit.modeling import Composition, TaskModel
from transferkit.registry import ExpertReader, ExpertRecord, RegistryStore
from transferkit.task_prompt import TaskPrompt
from transferkit.tasks import TaskSpec, TaskSplits
from transferkit.training.loop import TrainingConfig
from transferkit.workflows import SourceParts

# The small target expert trained on top of the composed sources: a method with its default config, or none.
TARGETS = ("adapter", "lora", "none")
NO_TARGET = "none"
Lineage = list[tuple[str, str, float | None]]


@dataclass
class TargetOptions(MethodConfig):
    """The `-O target=` option every plugged strategy shares."""

    target: Literal["adapter", "lora", "none"] = option(
        "adapter", "small target expert trained on top (its method's default config), or none: head and task prompt only"
    )


@dataclass
class NoExpertConfig(MethodConfig):
    """No options: the target trains only its head and task prompt."""

    recommended_lr: ClassVar[float] = 1e-3


class NoExpert(ExpertModule):
    """A target expert that changes nothing and has no parameters (`-O target=none`)."""

    def export_tensors(self) -> dict[str, torch.Tensor]:
        return {}

    def import_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self._check_tensor_names(tensors, {})


def build_target(kind: str, backbone: Backbone) -> tuple[ExpertModule, str, dict]:
    """The target's own expert (fresh), its method name and config as stored."""
    if kind == NO_TARGET:
        return NoExpert(NoExpertConfig(), backbone), NO_TARGET, {}
    method = get_method(kind)
    config = method.config_class()
    return method.build(config, backbone), method.name, config.to_dict()


def rebuild_target(method: str, config: dict, backbone: Backbone) -> ExpertModule:
    """A stored target expert's module (tensors not yet loaded)."""
    if method == NO_TARGET:
        if config:
            raise InvalidInputError(f"a target of method none has no config, got {sorted(config)}")
        return NoExpert(NoExpertConfig(), backbone)
    if method not in ("adapter", "lora"):
        raise InvalidInputError(f"target method {method!r} is not one of {', '.join(TARGETS)}")
    found = get_method(method)
    return found.build(found.config_class.from_dict(config), backbone)


class HookedComposition(Composition):
    """A composition that only hooks the backbone's modules: no loss term of its own."""

    def __init__(self) -> None:
        super().__init__()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def auxiliary_loss(self) -> torch.Tensor | None:
        return None


@dataclass
class StrategyContext:
    """Everything `transfer` resolved before the strategy builds its model."""

    registry: RegistryStore
    task: TaskSpec
    splits: TaskSplits
    backbone: Backbone
    ranking: list[RankedSource]
    loaded: list[SourceParts]
    requested_sources: list[str] | None  # --sources as the user gave them (their order), None if chosen automatically
    prompt: TaskPrompt | None
    training: TrainingConfig
    lr: float | None

    @property
    def source_ids(self) -> list[str]:
        return [r.expert.id for r in self.ranking]

    @property
    def source_names(self) -> list[str]:
        return [r.expert.name for r in self.ranking]

    def modules(self) -> list[ExpertModule]:
        return [parts.module for parts in self.loaded]

    def source_method(self, allowed: tuple[str, ...], strategy: str) -> str:
        """The one method all sources share, refusing mixed methods or one the strategy cannot use."""
        methods = sorted({r.expert.method for r in self.ranking})
        if len(methods) != 1:
            raise InvalidInputError(f"sources mix different methods ({', '.join(methods)}); pass --sources of one method")
        if methods[0] not in allowed:
            raise InvalidInputError(f"{strategy} cannot use {methods[0]} sources; pass {' or '.join(allowed)} experts")
        return methods[0]

    def in_ranking_order(self, values: list[float]) -> list[float]:
        """Per-source values given in the user's --sources order, reordered like `ranking` (the stored order)."""
        if self.requested_sources is None:
            raise InvalidInputError("-O weights names one weight per source in --sources order; pass --sources too")
        order = [self.registry.get_expert(reference).id for reference in self.requested_sources]
        if len(values) != len(order):
            raise InvalidInputError(f"-O weights gives {len(values)} weights for {len(order)} sources; give one per source, in --sources order")
        by_id = dict(zip(order, values))
        return [by_id[source_id] for source_id in self.source_ids]

    def target_lr(self, target: ExpertModule) -> float:
        return self.lr if self.lr is not None else type(target.config).recommended_lr


@dataclass
class Prepared:
    """What a strategy hands back to `transfer`: the model to train and how to store it."""

    model: TaskModel
    method_name: str
    method_config: dict
    lr: float
    finalize: Callable[[TaskModel], tuple[Lineage, dict]]
    preparation: dict | None = None  # cost of the work done before training (see `Preparation`)


@dataclass(frozen=True)
class Strategy:
    """One plugged strategy: its `-O` options, the sources it can take, how it prepares and how its experts reload."""

    name: str
    config_class: type[MethodConfig]
    source_methods: frozenset[str]
    stored_method: str
    prepare: Callable[[StrategyContext, MethodConfig], Prepared]
    rebuild: Callable[[ExpertReader, ExpertRecord, Backbone, int, TaskPrompt | None], TaskModel]
    summary: str


@dataclass
class Preparation:
    """Measures work done before training (a weight search, a merge): wall seconds, CPU seconds, FLOPs."""

    what: str
    flops: float | None = None
    wall_seconds: float = 0.0
    device_seconds: float = 0.0
    details: dict = field(default_factory=dict)

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        started, cpu = time.perf_counter(), _cpu_seconds()
        try:
            yield
        finally:
            self.wall_seconds += time.perf_counter() - started
            self.device_seconds += _cpu_seconds() - cpu

    def to_dict(self) -> dict:
        return {
            "what": self.what, "wall_seconds": round(self.wall_seconds, 3), "device_seconds": round(self.device_seconds, 3),
            "flops": None if self.flops is None else float(self.flops), **self.details,
        }


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def check_config(config: dict, required: dict[str, tuple[type, ...]], name: str, method: str) -> None:
    """Refuse a stored config whose fields or types would not rebuild the expert (e.g. from an imported bundle)."""
    if set(config) != set(required):
        raise InvalidInputError(f"{method} expert {name} has config fields {sorted(config)}, expected {sorted(required)}")
    for key, types in required.items():
        value = config[key]
        if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
            raise InvalidInputError(f"{method} expert {name}: config field {key} has the wrong type ({str(value)[:60]!r})")
    sources = config.get("sources")
    if not sources or not all(isinstance(source, str) for source in sources):
        raise InvalidInputError(f"{method} expert {name}: config field sources must be a non-empty list of expert ids")
