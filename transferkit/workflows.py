"""The source-training job: task catalog + data -> backbone -> method -> training loop -> registry.

Everything a user can get wrong (task name, method options, data files, model) is checked before the run
row is written, so bad input leaves the registry untouched; a failure during training marks the run
`failed` and stores no expert. The run itself (checkpoints, resume, signals, the stored expert) is
`transferkit.training.run`; stored experts are read back with `transferkit.experts` and `transferkit.rebuild`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from transferkit.backbone import Backbone, load_backbone
from transferkit.experts import job_expert_name
from transferkit.job_options import JobOptions
from transferkit.methods import DEFAULT_METHOD, MethodConfig, get_method
from transferkit.modeling import TaskModel
from transferkit.registry import ExpertRecord, RegistryStore
from transferkit.task_prompt import TaskPrompt, description_prompt
from transferkit.task_registry import job_task
from transferkit.tasks import TaskSpec, load_splits
from transferkit.training.run import TrainingRun, run_training


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
    run = TrainingRun(
        kind="train-source", task=task, splits=splits, backbone=backbone, model=model, method_name=method.name,
        method_config=config.to_dict(), training=training, hyperparams=hyperparams, name=name, name_is_base=name_is_base,
    )
    expert, _ = run_training(registry, run, job)
    return expert
