"""How long to train: a schedule chosen from the training-set size, with early stopping on dev.

Without `--max-steps` / `--epochs` a run gets the *adaptive* schedule: up to
`AUTO_EPOCHS` passes over a small training set (Mosbach et al. 2021 and Zhang et
al. 2021 find RTE/CB-sized sets need about 20 epochs with warm-up; most apparent
instability is under-training), but never more than `AUTO_EXAMPLE_BUDGET` training
examples nor `AUTO_TOKEN_BUDGET` training tokens, so a large set gets a bounded
number of steps and a set of long inputs (RTE's pairs average ~70 tokens, SST-2's
sentences ~13) a bounded amount of compute: a step costs about in proportion to its
tokens. The dev metric is measured
about `AUTO_EVALUATIONS` times over that budget (at least once per epoch, and never more
often than once per dev set's worth of training examples, so evaluation, a forward pass
only, stays a fraction of the training time), and training stops once it has not
improved for `AUTO_PATIENCE` evaluations in a row, once at least half of the budget
is trained (`AUTO_MIN_FRACTION`); the loop then restores the best parameters. An improvement is a higher dev metric, or the same metric at a lower dev
loss (on a 28-example dev set many evaluations tie on accuracy).

Explicit `--max-steps` or `--epochs` win and train exactly that long, unless
`--patience` is given too; `--patience 0` turns early stopping off for the adaptive
schedule. The chosen schedule and why the run stopped are recorded on the expert.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

AUTO_EPOCHS = 20
AUTO_EXAMPLE_BUDGET = 32_000
AUTO_TOKEN_BUDGET = 800_000
AUTO_EVALUATIONS = 20
AUTO_PATIENCE = 5
# Early stopping waits for half the schedule: some tasks sit on a plateau first (CoLA predicts the majority class,
# Matthews 0, for its first few hundred steps) and would otherwise be stopped before they start learning.
AUTO_MIN_FRACTION = 0.5
# With an explicit budget and no --eval-every: this many evaluations per run.
EXPLICIT_EVALUATIONS = 4


@dataclass(frozen=True)
class Schedule:
    """A run's length, evaluation cadence and early-stopping window, and why they were chosen."""

    max_steps: int
    eval_every: int
    patience: int | None  # evaluations without improvement before stopping; None: train the whole budget
    adaptive: bool
    min_steps: int  # early stopping never ends a run before this step
    reason: str

    def epochs(self, train_size: int, batch_size: int) -> float:
        return round(self.max_steps * batch_size / max(1, train_size), 3)

    def to_dict(self) -> dict:
        return asdict(self)


def plan_schedule(
    train_size: int, dev_size: int, batch_size: int, *, train_tokens: int | None = None, max_steps: int | None = None,
    epochs: float | None = None, eval_every: int | None = None, patience: int | None = None,
) -> Schedule:
    """The schedule for a run on `train_size` examples holding `train_tokens` real tokens in all (None: not
    bounded by tokens); explicit settings win over the adaptive choice."""
    steps_per_epoch = max(1, math.ceil(train_size / batch_size))
    if max_steps is not None or epochs is not None:
        steps = max_steps or max(1, math.ceil(steps_per_epoch * epochs))
        given = f"--max-steps {max_steps}" if max_steps is not None else f"--epochs {epochs:g}"
        cadence = eval_every or max(math.ceil(steps / EXPLICIT_EVALUATIONS), _cheapest_eval_every(dev_size, batch_size))
        stop = patience or None
        reason = f"{given} as given ({steps} steps)" + (f", early stopping after {stop} evaluations without improvement" if stop else "")
        return Schedule(steps, cadence, stop, adaptive=False, min_steps=0, reason=reason)
    bounds = {f"{AUTO_EPOCHS} epochs": AUTO_EPOCHS * train_size, f"the {AUTO_EXAMPLE_BUDGET:,}-example budget": AUTO_EXAMPLE_BUDGET}
    if train_tokens:
        mean_length = train_tokens / max(1, train_size)
        bounds[f"the {AUTO_TOKEN_BUDGET:,}-token budget ({mean_length:.0f} tokens per example)"] = math.ceil(
            AUTO_TOKEN_BUDGET / mean_length
        )
    bound = min(bounds, key=lambda name: bounds[name])
    examples = bounds[bound]
    steps = max(1, math.ceil(examples / batch_size))
    cadence = eval_every or min(steps_per_epoch, max(math.ceil(steps / AUTO_EVALUATIONS), _cheapest_eval_every(dev_size, batch_size)))
    stop = AUTO_PATIENCE if patience is None else (patience or None)
    if not bound.endswith("epochs"):
        bound += f": {examples / train_size:.1f} epochs"
    reason = f"adaptive: {train_size:,} training examples -> {bound}, {steps} steps of {batch_size}, dev every {cadence} steps"
    minimum = math.ceil(steps * AUTO_MIN_FRACTION) if stop else 0
    reason += (
        f", early stopping after {stop} evaluations without improvement (not before step {minimum})" if stop
        else ", no early stopping"
    )
    return Schedule(steps, cadence, stop, adaptive=True, min_steps=minimum, reason=reason)


def _cheapest_eval_every(dev_size: int, batch_size: int) -> int:
    """Steps that train on as many examples as the dev set holds: evaluating more often would dominate short runs."""
    return max(1, math.ceil(dev_size / batch_size))


def improved(score: float, loss: float | None, best_score: float, best_loss: float | None) -> bool:
    """A higher dev metric, or the same one at a lower dev loss."""
    if score != best_score:
        return score > best_score
    return loss is not None and best_loss is not None and loss < best_loss


def evaluations_since_best(eval_history: list[dict], best_step: int) -> int:
    """How many evaluations have come after the best one (derived, so a resumed run needs no extra state)."""
    return sum(1 for entry in eval_history if entry["step"] > best_step)
