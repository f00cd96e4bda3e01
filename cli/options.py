"""Option groups the commands share, declared once: a command puts a placeholder parameter where the group's
options belong (`training: TrainingOptions`), and `@with_options(training=TRAINING)` splices the group's
options into its signature at that place (so `--help` lists them in order) and hands the command their
values as one namespace under the placeholder's name.
"""

from __future__ import annotations

import functools
import inspect
import sys
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Callable

import typer

from transferkit.cli.common import (
    ArtifactsOption,
    BatchSizeOption,
    CheckpointEveryOption,
    DataDirOption,
    EpochsOption,
    EvalEveryOption,
    GlobalOptions,
    HeadLrOption,
    JsonOption,
    LrOption,
    MaxLengthOption,
    MaxStepsOption,
    MaxTrainOption,
    ModelOption,
    PatienceOption,
    PrecisionOption,
    PromptLrOption,
    QuietOption,
    RegistryOption,
    ResumeOption,
    SeedOption,
    TaskPromptOption,
    check_data_dir,
    global_options,
)
from transferkit.training.checkpoint import DEFAULT_CHECKPOINT_EVERY

# The placeholders' annotation: the values of a group's options, by option name.
TrainingOptions = RunOptions = StoreOptions = OutputOptions = SimpleNamespace


@dataclass(frozen=True)
class OptionGroup:
    """Options that travel together: (parameter name, annotated type, default), in `--help` order."""

    options: tuple[tuple[str, Any, Any], ...]

    def with_option(self, name: str, annotation: Any, default: Any, *, after: str) -> OptionGroup:
        """The group with one more option, placed after `after`."""
        at = [option[0] for option in self.options].index(after) + 1
        return OptionGroup((*self.options[:at], (name, annotation, default), *self.options[at:]))


# How a training job trains (train-source, transfer).
TRAINING = OptionGroup((
    ("model", ModelOption, None),
    ("max_steps", MaxStepsOption, None),
    ("epochs", EpochsOption, None),
    ("patience", PatienceOption, None),
    ("batch_size", BatchSizeOption, 32),
    ("lr", LrOption, None),
    ("head_lr", HeadLrOption, 1e-2),
    ("max_length", MaxLengthOption, 128),
    ("seed", SeedOption, 42),
    ("eval_every", EvalEveryOption, None),
    ("precision", PrecisionOption, "fp32"),
    ("max_train_examples", MaxTrainOption, None),
    ("task_prompt_length", TaskPromptOption, 8),
))
# A transfer also sets the rate of its gates and task prompt.
TRANSFER_TRAINING = TRAINING.with_option("prompt_lr", PromptLrOption, 2e-3, after="head_lr")
# Resuming and checkpoints of a training run.
RUN = OptionGroup((("resume", ResumeOption, False), ("checkpoint_every", CheckpointEveryOption, DEFAULT_CHECKPOINT_EVERY)))
# Where the registry, the data and the artifacts are (each also accepted before the command).
STORE = OptionGroup((("registry", RegistryOption, None), ("data_dir", DataDirOption, None), ("artifacts", ArtifactsOption, None)))
# What the command prints.
OUTPUT = OptionGroup((("as_json", JsonOption, False), ("quiet", QuietOption, False)))


def with_options(**groups: OptionGroup) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Replace each parameter named like a keyword by that group's options (see the module docstring)."""

    def decorate(func: Callable[..., Any]) -> Callable[..., Any]:
        signature = inspect.signature(func, eval_str=True)
        parameters = []
        for parameter in signature.parameters.values():
            group = groups.get(parameter.name)
            if group is None:
                parameters.append(parameter)
                continue
            parameters += [inspect.Parameter(name, parameter.kind, default=default, annotation=annotation)
                           for name, annotation, default in group.options]

        @functools.wraps(func)
        def command(**values: Any) -> Any:
            for key, group in groups.items():
                values[key] = SimpleNamespace(**{name: values.pop(name) for name, _, _ in group.options})
            return func(**values)

        command.__signature__ = signature.replace(parameters=parameters)  # type: ignore[attr-defined]
        command.__annotations__ = {p.name: p.annotation for p in parameters}
        return command

    return decorate


def store_options(ctx: typer.Context, store: StoreOptions) -> GlobalOptions:
    """The registry, data and artifact locations (command-level options win), the data dir checked."""
    options = global_options(ctx, store.registry, store.data_dir, store.artifacts)
    check_data_dir(options.data_dir)
    return options


def training_config(training: TrainingOptions):
    """The training settings the user gave (a transfer's include its prompt learning rate)."""
    from transferkit.training.loop import TrainingConfig

    extra = {"prompt_lr": training.prompt_lr} if hasattr(training, "prompt_lr") else {}
    return TrainingConfig(
        max_steps=training.max_steps, epochs=training.epochs, patience=training.patience, batch_size=training.batch_size,
        head_lr=training.head_lr, max_length=training.max_length, seed=training.seed, eval_every=training.eval_every,
        precision=training.precision, **extra,  # type: ignore[arg-type]
    )


def job_options(training: TrainingOptions, run: RunOptions, output: OutputOptions, options: GlobalOptions) -> dict:
    """The `JobOptions` fields every training command sets the same way."""
    return dict(
        model=training.model, data_dir=options.data_dir, lr=training.lr, training=training_config(training),
        max_train_examples=training.max_train_examples, task_prompt_length=training.task_prompt_length,
        show_progress=not output.quiet, command=["transferkit", *sys.argv[1:]], resume=run.resume,
        checkpoint_every=run.checkpoint_every,
    )
