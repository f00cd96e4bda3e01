"""The options every training job (`train-source`, `transfer`) takes from the user, checked before any work."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from transferkit.errors import require
from transferkit.task_prompt import DEFAULT_TASK_PROMPT_LENGTH
from transferkit.training.loop import TrainingConfig
from transferkit.training.run import RunSettings

MAX_TASK_PROMPT_LENGTH = 512


@dataclass(kw_only=True)
class JobOptions(RunSettings):
    """Options shared by every training job (`train-source`, `transfer`), as given by the user.

    The inherited `RunSettings` (command, progress, resume, checkpoints, extra lineage) say how the run goes.
    """

    method_options: list[str] = field(default_factory=list)
    model: str | None = None
    data_dir: Path | None = None
    task_file: Path | None = None  # a custom task spec: checked, then registered with the job's expert
    name: str | None = None
    lr: float | None = None
    training: TrainingConfig = field(default_factory=TrainingConfig)
    max_train_examples: int | None = None
    task_prompt_length: int = DEFAULT_TASK_PROMPT_LENGTH

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
