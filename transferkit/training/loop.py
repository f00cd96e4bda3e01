"""The training loop, top to bottom: AdamW, linear warm-up/decay, periodic dev
evaluation keeping the best parameters, final dev and test evaluation.

Accelerate handles device placement and gradient plumbing, so the same loop runs
on CPU, one GPU or several processes (`torchrun` / `accelerate launch`: DDP, gloo on
CPU). With several processes, every process builds the same global batch of
`batch_size` examples and trains on its share (every n-th example); the loss is
weighted so that DDP's gradient average equals the gradient of the global batch's
mean loss, so n processes follow the single-process run. Dev and test evaluation is
sharded the same way and the predictions are gathered, so every process sees the same
metrics and keeps the same best parameters. Only trainable parameters (expert + head)
are optimised; the backbone is frozen and, with `precision="bf16"`, run under
bf16 autocast.

Cost: the first step's forward and backward run under torch's FlopCounterMode (cost.flop_counter); the
meter extrapolates FLOPs per padded token to every step (batches are dynamically
padded, so per-token is the honest form of "extrapolated by steps").

Crash safety: with a `Checkpointer`, the full training state is saved every N steps
and a restarted loop continues from the latest checkpoint, bit-identically on CPU
(`transferkit.training.checkpoint`). With a `StopRequest` (`transferkit.training.interrupt`), a SIGTERM,
SIGINT or SIGUSR1 stops training after the current optimizer step: a checkpoint is written and
`TrainingInterrupted` raised, every process of a multi-process job stopping at the same step. A non-finite loss or gradient norm stops
training with `TrainingDivergedError` before the optimizer step, so the parameters
and the last checkpoint stay finite. Gradients are clipped to norm 1.0 by default.
"""

from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Literal

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedDataParallelKwargs, gather_object
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import nn

from transferkit.errors import InvalidInputError, TrainingDivergedError, require
from transferkit.modeling import TaskModel
from transferkit.tasks import TaskSpec, compute_metrics, primary_metric
from transferkit.training.checkpoint import Checkpointer, LoopState, capture_rng
from transferkit.training.cost import CostMeter, flop_counter, merge_costs
from transferkit.training.interrupt import StopRequest, stopped_at
from transferkit.training.schedule import Schedule, evaluations_since_best, improved, plan_schedule
from transferkit.training.data import (
    TokenizedSplit,
    collate,
    length_bucketed_batches,
    sequential_batches,
)

MAX_EPOCHS = 1_000_000  # far beyond any real run; a larger number overflows the step count


@dataclass
class TrainingConfig:
    """Hyper-parameters of one training run (recorded on the run row)."""

    # Neither max_steps nor epochs: the adaptive schedule (transferkit.training.schedule) picks the length.
    max_steps: int | None = None
    epochs: float | None = None
    patience: int | None = None  # dev evaluations without improvement before stopping (None: the schedule's default)
    batch_size: int = 32
    lr: float = 1e-3
    head_lr: float = 1e-2
    prompt_lr: float = 1e-2
    weight_decay: float = 0.01
    warmup_ratio: float = 0.06
    max_length: int = 128
    seed: int = 42
    eval_every: int | None = None
    eval_batch_size: int = 64
    precision: Literal["fp32", "bf16"] = "fp32"
    grad_clip: float = 1.0  # max gradient norm; on by default (0 turns clipping off)

    def validate(self) -> None:
        rates = (self.lr, self.head_lr, self.prompt_lr)
        require([
            (self.max_steps is None or self.max_steps >= 1, f"--max-steps must be at least 1, got {self.max_steps}"),
            (self.epochs is None or (math.isfinite(self.epochs) and 0 < self.epochs <= MAX_EPOCHS),
             f"--epochs must be a positive number up to {MAX_EPOCHS:,}, got {self.epochs}"),
            (self.patience is None or self.patience >= 0, f"--patience must be at least 0 (0: no early stopping), got {self.patience}"),
            (self.batch_size >= 1, f"--batch-size must be at least 1, got {self.batch_size}"),
            (all(math.isfinite(r) and r > 0 for r in rates), f"learning rates must be positive numbers, got {rates}"),
            (8 <= self.max_length <= 4096, f"--max-length must be between 8 and 4096, got {self.max_length}"),
            (self.eval_every is None or self.eval_every >= 1, f"--eval-every must be at least 1, got {self.eval_every}"),
            (self.eval_batch_size >= 1, f"eval_batch_size must be at least 1, got {self.eval_batch_size}"),
            (self.precision in ("fp32", "bf16"), f"--precision must be fp32 or bf16, got {self.precision}"),
            (math.isfinite(self.weight_decay) and self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}"),
            (0 <= self.warmup_ratio < 1, f"warmup_ratio must be in [0, 1), got {self.warmup_ratio}"),
            (math.isfinite(self.grad_clip) and self.grad_clip >= 0, f"grad_clip must be a finite number >= 0, got {self.grad_clip}"),
            # torch seeds and the registry's BIGINT column both hold 64-bit integers.
            (0 <= self.seed < 2**63, f"--seed must be a non-negative integer below 2^63, got {self.seed}"),
        ])

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainResult:
    metrics: dict[str, dict[str, float]]  # split -> metric -> value
    best_step: int
    steps: int
    loss_history: list[tuple[int, float]]
    eval_history: list[dict] = field(default_factory=list)
    cost: dict = field(default_factory=dict)
    schedule: dict = field(default_factory=dict)  # the Schedule the run followed
    stop_reason: str = ""
    test_predictions: list = field(default_factory=list)  # per test example, in split order (for intervals)


def stderr_progress(enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[info]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=Console(stderr=True),
        disable=not enabled,
        transient=False,
    )


def parameter_groups(model: TaskModel, config: TrainingConfig) -> list[dict]:
    """Expert at `lr`, head at `head_lr`, and the task representation (task prompt and the composition's gates)
    at `prompt_lr`: zero-initialised gates would barely leave uniform within a small budget at an expert's rate."""
    trainable = lambda module: [p for p in module.parameters() if p.requires_grad] if module is not None else []  # noqa: E731
    groups = [
        {"params": trainable(model.expert), "lr": config.lr},
        {"params": trainable(model.head), "lr": config.head_lr},
        {"params": trainable(model.task_prompt) + trainable(model.composition), "lr": config.prompt_lr},
    ]
    return [g for g in groups if g["params"]]


def loss_function(task: TaskSpec) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    if task.is_regression:
        return lambda logits, labels: nn.functional.mse_loss(logits.squeeze(-1), labels.float())
    return nn.functional.cross_entropy


def process_state() -> PartialState:
    """This process's place in a `torchrun` / `accelerate launch` job (one process otherwise); the same the loop uses."""
    return PartialState(cpu=not torch.cuda.is_available())


@torch.no_grad()
def predict_outputs(
    model: TaskModel, split: TokenizedSplit, batch_size: int, pad_id: int,
    progress: Progress | None = None, label: str = "eval", rows: np.ndarray | None = None,
) -> np.ndarray:
    """The model's raw outputs (N, num_outputs) in the split's original order (for `rows` only if given; others 0)."""
    was_training = model.training
    model.eval()
    outputs: np.ndarray | None = None
    rows = np.arange(len(split)) if rows is None else rows
    batches = [rows[b].tolist() for b in sequential_batches(split.lengths()[rows], batch_size)]
    bar = progress.add_task(label, total=len(batches), info=f"{len(rows)} examples") if progress is not None else None
    for indices in batches:
        if bar is not None:
            progress.advance(bar)
        batch = collate(split, indices, pad_id)
        batch.pop("labels")
        logits = model(**{k: v.to(model.device) for k, v in batch.items()}).float().cpu().numpy()
        if outputs is None:
            outputs = np.zeros((len(split), logits.shape[-1]), dtype=np.float32)
        outputs[indices] = logits
    if bar is not None:
        progress.remove_task(bar)
    model.train(was_training)
    return outputs if outputs is not None else np.zeros((len(split), 0), dtype=np.float32)


def decide(outputs: np.ndarray, task: TaskSpec) -> np.ndarray:
    """Predictions from raw outputs: the class with the largest logit, or the scalar for regression."""
    return outputs[:, 0].astype(np.float32) if task.is_regression else outputs.argmax(-1).astype(np.int64)


def predict(
    model: TaskModel, split: TokenizedSplit, batch_size: int, pad_id: int, task: TaskSpec,
    progress: Progress | None = None, label: str = "eval", rows: np.ndarray | None = None,
) -> np.ndarray:
    """Predictions in the split's original order (argmax, or the scalar for regression), for `rows` only if given."""
    return decide(predict_outputs(model, split, batch_size, pad_id, progress, label, rows), task)


@dataclass
class Evaluation:
    """Metrics on one split, the mean task loss, and every example's prediction (for intervals later)."""

    metrics: dict[str, float]
    loss: float
    predictions: np.ndarray


def evaluate(
    model: TaskModel, split: TokenizedSplit, task: TaskSpec, batch_size: int, pad_id: int,
    progress: Progress | None = None, label: str = "eval", accelerator: Accelerator | None = None,
) -> Evaluation:
    """Metrics on a split; with several processes each predicts every n-th example and all gather the outputs."""
    if accelerator is None or accelerator.num_processes == 1:
        outputs = predict_outputs(model, split, batch_size, pad_id, progress, label)
    else:
        mine = np.arange(accelerator.process_index, len(split), accelerator.num_processes)
        local = predict_outputs(model, split, batch_size, pad_id, progress, label, rows=mine)
        outputs = np.zeros_like(local)
        for rows, values in gather_object([(mine, local[mine])]):
            outputs[rows] = values
    predictions = decide(outputs, task)
    with torch.no_grad():
        loss = float(loss_function(task)(torch.from_numpy(outputs), torch.from_numpy(split.labels))) if len(split) else 0.0
    metrics = compute_metrics(task, predictions.tolist(), split.labels.tolist(), split.groups)
    return Evaluation(metrics, round(loss, 6), predictions)


def _trainable_snapshot(model: TaskModel) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _diverged(state: LoopState, what: str, checkpointer: Checkpointer | None) -> TrainingDivergedError:
    kept = (
        f"its last good checkpoint (step {checkpointer.last_saved_step}) is kept"
        if checkpointer is not None and checkpointer.last_saved_step is not None else "no checkpoint was written yet"
    )
    return TrainingDivergedError(
        f"training diverged at step {state.step + 1}: {what}; stopped before the update, {kept}; "
        "lower --lr/--head-lr (gradient clipping is on unless grad_clip is 0) and train again"
    )


def train(
    model: TaskModel,
    task: TaskSpec,
    train_split: TokenizedSplit,
    dev_split: TokenizedSplit,
    test_split: TokenizedSplit,
    config: TrainingConfig,
    pad_id: int,
    show_progress: bool = True,
    auxiliary_weight: float = 0.0,
    checkpointer: Checkpointer | None = None,
    stop: StopRequest | None = None,
) -> TrainResult:
    """Train `model`'s trainable parameters; leave it holding the best-on-dev parameters.

    The loss is the task loss plus `auxiliary_weight` x the composition's auxiliary loss (PEMT's task sparsity loss).
    With `checkpointer`, training continues from its latest checkpoint if there is one and saves new ones.
    With `stop`, a stop signal ends training after the current step with a checkpoint and `TrainingInterrupted`.
    """
    config.validate()
    if len(train_split) == 0:
        raise InvalidInputError(f"task {task.name} has no training examples")
    # Every buffer is either constant (stacked source weights) or a per-process count summed at the end (MEPT load),
    # so DDP must not overwrite the others' buffers with the first process's on every forward pass. Every trainable
    # parameter gets a gradient in every step (tested for each method), so DDP needs no search for unused ones.
    ddp = DistributedDataParallelKwargs(broadcast_buffers=False)
    accelerator = Accelerator(cpu=not torch.cuda.is_available(), kwargs_handlers=[ddp])
    world, rank = accelerator.num_processes, accelerator.process_index
    torch.manual_seed(config.seed + rank)  # dropout masks differ across processes, as across the examples of one batch
    schedule = plan_schedule(
        len(train_split), len(dev_split), config.batch_size, train_tokens=int(train_split.lengths().sum()),
        max_steps=config.max_steps, epochs=config.epochs,
        eval_every=config.eval_every, patience=config.patience,
    )
    total_steps, eval_every = schedule.max_steps, schedule.eval_every

    optimizer = torch.optim.AdamW(parameter_groups(model, config), weight_decay=config.weight_decay)
    warmup = int(total_steps * config.warmup_ratio)

    def lr_factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    # The scheduler stays unprepared: accelerate would step it once per process, but processes share one global batch.
    model, optimizer = accelerator.prepare(model, optimizer)
    task_model: TaskModel = accelerator.unwrap_model(model)  # attributes, evaluation and snapshots bypass DDP
    loss_fn = loss_function(task)
    meter = CostMeter(accelerator.device)
    primary = primary_metric(task)

    # A checkpoint's data position only means something for the same data, batch size, seed and length.
    identity = {"train_examples": len(train_split), "batch_size": config.batch_size, "seed": config.seed, "total_steps": total_steps}
    state = LoopState()
    if checkpointer is not None:
        state = checkpointer.restore(task_model, optimizer, scheduler, meter, identity, rank=rank) or state
    model.train()
    show_progress = show_progress and accelerator.is_main_process  # one progress display per job
    with stderr_progress(show_progress) as progress:
        bar = progress.add_task(f"train {task.short_name}", total=total_steps, completed=state.step, info="")
        while state.step < total_steps:
            batches = length_bucketed_batches(train_split.lengths(), config.batch_size, seed=config.seed + state.epoch)
            for indices in batches[state.batches_done:]:
                step_start = time.perf_counter()
                local = indices[rank::world]  # this process's share of the global batch
                # DDP averages gradients over processes: weighting each process's mean loss by its share of the batch
                # (x the process count) makes that average the gradient of the whole batch's mean loss.
                weight = world * len(local) / len(indices)
                if not local:  # fewer examples than processes: join the gradient all-reduce with a zero contribution
                    local = indices[:1]
                batch = {k: v.to(accelerator.device) for k, v in collate(train_split, local, pad_id).items()}
                labels = batch.pop("labels")
                padded_tokens = int(batch["input_ids"].numel())
                # FLOPs are counted on the first step only (the counter slows the step) and extrapolated per padded token
                counter = flop_counter() if state.step == 0 else contextlib.nullcontext()
                with counter:
                    logits = model(**batch)
                    loss = loss_fn(logits, labels)
                    composition = task_model.composition
                    auxiliary = composition.auxiliary_loss() if composition is not None else None
                    if auxiliary is not None and auxiliary_weight:
                        loss = loss + auxiliary_weight * auxiliary
                    loss = loss * weight
                    if not math.isfinite(float(loss.detach())):
                        raise _diverged(state, f"the loss is {float(loss.detach())}", checkpointer)
                    accelerator.backward(loss)
                if state.step == 0:
                    meter.record_step_flops(counter.get_total_flops(), padded_tokens)
                if config.grad_clip:
                    norm = float(accelerator.clip_grad_norm_([p for g in optimizer.param_groups for p in g["params"]], config.grad_clip))
                    if not math.isfinite(norm):
                        raise _diverged(state, f"the gradient norm is {norm}", checkpointer)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                state.step += 1
                state.batches_done += 1
                value = float(accelerator.reduce(loss.detach(), reduction="mean") if world > 1 else loss.detach())
                examples = len(local) if weight else 0
                meter.add_batch(examples, int(batch["attention_mask"].sum()), time.perf_counter() - step_start, padded_tokens)
                state.running_loss = value if state.running_loss is None else 0.9 * state.running_loss + 0.1 * value
                state.loss_history.append((state.step, round(value, 5)))
                rate = meter.examples / max(1e-9, meter.train_seconds)
                progress.update(bar, advance=1, info=f"loss {state.running_loss:.4f}  {rate:.1f} ex/s")
                if state.step % eval_every == 0 or state.step == total_steps:
                    dev = evaluate(task_model, dev_split, task, config.eval_batch_size, pad_id, progress, "eval dev", accelerator)
                    state.eval_history.append(
                        {"step": state.step, "dev": dev.metrics, "dev_loss": dev.loss, "train_loss": round(state.running_loss, 5)}
                    )
                    if state.best_state is None or improved(dev.metrics[primary], dev.loss, state.best_score, _best_loss(state)):
                        state.best_score, state.best_step, state.best_dev = dev.metrics[primary], state.step, dev.metrics
                        state.best_state = _trainable_snapshot(task_model)
                    if show_progress:
                        progress.console.print(
                            f"step {state.step}: dev {primary} {dev.metrics[primary]:.4f} (best {state.best_score:.4f} @ {state.best_step})"
                        )
                if _patience_exhausted(state, schedule) or state.step >= total_steps:
                    break
                if checkpointer is not None and checkpointer.due(state.step):
                    _save_checkpoint(checkpointer, accelerator, state, task_model, optimizer, scheduler, meter, identity)
                # Here, where a periodic checkpoint would be written, the saved state resumes bit-identically.
                if stop is not None and (signal_number := stop.agreed(world, accelerator.device)) is not None:
                    if checkpointer is not None and checkpointer.last_saved_step != state.step:
                        _save_checkpoint(checkpointer, accelerator, state, task_model, optimizer, scheduler, meter, identity)
                    raise stopped_at(signal_number, state.step, checkpointer.last_saved_step if checkpointer else None)
            else:
                state.epoch, state.batches_done = state.epoch + 1, 0
            if _patience_exhausted(state, schedule):
                break
        task_model.load_state_dict(state.best_state)
        test = evaluate(task_model, test_split, task, config.eval_batch_size, pad_id, progress, "eval test", accelerator)
    metrics = {"dev": state.best_dev, "test": test.metrics}
    cost = meter.finish()  # covers training and every evaluation
    if accelerator.num_processes > 1:  # every process measured its own device(s); the registry gets the sum
        cost = merge_costs(gather_object([cost]))
    return TrainResult(
        metrics, state.best_step, state.step, state.loss_history, state.eval_history, cost,
        schedule=schedule.to_dict(), stop_reason=_stop_reason(state, schedule, primary), test_predictions=test.predictions.tolist(),
    )


def _save_checkpoint(
    checkpointer: Checkpointer, accelerator: Accelerator, state: LoopState, model: TaskModel,
    optimizer: torch.optim.Optimizer, scheduler: object, meter: CostMeter, identity: dict,
) -> None:
    """One writer, the main process: every process holds the same parameters and position. Only the RNG states
    differ (each process draws its own dropout masks), so they are gathered into the checkpoint. Collective in a
    multi-process run: every process calls it at the same step, and all then know the step saved."""
    others = gather_object([capture_rng()])[1:] if accelerator.num_processes > 1 else None
    if accelerator.is_main_process:
        checkpointer.save(state, model, optimizer, scheduler, meter, identity, other_ranks=others)
    checkpointer.last_saved_step = state.step


def _best_loss(state: LoopState) -> float | None:
    return next((entry.get("dev_loss") for entry in state.eval_history if entry["step"] == state.best_step), None)


def _patience_exhausted(state: LoopState, schedule: Schedule) -> bool:
    return (
        schedule.patience is not None and state.step >= schedule.min_steps
        and evaluations_since_best(state.eval_history, state.best_step) >= schedule.patience
    )


def _stop_reason(state: LoopState, schedule: Schedule, primary: str) -> str:
    if _patience_exhausted(state, schedule) and state.step < schedule.max_steps:
        return (
            f"early stop at step {state.step} of {schedule.max_steps}: dev {primary} did not improve for "
            f"{schedule.patience} evaluations; kept step {state.best_step}"
        )
    return f"completed all {schedule.max_steps} steps; kept step {state.best_step}"
