"""Scoring a stored expert on a task's split or on a labelled file, and keeping the result in the registry.

The target is a catalog task, a custom task of the registry, or a labelled CSV/TSV/JSONL/Parquet file read
with the expert's own task (its input columns and a `label` column holding label names, indices or scores).
A task's split follows the usual protocol (`transferkit.tasks.splits`) with the expert's training seed unless
another is given, so an expert is scored on the test half it never selected on.

Another task's labels must be the expert's labels under some names: the same set of names (matched
case-insensitively, in any order), or an explicit `label_map` from each expert label to a task label (several
expert labels may map to one). Regression experts score regression tasks only. Anything else is refused
with the two label sets named.

Predictions come from `ExpertModel.logits`, the path `predict` uses, so the two agree on the same rows.
The official metrics and a 95% interval of the primary one (bootstrap over the examples: one model, so a
single-seed interval, `transferkit.tasks.intervals`) are stored as an evaluation record on the expert, with the
data fingerprint (the split's sha256, or the file's and its examples').
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from transferkit.errors import InvalidInputError
from transferkit.inference import DEFAULT_BATCH_SIZE, ExpertInputs, ExpertModel, file_rows
from transferkit.registry import EvaluationRecord, RegistryStore
from transferkit.task_registry import resolve_registered_task
from transferkit.tasks import Example, TaskSpec, compute_metrics, load_splits, primary_metric
from transferkit.tasks.intervals import metric_interval
from transferkit.tasks.labels import parse_label

EVALUATION_SPLITS = ("dev", "test")
DEFAULT_SEED = 42
FILE_PREFIX = "file:"


@dataclass(kw_only=True)
class EvaluationJob:
    """What to score: `task` (name, with `split`) or `data_file` (a labelled file), with the options of `evaluate`."""

    task: str | None = None
    data_file: Path | None = None
    split: str = "test"
    label_map: dict[str, str] = field(default_factory=dict)  # expert label -> task label
    seed: int | None = None  # default: the expert's training seed
    data_dir: Path | None = None
    batch_size: int = DEFAULT_BATCH_SIZE
    columns: dict[str, str] = field(default_factory=dict)  # labelled file: input field -> column
    label_column: str = "label"
    show_progress: bool = False
    command: list[str] = field(default_factory=lambda: list(sys.argv))


def parse_label_map(text: str | None) -> dict[str, str]:
    """`a=b,c=d` -> {"a": "b", "c": "d"}."""
    mapping: dict[str, str] = {}
    for part in (text or "").split(","):
        if not part.strip():
            continue
        source, sep, target = (piece.strip() for piece in part.partition("="))
        if not sep or not source or not target or source in mapping:
            raise InvalidInputError(f"--label-map must be expert_label=task_label pairs separated by commas, got {part.strip()!r}")
        mapping[source] = target
    return mapping


def label_mapping(inputs: ExpertInputs, task: TaskSpec, explicit: dict[str, str]) -> np.ndarray | None:
    """Task label index for each expert label index (None: regression), or a one-line refusal."""
    if len(inputs.input_fields) != len(task.input_fields):
        raise InvalidInputError(
            f"expert for {inputs.task_name} reads {len(inputs.input_fields)} text(s) ({inputs.describe()}) but {task.name} "
            f"gives {len(task.input_fields)} ({', '.join(task.input_fields)}); they cannot be scored together"
        )
    if inputs.is_regression or task.is_regression:
        if inputs.is_regression and task.is_regression and not explicit:
            return None
        raise InvalidInputError(
            f"expert for {inputs.task_name} predicts {_labels(inputs.label_names)} but {task.name} needs {_labels(task.label_names)}; "
            "a score and classes cannot be mapped onto each other"
        )
    ours, theirs = list(inputs.label_names or ()), list(task.label_names or ())
    index = {name.lower(): i for i, name in enumerate(theirs)}
    if explicit:
        unknown = [s for s in explicit if s not in ours] + [t for t in explicit.values() if t.lower() not in index]
        missing = [name for name in ours if name not in explicit]
        if unknown or missing:
            problem = f"names unknown label {unknown[0]!r}" if unknown else f"does not map the expert's label {missing[0]!r}"
            raise InvalidInputError(
                f"--label-map {problem}; map every expert label ({', '.join(ours)}) to a {task.name} label ({', '.join(theirs)})"
            )
        return np.array([index[explicit[name].lower()] for name in ours])
    if sorted(n.lower() for n in ours) != sorted(index):
        raise InvalidInputError(
            f"expert for {inputs.task_name} predicts {_labels(inputs.label_names)} but {task.name} has {_labels(task.label_names)}; "
            "pass --label-map expert_label=task_label,... if they correspond"
        )
    return np.array([index[name.lower()] for name in ours])


def _labels(names: tuple[str, ...] | None) -> str:
    return "a score (regression)" if names is None else "{" + ", ".join(names) + "}"


@dataclass(frozen=True)
class ScoredData:
    """The examples an evaluation read and what identifies them."""

    task: TaskSpec
    task_name: str  # as stored: the task's name, or file:<name>
    split: str
    examples: list[Example]
    fingerprint: dict
    seed: int | None


def task_data(registry: RegistryStore, predictor: ExpertModel, job: EvaluationJob) -> ScoredData:
    """The examples of `job.task`'s split or of `job.data_file`, checked."""
    if (job.task is None) == (job.data_file is None):
        raise InvalidInputError("give a task (--task NAME) or a labelled file (--task path/to/file.csv), not both and not neither")
    if job.data_file is not None:
        if job.label_map:
            raise InvalidInputError("a labelled file is read with the expert's own labels; --label-map applies to a --task")
        task = resolve_registered_task(registry, predictor.inputs.task_name)
        examples = [
            Example(texts, parse_label(task, label, where))
            for where, texts, label in file_rows(job.data_file, predictor.inputs, job.columns, job.label_column)
        ]
        digest = hashlib.sha256(job.data_file.read_bytes()).hexdigest()
        canonical = json.dumps([[list(e.texts), e.label] for e in examples], sort_keys=True, separators=(",", ":"))
        fingerprint = {"file": job.data_file.name, "path": str(job.data_file.resolve()), "sha256": digest, "rows": len(examples),
                       "fingerprint": hashlib.sha256(canonical.encode()).hexdigest()}
        return ScoredData(task, FILE_PREFIX + job.data_file.name, "file", examples, fingerprint, None)
    if job.split not in EVALUATION_SPLITS:
        raise InvalidInputError(f"--split must be dev or test, got {job.split!r}")
    if job.columns:
        raise InvalidInputError("--column maps a labelled file's columns; a task's examples need none")
    task = resolve_registered_task(registry, job.task)
    label_mapping(predictor.inputs, task, job.label_map)  # refuse incompatible labels before reading any data
    seed = job.seed if job.seed is not None else (registry.get_run(predictor.expert.run_id).seed or DEFAULT_SEED)
    splits = load_splits(task, job.data_dir, seed=seed)
    fingerprint = {**splits.to_dict(), "split": job.split, "split_fingerprint": splits.split_fingerprints[job.split]}
    return ScoredData(task, task.name, job.split, list(getattr(splits, job.split)), fingerprint, seed)


def evaluate_expert(registry: RegistryStore, predictor: ExpertModel, job: EvaluationJob) -> EvaluationRecord:
    """Score the loaded expert as `job` says and store the evaluation on it."""
    data = task_data(registry, predictor, job)
    mapping = label_mapping(predictor.inputs, data.task, job.label_map)
    if not data.examples:
        raise InvalidInputError(f"{data.task_name} has no {data.split} examples to score")
    outputs = predictor.logits(data.examples, job.batch_size, job.show_progress)
    predictions = outputs[:, 0].astype(np.float64) if mapping is None else mapping[outputs.argmax(-1)]
    labels = [e.label for e in data.examples]
    groups = [e.group for e in data.examples]
    has_groups = any(g is not None for g in groups)
    metrics = compute_metrics(data.task, predictions.tolist(), labels, groups if has_groups else None)
    primary = primary_metric(data.task)
    cell = {"predictions": predictions.tolist(), "labels": labels, **({"groups": groups} if has_groups else {})}
    interval = metric_interval([cell], data.task, primary).to_dict()
    details = {
        "seed": data.seed,
        "label_map": dict(zip(predictor.inputs.label_names, (data.task.label_names[i] for i in mapping)))
        if mapping is not None else None,
        "precision": predictor.model.precision,
        "max_length": predictor.max_length,
        "interval": "95% bootstrap over the examples (one model: a single-seed interval)",
        "command": list(job.command),
    }
    return registry.add_evaluation(
        expert_id=predictor.expert.id, task_name=data.task_name, split=data.split, metric=primary,
        metrics={k: round(float(v), 6) for k, v in metrics.items()}, interval=interval, examples=len(data.examples),
        data_fingerprint=data.fingerprint, details=details,
    )
