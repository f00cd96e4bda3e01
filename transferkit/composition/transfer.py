"""`transferkit transfer`: a new target expert built from what the registry holds.

Every strategy gets the same data, budget, head and task prompt, so the registry can compare them. A
strategy is an object registered in `transferkit.composition.strategies` (one module each: `pemt` and
`average` in `transferkit.composition.pemt`, `spot` and `scratch` in `transferkit.composition.single`,
`attempt`, `merge`, `lorahub`, `arrow`); this job validates the options, selects and loads the sources,
hands them to the strategy's `prepare`, initialises the head (and pemt's gate) and trains in a registry run.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from transferkit.backbone import load_backbone
from transferkit.composition.arrow import initialise_gate
from transferkit.composition.heads import map_labels, mapped_head, mix_heads
from transferkit.composition.options import GATE_INITS, HEAD_INITS, SOURCE_PROMPT_SCALES, TRANSFER_PROMPT_LR, TransferJob
from transferkit.composition.plugins import Strategy, StrategyContext
from transferkit.composition.selection import RankedSource, TaskQuery, select_sources, target_embedding
from transferkit.composition.strategies import STRATEGIES, get_strategy
from transferkit.embedding import embed_task_data
from transferkit.errors import InvalidInputError, TransferkitError
from transferkit.experts import SourceParts, job_expert_name, load_source_parts
from transferkit.methods import MethodConfig
from transferkit.modeling import TaskModel
from transferkit.registry import ExpertRecord, RegistryStore
from transferkit.task_registry import ensure_task_record, job_task, resolve_registered_task
from transferkit.tasks import TaskSpec, load_splits
from transferkit.training.run import TrainingRun, run_training

__all__ = ["STRATEGIES", "TRANSFER_PROMPT_LR", "TransferJob", "TransferOutcome", "initialise_head", "transfer"]


@dataclass
class TransferOutcome:
    expert: ExpertRecord
    ranking: list[RankedSource]


def validate_job(job: TransferJob) -> tuple[Strategy, MethodConfig]:
    """Refuse bad options in one line each (the strategy's own refusals included); the strategy and its parsed `-O` options."""
    job.validate()
    strategy = get_strategy(job.strategy)
    if not (math.isfinite(job.sparsity_weight) and job.sparsity_weight >= 0):
        raise InvalidInputError(f"--sparsity-weight must be at least 0, got {job.sparsity_weight}")
    if job.route_top_k is not None and job.route_top_k < 1:
        raise InvalidInputError(f"--route-top-k must be at least 1, got {job.route_top_k}")
    if job.head_init not in HEAD_INITS:
        raise InvalidInputError(f"--head-init must be one of {', '.join(HEAD_INITS)}, got {job.head_init!r}")
    if job.gate_init not in GATE_INITS:
        raise InvalidInputError(f"--gate-init must be one of {', '.join(GATE_INITS)}, got {job.gate_init!r}")
    if job.source_prompt_scale is not None and job.source_prompt_scale not in SOURCE_PROMPT_SCALES:
        raise InvalidInputError(
            f"--source-prompt-scale must be one of {', '.join(SOURCE_PROMPT_SCALES)}, got {job.source_prompt_scale!r}"
        )
    strategy.validate(job)
    return strategy, strategy.options_class(job).from_options(job.method_options)


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
    strategy, target_config = validate_job(job)
    task = job_task(registry, job.target, job.task_file, job.data_dir)
    training = job.training
    training.validate()
    backbone = load_backbone(job.model, precision=training.precision)
    splits = load_splits(task, job.data_dir, seed=training.seed, max_train_examples=job.max_train_examples)
    ranking: list[RankedSource] = []
    if strategy.uses_sources:
        query = TaskQuery(target_embedding(task.description), embed_task_data(splits.train, task.name))
        def rank() -> list[RankedSource]:
            return select_sources(
                registry, task.name, query, backbone.backbone_id, job.sources, strategy.source_count(job), strategy.accepts(job),
            )

        ranking = rank()
        if _embed_source_data(registry, {r.expert.task_name for r in ranking if r.data_similarity is None}, job):
            ranking = rank()
        if strategy.max_sources is not None:
            ranking = ranking[: strategy.max_sources]
    name, name_is_base = job_expert_name(registry, job.name, f"{task.short_name}-{job.strategy}")

    torch.manual_seed(training.seed)
    loaded = [load_source_parts(registry, r.expert, backbone) for r in ranking]
    source_ids = [r.expert.id for r in ranking]
    context = StrategyContext(registry, task, splits, backbone, ranking, loaded, job.sources, training=training, lr=job.lr, job=job)
    prepared = strategy.prepare(context, target_config)
    model = prepared.model
    training.lr = prepared.lr
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
        "method": prepared.method_name,
        "method_config": prepared.method_config,
        "model": backbone.fingerprint.name,
        "max_train_examples": job.max_train_examples,
        "task_prompt_length": job.task_prompt_length,
        **training.to_dict(),
        "job": job.record(
            target=task.name, strategy=job.strategy, sources=source_ids, top_k=job.top_k, route_top_k=job.route_top_k,
            sparsity_weight=job.sparsity_weight, method=strategy.recorded_method(job, prepared.method_name),
            gate_input=job.gate_input, zero_expert=job.zero_expert, head_init=job.head_init, gate_init=job.gate_init,
            source_prompt_scale=strategy.source_prompt_scale(job),
        ),
    }

    def finalize(trained: TaskModel) -> tuple[list[tuple[str, str, float | None]], dict]:
        extra: dict = {"strategy": job.strategy, "ranking": [r.to_dict() for r in ranking], "head_init": head_init}
        if gate_init is not None:
            extra["gate_init"] = gate_init
        lineage, own = prepared.finalize(trained)
        return lineage, {**extra, **own}

    run = TrainingRun(
        kind="transfer", task=task, splits=splits, backbone=backbone, model=model, method_name=prepared.method_name,
        method_config=prepared.method_config, training=training, hyperparams=hyperparams, name=name,
        name_is_base=name_is_base, auxiliary_weight=strategy.auxiliary_weight(job), finalize=finalize,
        preparation=prepared.preparation,
    )
    expert, _ = run_training(registry, run, job)
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
