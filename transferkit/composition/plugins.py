"""The one interface every transfer strategy implements, and what it is given and returns.

A strategy is a `Strategy` subclass in a module of its own (`pemt`, `single` (spot, scratch), `attempt`,
`merge_strategy`, `lorahub`, `arrow`), registered with `transferkit.composition.strategies.register_strategy`.
It says which `-O` options it takes, which stored experts it accepts as sources, which job options it
refuses, how it builds the model to train (`prepare`), what lineage it records (the `finalize` it returns)
and how its stored experts are rebuilt from the registry (`rebuild`).

`transfer` validates the job, selects and loads the sources and hands them to the strategy's `prepare` in
a `StrategyContext`; `prepare` returns the model to train (target head, task prompt and the strategy's
experts), the config that rebuilds it, and the cost of any work done before training.
"""

from __future__ import annotations

import contextlib
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar, Literal

import torch

from transferkit.backbone import Backbone
from transferkit.composition.options import DEFAULT_TARGET_METHOD, TransferJob
from transferkit.composition.selection import RankedSource
from transferkit.errors import InvalidInputError
from transferkit.experts import SourceParts
from transferkit.methods import ExpertModule, MethodConfig, get_method
from transferkit.methods.base import option
from transferkit.modeling import Composition, TaskModel
from transferkit.registry import ExpertReader, ExpertRecord, RegistryStore
from transferkit.task_prompt import TaskPrompt, description_prompt
from transferkit.tasks import TaskSpec, TaskSplits
from transferkit.training.cost import flop_counter
from transferkit.training.data import tokenize_examples
from transferkit.training.loop import TrainingConfig, predict

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
    training: TrainingConfig
    lr: float | None
    job: TransferJob

    @cached_property
    def prompt(self) -> TaskPrompt | None:
        """The target's description prompt, correlated with the sources' task prompts at full weight (built once)."""
        return self.own_prompt(self.source_prompts())

    def source_prompts(self) -> list[torch.Tensor]:
        return [parts.prompt for parts in self.loaded if parts.prompt is not None]

    def own_prompt(self, source_prompts: list[torch.Tensor] | None = None, learn_source_scale: bool = False) -> TaskPrompt | None:
        """A new description prompt for the target (None with --task-prompt-length 0), correlated with `source_prompts`
        (their term scaled by a learned scalar from 0 with `learn_source_scale`)."""
        length = self.job.task_prompt_length
        if length < 1:
            return None
        return TaskPrompt(description_prompt(self.task.description, self.backbone, length), source_prompts or [],
                          learn_source_scale=learn_source_scale)

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


Rebuild = Callable[[ExpertReader, ExpertRecord, Backbone, int, "TaskPrompt | None"], TaskModel]


class Strategy:
    """A transfer strategy. Subclass it, set the class attributes, implement `prepare` (and `rebuild` if the
    strategy stores experts of a kind of its own), and register an instance in `transferkit.composition.strategies`.

    The defaults describe a strategy with `-O` options of its own that takes no `--method` and none of pemt's
    gate options; override the methods below where a strategy differs.
    """

    name: ClassVar[str]
    summary: ClassVar[str] = ""
    # Its `-O KEY=VALUE` options; None: the target method's config (`--method`, default DEFAULT_TARGET_METHOD).
    config_class: ClassVar[type[MethodConfig] | None] = None
    # The methods of the stored experts it takes as sources.
    source_methods: ClassVar[frozenset[str]] = frozenset()
    # The methods its stored experts are recorded under that only its `rebuild` can load (shared kinds: one owner).
    stored_methods: ClassVar[tuple[str, ...]] = ()
    uses_sources: ClassVar[bool] = True  # False: no source selection at all (scratch)
    max_sources: ClassVar[int | None] = None  # keep at most this many of the ranked sources

    def validate(self, job: TransferJob) -> None:
        """Refuse job options the strategy does not take, in one line each, before any work is done."""
        if job.method is not None:
            raise InvalidInputError(f"{self.name} takes its target expert from -O target=adapter|lora|none; drop --method")
        self.refuse_gate_options(job)

    def refuse_gate_options(self, job: TransferJob) -> None:
        """pemt's learned-gate options (--gate-input, --gate-init, --zero-expert, --source-prompt-scale) apply to pemt only."""
        if job.gate_input != "states":
            raise InvalidInputError("--gate-input applies to pemt's learned gate only; drop it for other strategies")
        if job.gate_init != "uniform":
            raise InvalidInputError("--gate-init arrow starts pemt's learned gate (with --gate-input states); drop it for other strategies")
        if job.zero_expert:
            raise InvalidInputError("--zero-expert applies to pemt's learned gate only; pass --no-zero-expert for other strategies")
        if job.source_prompt_scale == "learned":
            raise InvalidInputError("--source-prompt-scale learned applies to pemt only; drop it for other strategies")

    def source_prompt_scale(self, job: TransferJob) -> str:
        """How the target prompt weighs the sources' prompts (recorded with the job): at full weight; pemt may learn it."""
        return "fixed"

    def options_class(self, job: TransferJob) -> type[MethodConfig]:
        """The config class the job's `-O` options are parsed into."""
        return self.config_class or get_method(job.method or DEFAULT_TARGET_METHOD).config_class

    def accepts(self, job: TransferJob) -> frozenset[str]:
        """Which stored experts (by method) this job can take as sources."""
        return self.source_methods

    def source_count(self, job: TransferJob) -> int | None:
        """How many sources to select automatically (None: every compatible one)."""
        return job.top_k

    def prepare(self, ctx: StrategyContext, config: MethodConfig) -> Prepared:
        """Build the model to train, the config that rebuilds it and the lineage it records (its `finalize`)."""
        raise NotImplementedError

    def recorded_method(self, job: TransferJob, method_name: str) -> str | None:
        """The --method recorded with the job so `reproduce` can run it again (None: the strategy takes none)."""
        return None

    def auxiliary_weight(self, job: TransferJob) -> float:
        """Weight of the model's auxiliary loss (pemt's sparsity term) in training."""
        return 0.0

    def rebuild(self, reader: ExpertReader, expert: ExpertRecord, backbone: Backbone, num_outputs: int,
                prompt: TaskPrompt | None) -> TaskModel:
        """A stored expert of one of `stored_methods`, rebuilt on `backbone` (tensors not yet loaded)."""
        raise NotImplementedError(f"{self.name} stores no experts of a kind of its own")


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
        """Add the enclosed work's wall time, CPU time and FLOPs (factorisations included) to this record."""
        started, cpu = time.perf_counter(), _cpu_seconds()
        counter = flop_counter()
        try:
            with counter:
                yield
        finally:
            self.wall_seconds += time.perf_counter() - started
            self.device_seconds += _cpu_seconds() - cpu
            self.flops = (self.flops or 0.0) + counter.get_total_flops()

    def to_dict(self) -> dict:
        return {
            "what": self.what, "wall_seconds": round(self.wall_seconds, 3), "device_seconds": round(self.device_seconds, 3),
            "flops": None if self.flops is None else float(self.flops), **self.details,
        }


def predict_dev(model: TaskModel, ctx: StrategyContext) -> None:
    """Run the trained model over the dev split (eval mode), e.g. to record its gate or attention weights."""
    split = tokenize_examples(ctx.splits.dev, ctx.backbone.tokenizer, ctx.training.max_length, regression=ctx.task.is_regression)
    predict(model, split, ctx.training.eval_batch_size, ctx.backbone.tokenizer.pad_token_id, ctx.task)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def check_composition_config(
    method: str, config: dict, name: str, required: dict[str, tuple[type, ...]], optional: dict[str, tuple[type, ...]],
    strategies: tuple[str, ...],
) -> None:
    """Refuse a stored composition config that could not be rebuilt (e.g. from an imported bundle); optional fields
    were added later, so older experts lack them."""
    if not set(required) <= set(config) <= set(required) | set(optional):
        raise InvalidInputError(f"{method} expert {name} has config fields {sorted(config)}, expected {sorted(required)}")
    for key, types in {**required, **optional}.items():
        value = config.get(key)
        if key in config and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            raise InvalidInputError(f"{method} expert {name}: config field {key} has the wrong type ({value!r})")
    if config["strategy"] not in strategies:
        raise InvalidInputError(f"{method} expert {name}: strategy {config['strategy']!r} is not one of {strategies}")
    if not config["sources"] or not all(isinstance(source, str) for source in config["sources"]):
        raise InvalidInputError(f"{method} expert {name}: config field sources must be a non-empty list of expert ids")


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
