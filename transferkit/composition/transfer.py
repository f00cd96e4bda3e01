"""`transferkit transfer`: a new target expert built from what the registry holds.

Strategies (same data, budget, head and task prompt, so the registry can compare them):
- `pemt` (default): frozen sources mixed by a learned per-layer gate read from the
  target's task prompt (correlated with the sources' prompts), plus a new target
  expert (`--method`, default a bottleneck adapter), trained with the task
  sparsity loss. Lineage: each source, weight = its mean gate on the dev set.
- `average`: the same mixture with the gate fixed to uniform weights.
- `spot`: the single most similar source's expert, copied and trained further
  (SPoT's initialisation transfer). Lineage: that source, role "init".
- `scratch`: the target expert alone, no sources.
- `attempt`: ATTEMPT's per-example attention over frozen source *prompts* plus a new
  target prompt (`transferkit.composition.attempt`). Lineage: each source, weight =
  its mean attention on the dev set.
- `merge`, `lorahub`, `arrow`: the peers' training-free merges, gradient-free mixing weights and
  label-free routing, each a module of its own registered in `transferkit.composition.strategies`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from transferkit.backbone import Backbone, load_backbone
from transferkit.composition.arrow import initialise_gate
from transferkit.composition.attempt import ATTEMPT_METHOD, AttemptConfig, AttemptExpert
from transferkit.composition.heads import map_labels, mapped_head, mix_heads
from transferkit.composition.mixture import SourceMixture, gate_entropy
from transferkit.composition.plugins import StrategyContext
from transferkit.composition.selection import RankedSource, TaskQuery, composable_methods, select_sources, target_embedding
from transferkit.composition.strategies import PLUGGED
from transferkit.embedding import embed_task_data
from transferkit.errors import InvalidInputError, TransferkitError
from transferkit.methods import METHODS, ExpertModule, get_method
from transferkit.modeling import TaskModel
from transferkit.registry import ExpertReader, ExpertRecord, RegistryStore
from transferkit.task_prompt import TaskPrompt, description_prompt
from transferkit.task_registry import ensure_task_record, job_task, resolve_registered_task
from transferkit.tasks import TaskSpec, load_splits
from transferkit.training.data import tokenize_examples
from transferkit.training.loop import TrainingConfig, predict
from transferkit.workflows import JobOptions, SourceParts, job_expert_name, load_method_expert, load_source_parts, run_training

STRATEGIES = ("pemt", "average", "spot", "scratch", "attempt", *PLUGGED)
HEAD_INITS = ("auto", "none")
GATE_INITS = ("uniform", "arrow")
DEFAULT_ZERO_EXPERT = True
ZERO_EXPERT_PRIOR = 0.98  # the zero expert's share before the gate learns (chosen on RTE, CB and CoLA dev; see mixture.py)
# PEMT's task sparsity loss is off by default: on CoLA dev it cost MCC with the zero expert in the gate, and RTE and CB
# dev did not move (README, "How it works"). --sparsity-weight turns it on.
DEFAULT_SPARSITY_WEIGHT = 0.0
MIXTURE_METHOD = "mixture"
DEFAULT_TARGET_METHOD = "adapter"


# Gates and the target prompt learn at this rate by default. At 1e-2 the zero-initialised gate
# committed to an arbitrary source within a few steps (which one varied by seed); at 2e-3 MNLI
# took the largest weight on CB in 3 of 3 seeds and CB accuracy rose (README, transfer results).
TRANSFER_PROMPT_LR = 2e-3


@dataclass(kw_only=True)
class TransferJob(JobOptions):
    """A `transfer` job."""

    target: str | None
    strategy: str = "pemt"
    sources: list[str] | None = None
    top_k: int | None = None
    route_top_k: int | None = None
    sparsity_weight: float = DEFAULT_SPARSITY_WEIGHT
    # pemt's gate reads the prompt-position states of each layer ("states", PEMT) or the task prompt alone
    # ("task": the same weights for every input, so the trained mixture can be merged into one expert).
    gate_input: str = "states"
    # pemt's gate also weighs an expert whose change is zero, so the mixture can use none of the sources.
    zero_expert: bool | None = None  # None: the strategy's default (pemt: DEFAULT_ZERO_EXPERT)
    # "auto": start the target's head from the sources' heads where their labels match (transferkit.composition.heads).
    head_init: str = "auto"
    # pemt's gate starts uniform, or at Arrow's routing of the task state (transferkit.composition.arrow.initialise_gate).
    gate_init: str = "uniform"
    # The target's own expert for pemt/average/scratch (default: adapter); for spot it restricts the sources
    # to that method; attempt trains its own target prompt and takes none.
    method: str | None = None
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(prompt_lr=TRANSFER_PROMPT_LR))


@dataclass
class TransferOutcome:
    expert: ExpertRecord
    ranking: list[RankedSource]


def _validate(job: TransferJob) -> None:
    job.validate()
    if job.strategy not in STRATEGIES:
        raise InvalidInputError(f"unknown strategy {job.strategy!r}; choose one of {', '.join(STRATEGIES)}")
    if not (math.isfinite(job.sparsity_weight) and job.sparsity_weight >= 0):
        raise InvalidInputError(f"--sparsity-weight must be at least 0, got {job.sparsity_weight}")
    if job.strategy == "scratch" and job.sources:
        raise InvalidInputError("--strategy scratch uses no sources; drop --sources")
    if job.route_top_k is not None and job.route_top_k < 1:
        raise InvalidInputError(f"--route-top-k must be at least 1, got {job.route_top_k}")
    if job.strategy == "pemt" and job.task_prompt_length < 1:
        raise InvalidInputError("pemt's gate reads the task prompt; --task-prompt-length must be at least 1")
    if job.strategy == "attempt" and job.method is not None:
        raise InvalidInputError(
            "attempt trains its own target prompt; drop --method (tune it with -O attention_hidden=N or -O temperature=T)"
        )
    if job.strategy in PLUGGED and job.method is not None:
        raise InvalidInputError(f"{job.strategy} takes its target expert from -O target=adapter|lora|none; drop --method")
    if job.gate_input != "states" and job.strategy != "pemt":
        raise InvalidInputError("--gate-input applies to pemt's learned gate only; drop it for other strategies")
    if job.strategy == "spot" and job.method_options:
        raise InvalidInputError("spot continues training the source expert as configured; drop -O")
    if job.head_init not in HEAD_INITS:
        raise InvalidInputError(f"--head-init must be one of {', '.join(HEAD_INITS)}, got {job.head_init!r}")
    if job.gate_init not in GATE_INITS:
        raise InvalidInputError(f"--gate-init must be one of {', '.join(GATE_INITS)}, got {job.gate_init!r}")
    if job.gate_init != "uniform" and (job.strategy != "pemt" or job.gate_input != "states"):
        raise InvalidInputError("--gate-init arrow starts pemt's learned gate (with --gate-input states); drop it for other strategies")
    if job.zero_expert and job.strategy != "pemt":
        raise InvalidInputError("--zero-expert applies to pemt's learned gate only; pass --no-zero-expert for other strategies")


def _source_methods(job: TransferJob) -> frozenset[str]:
    """Which stored experts the strategy can take as sources."""
    if job.strategy == "attempt":
        return frozenset({"prompt"})
    if job.strategy in PLUGGED:
        return PLUGGED[job.strategy].source_methods
    if job.strategy == "spot" and job.sources:
        return frozenset(METHODS)  # any single stored expert can be the starting point
    if job.strategy == "spot" and job.method is not None:
        return frozenset({get_method(job.method).name})
    return composable_methods()


def build_mixture(
    sources: list[ExpertModule], backbone: Backbone, route_top_k: int | None, learn_gate: bool, gate_input: str = "states",
    zero_expert: bool = False, zero_prior: float | None = None,
) -> SourceMixture:
    kinds = {type(source) for source in sources}
    if len(kinds) != 1:
        raise InvalidInputError("sources mix different methods; pass --sources of one method (all lora or all adapter)")
    method = next(m for m in METHODS.values() if m.module_class in kinds)
    return SourceMixture(
        method.stack(sources), len(sources), backbone.hidden_size, route_top_k, learn_gate, gate_input=gate_input,
        zero_expert=zero_expert, zero_prior=zero_prior,
    )


def build_attempt(sources: list[ExpertModule], config: AttemptConfig, backbone: Backbone) -> AttemptExpert:
    prompts = []
    for source in sources:
        prompt = source.export_tensors().get("prompt")
        if prompt is None:
            raise InvalidInputError("attempt's sources must be prompt experts; pass --sources trained with --method prompt")
        prompts.append(prompt)
    return AttemptExpert(config, backbone, prompts)


COMPOSED_METHODS = (MIXTURE_METHOD, ATTEMPT_METHOD)

# A stored composition's config, per method: field -> accepted JSON types; optional fields were added later.
_CONFIG_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    MIXTURE_METHOD: {
        "strategy": (str,), "sources": (list,), "route_top_k": (int, type(None)), "learn_gate": (bool,),
        "sparsity_weight": (int, float), "target_method": (str,), "target_config": (dict,),
    },
    ATTEMPT_METHOD: {"strategy": (str,), "sources": (list,), "target_config": (dict,)},
}
_OPTIONAL_FIELDS: dict[str, dict[str, tuple[type, ...]]] = {
    MIXTURE_METHOD: {"gate_input": (str,), "zero_expert": (bool,), "zero_expert_prior": (float,), "gate_init": (str,)},
    ATTEMPT_METHOD: {},
}
_STRATEGIES_OF = {MIXTURE_METHOD: ("pemt", "average"), ATTEMPT_METHOD: ("attempt",)}


def check_composition_config(method: str, config: dict, name: str) -> None:
    """Refuse a stored composition config that could not be rebuilt (e.g. from an imported bundle)."""
    required, optional = _CONFIG_FIELDS[method], _OPTIONAL_FIELDS[method]
    if not set(required) <= set(config) <= set(required) | set(optional):
        raise InvalidInputError(f"{method} expert {name} has config fields {sorted(config)}, expected {sorted(required)}")
    for key, types in {**required, **optional}.items():
        value = config.get(key)
        if key in config and (not isinstance(value, types) or (isinstance(value, bool) and bool not in types)):
            raise InvalidInputError(f"{method} expert {name}: config field {key} has the wrong type ({value!r})")
    if config["strategy"] not in _STRATEGIES_OF[method]:
        raise InvalidInputError(f"{method} expert {name}: strategy {config['strategy']!r} is not one of {_STRATEGIES_OF[method]}")
    if not config["sources"] or not all(isinstance(source, str) for source in config["sources"]):
        raise InvalidInputError(f"{method} expert {name}: config field sources must be a non-empty list of expert ids")


def build_stored_composition(
    registry: ExpertReader, expert: ExpertRecord, backbone: Backbone, num_outputs: int, prompt: TaskPrompt | None
) -> TaskModel:
    """Rebuild a stored pemt/average/attempt expert: its sources come from the registry (each verified)."""
    config = expert.config
    check_composition_config(expert.method, config, expert.name)
    sources = [load_method_expert(registry, registry.get_expert(source_id), backbone)[0] for source_id in config["sources"]]
    if expert.method == ATTEMPT_METHOD:
        attempt = build_attempt(sources, AttemptConfig.from_dict(config["target_config"]), backbone)
        return TaskModel(backbone, attempt, num_outputs, task_prompt=prompt)
    mixture = build_mixture(
        sources, backbone, config["route_top_k"], config["learn_gate"], config.get("gate_input", "states"),
        config.get("zero_expert", False), config.get("zero_expert_prior"),
    )
    target_method = get_method(config["target_method"])
    target = target_method.build(target_method.config_class.from_dict(config["target_config"]), backbone)
    return TaskModel(backbone, target, num_outputs, task_prompt=prompt, composition=mixture)


def _target_prompt(task: TaskSpec, backbone: Backbone, length: int, source_prompts: list[torch.Tensor]) -> TaskPrompt | None:
    if length < 1:
        return None
    return TaskPrompt(description_prompt(task.description, backbone, length), source_prompts)


def _embed_source_data(registry: RegistryStore, task_names: set[str], job: TransferJob) -> bool:
    """Give source tasks stored without a data embedding (older registries, imported bundles) one from their own
    training data where it can be read; True if any was added. Unreadable data leaves the task as it is."""
    added = False
    for name in sorted(task_names):
        try:
            source_task = resolve_registered_task(registry, name)
            ensure_task_record(registry, source_task, load_splits(source_task, job.data_dir, seed=job.training.seed).train)
        except (TransferkitError, OSError, ValueError):
            continue
        added = True
    return added


def transfer(registry: RegistryStore, job: TransferJob) -> TransferOutcome:
    """Train a target expert with the chosen strategy and store it with lineage and cost."""
    _validate(job)
    task = job_task(registry, job.target, job.task_file, job.data_dir)
    target_method = get_method(job.method or DEFAULT_TARGET_METHOD)
    config_class = AttemptConfig if job.strategy == "attempt" else target_method.config_class
    if job.strategy in PLUGGED:
        config_class = PLUGGED[job.strategy].config_class
    target_config = config_class.from_options(job.method_options)
    training = job.training
    training.validate()
    backbone = load_backbone(job.model, precision=training.precision)
    splits = load_splits(task, job.data_dir, seed=training.seed, max_train_examples=job.max_train_examples)
    ranking: list[RankedSource] = []
    if job.strategy != "scratch":
        query = TaskQuery(target_embedding(task.description), embed_task_data(splits.train, task.name))
        def rank() -> list[RankedSource]:
            return select_sources(
                registry, task.name, query, backbone.backbone_id, job.sources,
                1 if job.strategy == "spot" and not job.sources else job.top_k, _source_methods(job),
            )

        ranking = rank()
        if _embed_source_data(registry, {r.expert.task_name for r in ranking if r.data_similarity is None}, job):
            ranking = rank()
        if job.strategy == "spot":
            ranking = ranking[:1]
    name, name_is_base = job_expert_name(registry, job.name, f"{task.short_name}-{job.strategy}")

    torch.manual_seed(training.seed)
    loaded = [load_source_parts(registry, r.expert, backbone) for r in ranking]
    source_ids = [r.expert.id for r in ranking]
    zero_expert = job.strategy == "pemt" and (DEFAULT_ZERO_EXPERT if job.zero_expert is None else job.zero_expert)
    preparation = plugged_finalize = None
    if job.strategy in PLUGGED:
        context = StrategyContext(
            registry, task, splits, backbone, ranking, loaded, job.sources, training=training, lr=job.lr,
            prompt=_target_prompt(task, backbone, job.task_prompt_length, [p.prompt for p in loaded if p.prompt is not None]),
        )
        prepared = PLUGGED[job.strategy].prepare(context, target_config)
        model, method_name, method_config, lr = prepared.model, prepared.method_name, prepared.method_config, prepared.lr
        preparation, plugged_finalize = prepared.preparation, prepared.finalize
    elif job.strategy == "spot":
        source = ranking[0].expert
        expert_module = loaded[0].module
        for parameter in expert_module.parameters():
            parameter.requires_grad_(True)
        method_name, method_config = source.method, dict(source.config)
        lr = job.lr if job.lr is not None else get_method(source.method).config_class.recommended_lr
        model = TaskModel(backbone, expert_module, task.num_labels, training.precision,
                          _target_prompt(task, backbone, job.task_prompt_length, []))
    elif job.strategy == "attempt":
        expert_module = build_attempt([parts.module for parts in loaded], target_config, backbone)
        # The description prompt is not correlated with the sources here: ATTEMPT's attention does the mixing.
        model = TaskModel(backbone, expert_module, task.num_labels, training.precision,
                          _target_prompt(task, backbone, job.task_prompt_length, []))
        lr = job.lr if job.lr is not None else AttemptConfig.recommended_lr
        method_name = ATTEMPT_METHOD
        method_config = {"strategy": job.strategy, "sources": source_ids, "target_config": target_config.to_dict()}
    else:
        composition = None
        prompts: list[torch.Tensor] = []
        if job.strategy in ("pemt", "average"):
            composition = build_mixture(
                [parts.module for parts in loaded], backbone, job.route_top_k, learn_gate=job.strategy == "pemt",
                gate_input=job.gate_input, zero_expert=zero_expert, zero_prior=ZERO_EXPERT_PRIOR if zero_expert else None,
            )
            prompts = [parts.prompt for parts in loaded if parts.prompt is not None]
        expert_module = target_method.build(target_config, backbone)
        model = TaskModel(backbone, expert_module, task.num_labels, training.precision,
                          _target_prompt(task, backbone, job.task_prompt_length, prompts), composition)
        lr = job.lr if job.lr is not None else target_config.recommended_lr
        if composition is None:
            method_name, method_config = target_method.name, target_config.to_dict()
        else:
            method_name = MIXTURE_METHOD
            method_config = {
                "strategy": job.strategy,
                "sources": source_ids,
                "route_top_k": job.route_top_k,
                "learn_gate": job.strategy == "pemt",
                "gate_input": job.gate_input,
                "zero_expert": zero_expert,
                **({"zero_expert_prior": ZERO_EXPERT_PRIOR} if zero_expert else {}),
                **({"gate_init": job.gate_init} if job.gate_init != "uniform" else {}),
                "sparsity_weight": job.sparsity_weight,
                "target_method": target_method.name,
                "target_config": target_config.to_dict(),
            }
    training.lr = lr
    head_init = initialise_head(model, task, ranking, loaded) if job.head_init == "auto" else {"mode": "none"}
    gate_init = (
        initialise_gate(model, splits.train, training.max_length, task.is_regression) if job.gate_init == "arrow" else None
    )
    hyperparams = {
        "task": task.name,
        "strategy": job.strategy,
        "sources": source_ids,
        "top_k": job.top_k,
        "route_top_k": job.route_top_k,
        "sparsity_weight": job.sparsity_weight,
        "method": method_name,
        "method_config": method_config,
        "model": backbone.fingerprint.name,
        "max_train_examples": job.max_train_examples,
        "task_prompt_length": job.task_prompt_length,
        **training.to_dict(),
        "job": job.record(
            target=task.name, strategy=job.strategy, sources=source_ids, top_k=job.top_k, route_top_k=job.route_top_k,
            sparsity_weight=job.sparsity_weight, method=_recorded_method(job, method_name), gate_input=job.gate_input,
            zero_expert=job.zero_expert, head_init=job.head_init, gate_init=job.gate_init,
        ),
    }

    def finalize(trained: TaskModel) -> tuple[list[tuple[str, str, float | None]], dict]:
        extra: dict = {"strategy": job.strategy, "ranking": [r.to_dict() for r in ranking], "head_init": head_init}
        if gate_init is not None:
            extra["gate_init"] = gate_init
        if plugged_finalize is not None:
            lineage, own = plugged_finalize(trained)
            return lineage, {**extra, **own}
        if job.strategy == "spot":
            return [(source_ids[0], "init", ranking[0].similarity)], extra
        if not ranking:
            return [], extra
        if job.strategy == "attempt":
            attention = measure_attention(trained, task, splits.dev, backbone, training)
            extra["gate_weights"] = {
                "mean": {r.expert.name: w for r, w in zip(ranking, attention)},
                "target": attention[-1],
                "sources": [r.expert.name for r in ranking],
            }
            return [(sid, "source", w) for sid, w in zip(source_ids, attention)], extra
        gates = measure_gates(trained, task, splits.dev, backbone, training)
        mean = [sum(layer[j] for layer in gates.values()) / len(gates) for j in range(len(ranking))]
        extra["gate_weights"] = {
            "per_layer": gates,
            "mean": {r.expert.name: round(w, 6) for r, w in zip(ranking, mean)},
            "sources": [r.expert.name for r in ranking],
            "entropy": gate_entropy(gates),
        }
        shares = trained.composition.zero_shares
        if shares:
            extra["gate_weights"]["zero_expert"] = {"per_layer": shares, "mean": round(sum(shares.values()) / len(shares), 6)}
        return [(sid, "source", round(w, 6)) for sid, w in zip(source_ids, mean)], extra

    expert, _ = run_training(
        registry,
        kind="transfer",
        task=task,
        splits=splits,
        backbone=backbone,
        model=model,
        method_name=method_name,
        method_config=method_config,
        training=training,
        name=name,
        command=job.command,
        show_progress=job.show_progress,
        hyperparams=hyperparams,
        extra_lineage=job.extra_lineage,
        auxiliary_weight=job.sparsity_weight if job.strategy == "pemt" else 0.0,
        finalize=finalize,
        name_is_base=name_is_base,
        resume=job.resume,
        checkpoint_every=job.checkpoint_every,
        preparation=preparation,
    )
    return TransferOutcome(expert, ranking)


def initialise_head(model: TaskModel, task: TaskSpec, ranking: list[RankedSource], loaded: list[SourceParts]) -> dict:
    """Start the target head from the sources' heads whose labels map onto the target's; returns the record of it.

    The mapped heads are mixed uniformly: the mixture's gate starts uniform, and spot/attempt use one
    source or all of them alike.
    """
    if task.label_names is None:
        return {"mode": "auto", "used": False, "reason": "regression target: no labels to map"}
    mapped, mappings = [], []
    for ranked, parts in zip(ranking, loaded):
        labels = ranked.expert.extra.get("label_names")
        if parts.head is None or not labels:
            continue
        mapping = map_labels(tuple(task.label_names), tuple(labels), ranked.expert.name)
        if mapping is None:
            continue
        mapped.append((1.0, *mapped_head(mapping, tuple(labels), *parts.head, tuple(task.label_names))))
        mappings.append(mapping.to_dict())
    if not mapped:
        return {"mode": "auto", "used": False, "reason": "no source's labels map onto the target's"}
    weight, bias = mix_heads(mapped)
    with torch.no_grad():
        model.head.linear.weight.copy_(weight)
        model.head.linear.bias.copy_(bias)
    return {"mode": "auto", "used": True, "mappings": mappings}


def _recorded_method(job: TransferJob, method_name: str) -> str | None:
    """The --method that rebuilds this job: spot records the method of the source it continued."""
    if job.strategy == "attempt" or job.strategy in PLUGGED:
        return None
    if job.strategy == "spot":
        return method_name
    return job.method or DEFAULT_TARGET_METHOD


def _predict_dev(model: TaskModel, task: TaskSpec, dev_examples, backbone: Backbone, training: TrainingConfig) -> None:
    split = tokenize_examples(dev_examples, backbone.tokenizer, training.max_length, regression=task.is_regression)
    predict(model, split, training.eval_batch_size, backbone.tokenizer.pad_token_id, task)


def measure_gates(model: TaskModel, task: TaskSpec, dev_examples, backbone: Backbone, training: TrainingConfig) -> dict[str, list[float]]:
    """Mean routed gate weight per source and layer over the dev set (eval mode, best parameters)."""
    mixture = model.composition
    if not isinstance(mixture, SourceMixture):
        raise TypeError("measure_gates needs a model with a source mixture")
    mixture.start_recording()
    _predict_dev(model, task, dev_examples, backbone, training)
    return mixture.stop_recording()


def measure_attention(model: TaskModel, task: TaskSpec, dev_examples, backbone: Backbone, training: TrainingConfig) -> list[float]:
    """ATTEMPT's mean attention weight per source prompt, then the target prompt, over the dev set."""
    if not isinstance(model.expert, AttemptExpert):
        raise TypeError("measure_attention needs an ATTEMPT model")
    model.expert.start_recording()
    _predict_dev(model, task, dev_examples, backbone, training)
    return model.expert.stop_recording()
