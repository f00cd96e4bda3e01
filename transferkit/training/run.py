"""A training run in the registry: the loop inside a run row, checkpoints, resume, and the stored expert.

Everything a job resolved (task, data, backbone, model, method, settings) arrives as a `TrainingRun`, and
how the user asked it to run (command line, progress, resume, checkpoints) as `RunSettings`. Training
checkpoints go to `<registry checkpoint root>/<run id>/` every `checkpoint_every` steps and are deleted once
the expert is stored. With `resume=True` the job continues the most recent unfinished (failed, interrupted,
or running with its process gone) run with exactly the same recorded settings, data and backbone, from that
run's latest checkpoint; without one it starts a new run. SIGTERM, SIGINT and SIGUSR1 during a run stop it
after the current optimizer step with a checkpoint; the run is then `interrupted`, not failed.
"""

from __future__ import annotations

import json
import signal
import sys
from dataclasses import dataclass, field
from typing import Callable

from accelerate.utils import broadcast_object_list
from rich.console import Console

from transferkit.backbone import Backbone
from transferkit.errors import RegistryError, TrainingInterrupted, TransferkitError
from transferkit.experts import artifact_metadata
from transferkit.modeling import TaskModel
from transferkit.provenance import code_version, package_versions
from transferkit.registry import ExpertRecord, RegistryStore, RunRecord
from transferkit.task_registry import ensure_task_record
from transferkit.tasks import TaskSpec, TaskSplits
from transferkit.training.checkpoint import DEFAULT_CHECKPOINT_EVERY, Checkpointer, list_checkpoints
from transferkit.training.data import tokenize_examples
from transferkit.training.interrupt import ImmediateStop, how_to_resume, signal_name, stop_requests
from transferkit.training.loop import TrainingConfig, TrainResult, process_state, train


def tokenize_splits(splits: TaskSplits, backbone: Backbone, max_length: int):
    regression = splits.task.is_regression
    return tuple(
        tokenize_examples(examples, backbone.tokenizer, max_length, regression)
        for examples in (splits.train, splits.dev, splits.test)
    )


@dataclass(kw_only=True)
class RunSettings:
    """How a job runs, as the user asked (every job's options carry these: see `transferkit.job_options.JobOptions`)."""

    command: list[str] = field(default_factory=lambda: list(sys.argv))
    show_progress: bool = True
    resume: bool = False  # continue the latest unfinished run with the same settings
    checkpoint_every: int = DEFAULT_CHECKPOINT_EVERY  # steps between training checkpoints (0: none)
    # Edges (parent_id, role, weight) added to the new expert's lineage, e.g. `reproduce`'s link to the original.
    extra_lineage: list[tuple[str, str, float | None]] = field(default_factory=list)


@dataclass(kw_only=True)
class TrainingRun:
    """One model to train and store: what it is, how it trains, and how the expert is named and recorded."""

    kind: str  # the run's kind: "train-source", "transfer"
    task: TaskSpec
    splits: TaskSplits
    backbone: Backbone
    model: TaskModel
    method_name: str
    method_config: dict
    training: TrainingConfig
    hyperparams: dict
    name: str
    name_is_base: bool = False  # `name` is transferkit's default, made unique when the expert is stored
    auxiliary_weight: float = 0.0
    # Runs on the trained model before storing; returns its lineage edges and extra fields.
    finalize: Callable[[TaskModel], tuple[list[tuple[str, str, float | None]], dict]] | None = None
    # The measured cost of work done before training (a strategy's weight search or merge), added to the run's.
    preparation: dict | None = None


def run_training(registry: RegistryStore, spec: TrainingRun, settings: RunSettings) -> tuple[ExpertRecord, TrainResult]:
    """Run the loop inside a registry run and store the resulting expert (shared by train-source and transfer).

    Under `torchrun` / `accelerate launch` every process trains its share, and only the main process writes
    the registry (task, run, expert, artifact); the others return the record it stored.
    """
    state = process_state()
    model, task, splits, backbone, training = spec.model, spec.task, spec.splits, spec.backbone, spec.training
    command = settings.command
    try:  # whatever fails, the backbone is left as it was: it may be shared with later jobs in this process
        train_split, dev_split, test_split = tokenize_splits(splits, backbone, training.max_length)
        # Part of the settings --resume matches: the backbone's weights and the --name the user asked for.
        hyperparams = {**spec.hyperparams, "backbone_id": backbone.backbone_id, "requested_name": None if spec.name_is_base else spec.name}
        data_fingerprint = splits.to_dict()
        if state.is_main_process:
            ensure_task_record(registry, task, splits.train)
        # From the run's start to the stored expert, SIGTERM / SIGINT / SIGUSR1 stop the job after the current step
        # with a checkpoint and an `interrupted` run, instead of killing it (transferkit.training.interrupt).
        with stop_requests() as stop:
            run = None
            if state.is_main_process:
                run = _resume_run(registry, spec.kind, hyperparams, data_fingerprint, settings.show_progress) if settings.resume else None
                run = run or registry.start_run(
                    kind=spec.kind, command=command, hyperparams=hyperparams, seed=training.seed, code_version=code_version(),
                    package_versions=package_versions(), data_fingerprint=data_fingerprint,
                )
            run_id = run.id if run is not None else None
            if state.num_processes > 1:  # every process restores the same run's checkpoints; only the main one writes them
                [run_id] = broadcast_object_list([run_id], from_process=0)
            checkpointer = Checkpointer(registry.checkpoint_root / run_id, settings.checkpoint_every, on_save=lambda: _heartbeat(registry, run_id))
            try:
                result = train(
                    model, task, train_split, dev_split, test_split, training, backbone.tokenizer.pad_token_id, settings.show_progress,
                    auxiliary_weight=spec.auxiliary_weight, checkpointer=checkpointer, stop=stop,
                )
                statistics = model.expert.training_statistics()  # on every process: it may sum counts across them
                expert = None
                if run is not None:
                    lineage, extra = spec.finalize(model) if spec.finalize is not None else ([], {})
                    if statistics:  # e.g. MEPT's per-expert load counts
                        extra = {**extra, "method_statistics": statistics}
                    expert = _store_expert(registry, run, spec, result, test_split, [*lineage, *settings.extra_lineage], extra)
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
    registry: RegistryStore, run: RunRecord, spec: TrainingRun, result: TrainResult, test_split,
    lineage: list[tuple[str, str, float | None]], extra: dict,
) -> ExpertRecord:
    """Store the trained expert with its metrics, lineage and cost; this closes its run as finished."""
    model, task, backbone = spec.model, spec.task, spec.backbone
    tensors = model.export_tensors()
    metadata = artifact_metadata(spec.method_name, spec.method_config, backbone.backbone_id, task.name, task.num_labels)
    return registry.register_expert(
        run_id=run.id,
        name=spec.name,
        name_is_base=spec.name_is_base,
        task_name=task.name,
        method=spec.method_name,
        config=spec.method_config,
        backbone=backbone.fingerprint.to_dict(),
        backbone_id=backbone.backbone_id,
        trainable_params=sum(t.numel() for t in tensors.values()),
        metrics={**result.metrics, "primary": spec.splits.task.metrics[0], "eval_history": result.eval_history},
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
        cost=with_preparation({**result.cost, "best_step": result.best_step}, spec.preparation),
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
