"""End-to-end jobs: task catalog + data -> backbone -> method -> training loop -> registry.

Everything a user can get wrong (task name, method options, data files, model)
is checked before the run row is written, so bad input leaves the registry
untouched; a failure during training marks the run `failed` and stores no expert.

Training checkpoints go to `<registry checkpoint root>/<run id>/` every
`checkpoint_every` steps and are deleted once the expert is stored. With
`resume=True` a job continues the most recent unfinished (failed, interrupted,
or running with its process gone) run with exactly the same recorded settings,
data and backbone, from that run's latest checkpoint; without one it starts a
new run. SIGTERM, SIGINT and SIGUSR1 during a run stop it after the current
optimizer step with a checkpoint; the run is then `interrupted`, not failed.
"""

from __future__ import annotations

import json
import math
import signal
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from accelerate.utils import broadcast_object_list
from rich.console import Console

from transferkit.backbone import Backbone, load_backbone
from transferkit.errors import (
    ArtifactCorruptError,
    InvalidInputError,
    RegistryError,
    TrainingInterrupted,
    TransferkitError,
    require,
)
from transferkit.methods import DEFAULT_METHOD, ExpertModule, MethodConfig, get_method
from transferkit.modeling import EXPERT_PREFIX, HEAD_PREFIX, TASK_PROMPT_PREFIX, TaskModel
from transferkit.provenance import code_version, package_versions
from transferkit.registry import ExpertReader, ExpertRecord, RegistryStore, RunRecord
from transferkit.task_registry import ensure_task_record, job_task
from transferkit.tasks import TaskSpec, TaskSplits, load_splits
from transferkit.task_prompt import DEFAULT_TASK_PROMPT_LENGTH, TaskPrompt, description_prompt
from transferkit.training.checkpoint import DEFAULT_CHECKPOINT_EVERY, Checkpointer, list_checkpoints
from transferkit.training.data import tokenize_examples
from transferkit.training.interrupt import ImmediateStop, how_to_resume, signal_name, stop_requests
from transferkit.training.loop import TrainingConfig, TrainResult, process_state, train

ARTIFACT_FORMAT = "transferkit.expert/1"
MAX_TASK_PROMPT_LENGTH = 512


@dataclass(kw_only=True)
class JobOptions:
    """Options shared by every training job (`train-source`, `transfer`), as given by the user."""

    method_options: list[str] = field(default_factory=list)
    model: str | None = None
    data_dir: Path | None = None
    task_file: Path | None = None  # a custom task spec: checked, then registered with the job's expert
    name: str | None = None
    lr: float | None = None
    training: TrainingConfig = field(default_factory=TrainingConfig)
    max_train_examples: int | None = None
    task_prompt_length: int = DEFAULT_TASK_PROMPT_LENGTH
    show_progress: bool = True
    command: list[str] = field(default_factory=lambda: list(sys.argv))
    resume: bool = False  # continue the latest unfinished run with the same settings
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY  # steps between training checkpoints (0: none)
    # Edges (parent_id, role, weight) added to the new expert's lineage, e.g. `reproduce`'s link to the original.
    extra_lineage: list[tuple[str, str, float | None]] = field(default_factory=list)

    def validate(self) -> None:
        """Refuse out-of-range options before any work is done (the training settings included)."""
        self.training.validate()
        require([
            (self.lr is None or (math.isfinite(self.lr) and self.lr > 0), f"--lr must be a positive number, got {self.lr}"),
            (self.max_train_examples is None or self.max_train_examples >= 1,
             f"--max-train-examples must be at least 1, got {self.max_train_examples}"),
            (0 <= self.task_prompt_length <= MAX_TASK_PROMPT_LENGTH,
             f"--task-prompt-length must be between 0 and {MAX_TASK_PROMPT_LENGTH}, got {self.task_prompt_length}"),
            (self.checkpoint_every >= 0, f"--checkpoint-every must be at least 0 (0: no checkpoints), got {self.checkpoint_every}"),
        ])

    def record(self, **resolved: object) -> dict:
        """The user-facing options as JSON, plus the job-specific ones as resolved (task name, source ids, ...).

        Stored as the run's hyperparams["job"]; the keys are this dataclass's field names, so
        `transferkit reproduce` rebuilds the job from it without re-parsing the command line.
        """
        return {
            "method_options": list(self.method_options),
            "model": self.model,
            "lr": self.lr,
            "training": self.training.to_dict(),
            "max_train_examples": self.max_train_examples,
            "task_prompt_length": self.task_prompt_length,
            **resolved,
        }


@dataclass(kw_only=True)
class SourceJob(JobOptions):
    """A `train-source` job."""

    task: str | None
    method: str = DEFAULT_METHOD


def build_task_model(
    task: TaskSpec, method_name: str, config: MethodConfig, backbone: Backbone, precision: str, task_prompt_length: int
) -> TaskModel:
    expert = get_method(method_name).build(config, backbone)
    prompt = TaskPrompt(description_prompt(task.description, backbone, task_prompt_length)) if task_prompt_length else None
    return TaskModel(backbone, expert, task.num_labels, precision=precision, task_prompt=prompt)


def tokenize_splits(splits: TaskSplits, backbone: Backbone, max_length: int):
    regression = splits.task.is_regression
    return tuple(
        tokenize_examples(examples, backbone.tokenizer, max_length, regression)
        for examples in (splits.train, splits.dev, splits.test)
    )


def run_training(
    registry: RegistryStore,
    *,
    kind: str,
    task: TaskSpec,
    splits: TaskSplits,
    backbone: Backbone,
    model: TaskModel,
    method_name: str,
    method_config: dict,
    training: TrainingConfig,
    name: str,
    command: list[str],
    show_progress: bool,
    hyperparams: dict,
    extra_lineage: list[tuple[str, str, float | None]] | None = None,
    auxiliary_weight: float = 0.0,
    finalize: Callable[[TaskModel], tuple[list[tuple[str, str, float | None]], dict]] | None = None,
    name_is_base: bool = False,
    resume: bool = False,
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY,
    preparation: dict | None = None,
) -> tuple[ExpertRecord, TrainResult]:
    """Run the loop inside a registry run and store the resulting expert (shared by train-source and transfer).

    `finalize` runs on the trained model before storing and returns its lineage edges and extra fields.
    Under `torchrun` / `accelerate launch` every process trains its share, and only the main process writes
    the registry (task, run, expert, artifact); the others return the record it stored.
    `name_is_base`: `name` is transferkit's default, made unique when the expert is stored.
    `preparation`: the measured cost of work done before training (a strategy's weight search or merge), added to the run's.
    """
    state = process_state()
    try:  # whatever fails, the backbone is left as it was: it may be shared with later jobs in this process
        train_split, dev_split, test_split = tokenize_splits(splits, backbone, training.max_length)
        # Part of the settings --resume matches: the backbone's weights and the --name the user asked for.
        hyperparams = {**hyperparams, "backbone_id": backbone.backbone_id, "requested_name": None if name_is_base else name}
        data_fingerprint = splits.to_dict()
        if state.is_main_process:
            ensure_task_record(registry, task, splits.train)
        # From the run's start to the stored expert, SIGTERM / SIGINT / SIGUSR1 stop the job after the current step
        # with a checkpoint and an `interrupted` run, instead of killing it (transferkit.training.interrupt).
        with stop_requests() as stop:
            run = None
            if state.is_main_process:
                run = _resume_run(registry, kind, hyperparams, data_fingerprint, show_progress) if resume else None
                run = run or registry.start_run(
                    kind=kind, command=command, hyperparams=hyperparams, seed=training.seed, code_version=code_version(),
                    package_versions=package_versions(), data_fingerprint=data_fingerprint,
                )
            run_id = run.id if run is not None else None
            if state.num_processes > 1:  # every process restores the same run's checkpoints; only the main one writes them
                [run_id] = broadcast_object_list([run_id], from_process=0)
            checkpointer = Checkpointer(registry.checkpoint_root / run_id, checkpoint_every, on_save=lambda: _heartbeat(registry, run_id))
            try:
                result = train(
                    model, task, train_split, dev_split, test_split, training, backbone.tokenizer.pad_token_id, show_progress,
                    auxiliary_weight=auxiliary_weight, checkpointer=checkpointer, stop=stop,
                )
                statistics = model.expert.training_statistics()  # on every process: it may sum counts across them
                expert = None
                if run is not None:
                    lineage, extra = finalize(model) if finalize is not None else ([], {})
                    if statistics:  # e.g. MEPT's per-expert load counts
                        extra = {**extra, "method_statistics": statistics}
                    expert = _store_expert(
                        registry, run, model, result, name=name, name_is_base=name_is_base, task=task, splits=splits,
                        test_split=test_split, backbone=backbone, method_name=method_name, method_config=method_config,
                        lineage=[*lineage, *(extra_lineage or [])], extra=extra, preparation=preparation,
                    )
                if state.num_processes > 1:  # the others wait for the main process's expert and read it back
                    [expert_id] = broadcast_object_list([expert.id if expert is not None else None], from_process=0)
                    expert = expert or registry.get_expert(expert_id)
            except (TrainingInterrupted, ImmediateStop, KeyboardInterrupt) as error:
                interrupted = _interruption(error, checkpointer, command)
                _close_run(registry, run, "interrupted", interrupted, str(interrupted))
                if isinstance(error, TrainingInterrupted) and state.num_processes > 1:
                    # All stopped at this step; the others must not exit first, or torchrun would SIGTERM this process
                    # mid-write. (After a second signal nobody waits: the others may be stuck in a collective.)
                    state.wait_for_everyone()
                raise interrupted from None
            except BaseException as error:  # the run must not stay "running"
                _close_run(registry, run, "failed", error, f"{type(error).__name__}: {error}")
                raise
    finally:
        model.detach()
    if state.is_main_process:
        checkpointer.remove()  # the expert is stored: nothing left to resume
    return expert, result


def _interruption(error: BaseException, checkpointer: Checkpointer, command: list[str]) -> TrainingInterrupted:
    """How the job was stopped, with how to resume it: at a step boundary, or at once by a second signal
    (ImmediateStop) or a KeyboardInterrupt where no handler could be installed."""
    if isinstance(error, TrainingInterrupted):
        return error.resumed_by(how_to_resume(command))
    kept = checkpointer.last_saved_step
    saved = f"its checkpoint at step {kept} is kept" if kept is not None else "no checkpoint was written"
    if isinstance(error, ImmediateStop):
        return TrainingInterrupted(f"stopped at once on a second {signal_name(error.signal_number)}; {saved}",
                                   error.signal_number, how_to_resume(command))
    return TrainingInterrupted(f"stopped at once by Ctrl-C; {saved}", signal.SIGINT, how_to_resume(command))


def _store_expert(
    registry: RegistryStore, run: RunRecord, model: TaskModel, result: TrainResult, *, name: str, name_is_base: bool,
    task: TaskSpec, splits: TaskSplits, test_split, backbone: Backbone, method_name: str, method_config: dict,
    lineage: list[tuple[str, str, float | None]], extra: dict, preparation: dict | None = None,
) -> ExpertRecord:
    """Store the trained expert with its metrics, lineage and cost; this closes its run as finished."""
    tensors = model.export_tensors()
    metadata = artifact_metadata(method_name, method_config, backbone.backbone_id, task.name, task.num_labels)
    return registry.register_expert(
        run_id=run.id,
        name=name,
        name_is_base=name_is_base,
        task_name=task.name,
        method=method_name,
        config=method_config,
        backbone=backbone.fingerprint.to_dict(),
        backbone_id=backbone.backbone_id,
        trainable_params=sum(t.numel() for t in tensors.values()),
        metrics={**result.metrics, "primary": splits.task.metrics[0], "eval_history": result.eval_history},
        tensors=tensors,
        tensor_metadata=metadata,
        lineage=lineage,
        extra={
            "label_names": list(task.label_names) if task.label_names else None,
            "loss_history": result.loss_history,
            "steps": result.steps,
            "best_step": result.best_step,
            "schedule": result.schedule,
            "stop_reason": result.stop_reason,
            "test_outputs": test_outputs(result.test_predictions, test_split),
            "task_prompt_length": model.task_prompt.length if model.task_prompt is not None else 0,
            **extra,
        },
        cost=with_preparation({**result.cost, "best_step": result.best_step}, preparation),
    )


def with_preparation(cost: dict, preparation: dict | None) -> dict:
    """The run's cost including work done before training: its wall and device seconds and FLOPs are added to the
    run's, and the preparation itself is kept under `preparation` (so training alone stays readable)."""
    if not preparation:
        return cost
    total = {**cost, "preparation": preparation}
    for key, added in (("wall_seconds", "wall_seconds"), ("device_seconds", "device_seconds"), ("train_flops", "flops")):
        if isinstance(cost.get(key), (int, float)) and isinstance(preparation.get(added), (int, float)):
            total[key] = round(cost[key] + preparation[added], 3) if key != "train_flops" else float(cost[key] + preparation[added])
    return total


def _close_run(registry: RegistryStore, run: RunRecord | None, status: str, error: BaseException, reason: str) -> None:
    """Record how the run ended. If the registry cannot take even that (locked, read-only, full), say so in the
    error the user sees: the run then stays `running`, and `--resume` or `gc` find it once this process is gone."""
    if run is None:
        return
    try:
        registry.finish_run(run.id, status=status, cost={}, error=reason[:500])
    except RegistryError as unrecorded:
        note = f"; run {run.id} could not be marked {status} ({unrecorded})"
        if isinstance(error, TrainingInterrupted):
            raise TrainingInterrupted(error.what + note, error.signal_number, error.how_to_resume) from None
        if isinstance(error, TransferkitError):
            raise RegistryError(f"{error}{note}") from error
        # Anything else is a bug: the caller re-raises it with its traceback.


def test_outputs(predictions: list, split) -> dict:
    """Every test example's prediction and label, so `compare` can bootstrap intervals without the data."""
    outputs = {"predictions": predictions, "labels": split.labels.tolist()}
    if any(group is not None for group in split.groups):
        outputs["groups"] = list(split.groups)
    return outputs


def artifact_metadata(method: str, config: dict, backbone_id: str, task_name: str, num_outputs: int) -> dict[str, str]:
    """The safetensors metadata of a stored expert: enough to tell what the blob is without the database."""
    return {
        "format": ARTIFACT_FORMAT,
        "method": method,
        "config": json.dumps(config, sort_keys=True),
        "backbone_id": backbone_id,
        "task": task_name,
        "num_outputs": str(num_outputs),
    }


def _resume_run(registry: RegistryStore, kind: str, hyperparams: dict, data_fingerprint: dict, show_progress: bool) -> RunRecord | None:
    """Reopen the latest unfinished run with these exact settings, data and backbone; None if there is none."""
    notice = Console(stderr=True, quiet=not show_progress)
    wanted = _canonical(hyperparams)
    for run in registry.list_runs(kind=kind, statuses=("running", "failed", "interrupted")):
        if _canonical(run.hyperparams) == wanted and run.data_fingerprint.get("fingerprint") == data_fingerprint["fingerprint"]:
            reopened = registry.reopen_run(run.id)  # refuses a run whose process may still be alive
            checkpoints = list_checkpoints(registry.checkpoint_root / run.id)
            where = f"from its checkpoint at step {checkpoints[-1].step}" if checkpoints else "from the start (it left no checkpoint)"
            notice.print(f"resuming run {run.id} ({run.status} since {run.started_at:%Y-%m-%d %H:%M} UTC) {where}", highlight=False)
            return reopened
    notice.print("no unfinished run with these settings to resume; starting a new run", highlight=False)
    return None


def _canonical(value: object) -> str:
    return json.dumps(value, sort_keys=True, default=str)


def _heartbeat(registry: RegistryStore, run_id: str) -> None:
    """Refresh the run's heartbeat; a busy registry must not stop a training that is going well."""
    try:
        registry.heartbeat(run_id)
    except RegistryError as error:
        Console(stderr=True).print(f"warning: could not record a heartbeat for run {run_id} ({error})", markup=False, highlight=False)


def train_source(registry: RegistryStore, job: SourceJob) -> ExpertRecord:
    """Train one source expert for a catalog or custom task and store it."""
    job.validate()
    task = job_task(registry, job.task, job.task_file, job.data_dir)
    method = get_method(job.method)
    config = method.config_class.from_options(job.method_options)
    training = job.training
    training.lr = job.lr if job.lr is not None else config.recommended_lr
    training.validate()
    splits = load_splits(task, job.data_dir, seed=training.seed, max_train_examples=job.max_train_examples)
    backbone = load_backbone(job.model, precision=training.precision)
    name, name_is_base = job_expert_name(registry, job.name, f"{task.short_name}-{method.name}")
    torch.manual_seed(training.seed)
    model = build_task_model(task, method.name, config, backbone, training.precision, job.task_prompt_length)
    hyperparams = {
        "task": task.name,
        "method": method.name,
        "method_config": config.to_dict(),
        "model": backbone.fingerprint.name,
        "max_train_examples": job.max_train_examples,
        "task_prompt_length": job.task_prompt_length,
        **training.to_dict(),
        "job": job.record(task=task.name, method=method.name),
    }
    expert, _ = run_training(
        registry,
        kind="train-source",
        task=task,
        splits=splits,
        backbone=backbone,
        model=model,
        method_name=method.name,
        method_config=config.to_dict(),
        training=training,
        name=name,
        command=job.command,
        show_progress=job.show_progress,
        hyperparams=hyperparams,
        extra_lineage=job.extra_lineage,
        name_is_base=name_is_base,
        resume=job.resume,
        checkpoint_every=job.checkpoint_every,
    )
    return expert


def job_expert_name(registry: RegistryStore, requested: str | None, default_base: str) -> tuple[str, bool]:
    """(name, is_base): the user's `--name` if it is free (else a one-line error), or the default base,
    which is made unique when the expert is stored (concurrent jobs would otherwise pick the same name)."""
    if requested is None:
        return default_base, True
    return expert_name(registry, requested, default_base), False


def expert_name(registry: RegistryStore, requested: str | None, default_base: str) -> str:
    """The user's `--name` if it is free (else a one-line error), or a unique name from `default_base`."""
    if requested is None:
        return registry.unique_expert_name(default_base)
    if registry.unique_expert_name(requested) != requested:
        raise InvalidInputError(f"an expert named {requested!r} already exists; choose another --name")
    return requested


def read_expert(registry: ExpertReader, expert: ExpertRecord, backbone: Backbone) -> dict[str, torch.Tensor]:
    """The expert's verified tensors, after checking it belongs to `backbone`."""
    backbone.require_compatible(expert.backbone_id, f"expert {expert.name}")
    tensors, metadata = registry.load_expert_tensors(expert)
    if metadata.get("format") != ARTIFACT_FORMAT:
        raise ArtifactCorruptError(f"expert {expert.name}'s artifact is not a transferkit expert (format {metadata.get('format')!r})")
    return tensors


@dataclass
class SourceParts:
    """What a stored expert lends to a new one: its method module (not attached), task prompt and head."""

    module: ExpertModule
    prompt: torch.Tensor | None
    head: tuple[torch.Tensor, torch.Tensor] | None  # (weight (C, d), bias (C,)); None if it was imported without one


def load_source_parts(registry: ExpertReader, expert: ExpertRecord, backbone: Backbone) -> SourceParts:
    """A stored expert's parts, read and verified once."""
    tensors = read_expert(registry, expert, backbone)
    method = get_method(expert.method)
    module = method.build(method.config_class.from_dict(expert.config), backbone)
    module.import_tensors({k[len(EXPERT_PREFIX):]: v for k, v in tensors.items() if k.startswith(EXPERT_PREFIX)})
    weight, bias = tensors.get(HEAD_PREFIX + "linear.weight"), tensors.get(HEAD_PREFIX + "linear.bias")
    return SourceParts(module, tensors.get(TASK_PROMPT_PREFIX + "embedding"), (weight, bias) if weight is not None and bias is not None else None)


def load_method_expert(registry: ExpertReader, expert: ExpertRecord, backbone: Backbone) -> tuple[ExpertModule, torch.Tensor | None]:
    """A stored expert's method module (not attached) and its task-description prompt, if it has one."""
    parts = load_source_parts(registry, expert, backbone)
    return parts.module, parts.prompt


def load_expert_model(registry: ExpertReader, expert: ExpertRecord, backbone: Backbone) -> TaskModel:
    """Rebuild a stored expert on `backbone` (verifies artifact digests and backbone bindings, sources included)."""
    from transferkit.composition.merge import MERGED_METHOD, build_merged
    from transferkit.composition.strategies import STORED
    from transferkit.composition.transfer import COMPOSED_METHODS, build_stored_composition

    tensors = read_expert(registry, expert, backbone)
    if HEAD_PREFIX + "linear.bias" not in tensors:
        raise InvalidInputError(
            f"expert {expert.name} has no task head (it was imported without one), so it cannot predict by itself; "
            "use it as a transfer source (--sources) or for spot initialisation"
        )
    num_outputs = tensors[HEAD_PREFIX + "linear.bias"].shape[0]
    prompt_tensor = tensors.get(TASK_PROMPT_PREFIX + "embedding")
    prompt = TaskPrompt(prompt_tensor) if prompt_tensor is not None else None
    if expert.method in COMPOSED_METHODS:
        model = build_stored_composition(registry, expert, backbone, num_outputs, prompt)
    elif expert.method == MERGED_METHOD:
        model = build_merged(expert.config, backbone, num_outputs, prompt)
    elif expert.method in STORED:
        model = STORED[expert.method].rebuild(registry, expert, backbone, num_outputs, prompt)
    else:
        method = get_method(expert.method)
        config = method.config_class.from_dict(expert.config)
        model = TaskModel(backbone, method.build(config, backbone), num_outputs, task_prompt=prompt)
    model.import_tensors(tensors)
    return model
