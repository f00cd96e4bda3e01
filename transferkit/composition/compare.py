"""`transferkit compare`: the transfer evaluation grid (targets x strategies x seeds),
and with `--methods` the method grid (tasks x source methods x seeds).

Every cell is an ordinary `transfer` run with the same fixed budget, stored in
the registry under a deterministic name `<grid>-<target>-<strategy>-s<seed>`.
A cell that is already stored is not trained again, and a cell that was
interrupted continues from its last training checkpoint, so an interrupted grid
resumes where it stopped, and `--render-only` re-renders the table from the
registry alone. SIGTERM, SIGINT or SIGUSR1 stop the grid after the current cell's
checkpoint (or before the next cell); `compare` again continues it.

Default budget: exactly what `transfer` gives a user with no budget flags, the
adaptive schedule (training/schedule.py: epochs from the training-set size, a
bounded number of examples, early stopping on the dev metric, best parameters
kept), 5 seeds. A small task's official validation set is re-split into dev and
test per seed (the split is recorded on each cell). Each cell reports the test
metric; `collect` adds a 95% interval over seeds and test examples and, against
scratch, the paired per-seed difference with its interval and wins/losses.

The method grid trains each cell with `train-source` (each method at its
recommended learning rate, same budget) and reports, besides the metric, the
stored expert's trainable parameters, training examples per second (optimiser
steps only) and the run's peak memory.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from pathlib import Path

from transferkit.composition.options import DEFAULT_SPARSITY_WEIGHT
from transferkit.composition.strategies import get_strategy, strategy_names
from transferkit.composition.transfer import TRANSFER_PROMPT_LR, TransferJob, transfer, validate_job
from transferkit.errors import InvalidInputError, NotFoundError, TrainingInterrupted
from transferkit.methods import get_method
from transferkit.registry import ExpertRecord, RegistryStore
from transferkit.task_registry import resolve_registered_task
from transferkit.tasks.intervals import metric_interval, paired_difference
from transferkit.training.interrupt import StopRequest, how_to_resume, signal_name, stop_requests
from transferkit.training.loop import TrainingConfig
from transferkit.workflows import SourceJob, train_source


@dataclass
class GridBudget:
    """Every cell's budget: by default exactly what `train-source` / `transfer` give a user (the adaptive schedule)."""

    max_steps: int | None = None
    epochs: float | None = None
    patience: int | None = None
    batch_size: int = 32
    max_length: int = 128
    eval_every: int | None = None
    precision: str = "fp32"
    prompt_lr: float = TRANSFER_PROMPT_LR  # transfer cells only; method cells keep train-source's task-prompt rate

    def training(self, seed: int, **overrides: float) -> TrainingConfig:
        return TrainingConfig(
            max_steps=self.max_steps, epochs=self.epochs, patience=self.patience, batch_size=self.batch_size,
            max_length=self.max_length, eval_every=self.eval_every, seed=seed, precision=self.precision,  # type: ignore[arg-type]
            **overrides,
        )


@dataclass
class Grid:
    name: str
    targets: list[str]
    strategies: list[str]
    seeds: list[int]
    budget: GridBudget = field(default_factory=GridBudget)
    sources: list[str] | None = None
    top_k: int | None = None
    route_top_k: int | None = None
    sparsity_weight: float = DEFAULT_SPARSITY_WEIGHT
    zero_expert: bool | None = None  # None: the strategy's default
    head_init: str = "auto"
    gate_init: str = "uniform"  # pemt only
    source_prompt_scale: str | None = None  # pemt only; None: its default
    strategy_options: dict[str, list[str]] = field(default_factory=dict)  # strategy -> its `-O KEY=VALUE` options

    def validate(self, registry: RegistryStore) -> None:
        unknown = [s for s in self.strategies if s not in strategy_names()]
        if unknown:
            raise InvalidInputError(f"unknown strategies {unknown}; choose from {', '.join(strategy_names())}")
        if not self.targets or not self.strategies or not self.seeds:
            raise InvalidInputError("--targets, --strategies and --seeds each need at least one value")
        stray = sorted(set(self.strategy_options) - set(self.strategies))
        if stray:
            raise InvalidInputError(f"-O names {', '.join(stray)}, which is not in --strategies {','.join(self.strategies)}")
        if self.gate_init != "uniform" and "pemt" not in self.strategies:
            raise InvalidInputError("--gate-init sets how pemt's gate starts; add pemt to --strategies")
        if self.source_prompt_scale is not None and "pemt" not in self.strategies:
            raise InvalidInputError("--source-prompt-scale sets pemt's target prompt; add pemt to --strategies")
        for strategy in self.strategies:  # every cell's options are checked before the first cell trains
            validate_job(self.job(None, strategy, self.seeds[0], "check", None, None, show_progress=False))
        self.targets = [resolve_registered_task(registry, t).name for t in self.targets]

    def cell_name(self, target: str, strategy: str, seed: int) -> str:
        return f"{self.name}-{target.split('/')[-1]}-{strategy}-s{seed}"

    def job(
        self, target: str | None, strategy: str, seed: int, name: str, data_dir: Path | None, model: str | None, show_progress: bool,
    ) -> TransferJob:
        """The `transfer` job of one cell."""
        return TransferJob(
            target=target, strategy=strategy,
            sources=self.sources if strategy != "scratch" else None,
            top_k=self.top_k, route_top_k=self.route_top_k, sparsity_weight=self.sparsity_weight,
            zero_expert=self.zero_expert if strategy == "pemt" else None, head_init=self.head_init,
            gate_init=self.gate_init if strategy == "pemt" else "uniform",
            source_prompt_scale=self.source_prompt_scale if strategy == "pemt" else None,
            method_options=list(self.strategy_options.get(strategy, [])),
            model=model, data_dir=data_dir, name=name,
            training=self.budget.training(seed, prompt_lr=self.budget.prompt_lr),
            show_progress=show_progress,
            command=["transferkit", "compare", f"--grid={self.name}", f"cell={name}"],
            resume=True,  # an interrupted cell continues from its last checkpoint
        )

    @staticmethod
    def check_stored_cell(registry: RegistryStore, expert: ExpertRecord, job: TransferJob) -> None:
        """Refuse to count a stored cell that was run with other strategy options than its job asks for."""
        recorded = registry.get_run(expert.run_id).hyperparams.get("job") or {}
        asked = {"-O": job.method_options, "--gate-init": job.gate_init,
                 "--source-prompt-scale": get_strategy(job.strategy).source_prompt_scale(job)}
        stored = {"-O": list(recorded.get("method_options") or []), "--gate-init": recorded.get("gate_init") or "uniform",
                  "--source-prompt-scale": recorded.get("source_prompt_scale") or "fixed"}
        for flag, value in asked.items():
            if stored[flag] != value:
                raise InvalidInputError(
                    f"cell {expert.name} is stored with {flag} {stored[flag]!r}, not {value!r}; "
                    "use another --grid name to compare both"
                )


@dataclass
class MethodGrid:
    """Source methods compared on the same tasks, seeds and budget."""

    name: str
    tasks: list[str]
    methods: list[str]
    seeds: list[int]
    budget: GridBudget = field(default_factory=GridBudget)

    def validate(self, registry: RegistryStore) -> None:
        if not self.tasks or not self.methods or not self.seeds:
            raise InvalidInputError("--targets, --methods and --seeds each need at least one value")
        self.methods = [get_method(m).name for m in self.methods]
        self.tasks = [resolve_registered_task(registry, t).name for t in self.tasks]

    def cell_name(self, task: str, method: str, seed: int) -> str:
        return f"{self.name}-{task.split('/')[-1]}-{method}-s{seed}"


def _stored(registry: RegistryStore, name: str) -> ExpertRecord | None:
    try:
        expert = registry.get_expert(name)
    except NotFoundError:
        return None
    return expert if expert.name == name else None


def run_grid(registry: RegistryStore, grid: Grid, data_dir: Path | None, model: str | None, show_progress: bool) -> None:
    """Train every missing cell of the grid; a stop signal ends it after the current cell's checkpoint."""
    grid.validate(registry)
    with stop_requests() as stop:  # shared with each cell's training, so a signal between cells counts too
        for target in grid.targets:
            for strategy in grid.strategies:
                for seed in grid.seeds:
                    name = grid.cell_name(target, strategy, seed)
                    job = grid.job(target, strategy, seed, name, data_dir, model, show_progress)
                    stored = _stored(registry, name)
                    if stored:
                        grid.check_stored_cell(registry, stored, job)
                        continue
                    _stop_before(stop, name)
                    transfer(registry, job)


def _stop_before(stop: StopRequest, cell: str) -> None:
    """A signal that came while the previous cell was being stored (or between cells) stops the grid here."""
    if stop.signal_number is not None:
        raise TrainingInterrupted(
            f"interrupted before cell {cell} ({signal_name(stop.signal_number)}); every earlier cell is stored",
            stop.signal_number, how_to_resume(["transferkit", "compare"]),
        )


def run_method_grid(
    registry: RegistryStore, grid: MethodGrid, data_dir: Path | None, model: str | None, show_progress: bool
) -> None:
    """Train every missing cell of the method grid; a stop signal ends it after the current cell's checkpoint."""
    grid.validate(registry)
    with stop_requests() as stop:
        for task in grid.tasks:
            for method in grid.methods:
                for seed in grid.seeds:
                    name = grid.cell_name(task, method, seed)
                    if _stored(registry, name):
                        continue
                    _stop_before(stop, name)
                    train_source(registry, SourceJob(
                        task=task, method=method, model=model, data_dir=data_dir, name=name,
                        training=grid.budget.training(seed), show_progress=show_progress,
                        command=["transferkit", "compare", f"--grid={grid.name}", f"cell={name}"],
                        resume=True,  # an interrupted cell continues from its last checkpoint
                    ))


def _stored_cells(registry: RegistryStore, grid: Grid | MethodGrid, task: str, arm: str) -> tuple[list[ExpertRecord], str, list[float]] | None:
    """The stored cells of one (task, strategy or method) over the grid's seeds: experts, primary metric, test scores."""
    experts = [e for seed in grid.seeds if (e := _stored(registry, grid.cell_name(task, arm, seed)))]
    if not experts:
        return None
    primary = experts[0].metrics["primary"]
    return experts, primary, [e.metrics["test"][primary] for e in experts]


def collect_methods(registry: RegistryStore, grid: MethodGrid) -> list[dict]:
    """One row per (task, method): test metric mean and std over seeds, parameters, throughput, peak memory."""
    grid.validate(registry)
    rows = []
    for task in grid.tasks:
        for method in grid.methods:
            cells = _stored_cells(registry, grid, task, method)
            if cells is None:
                continue
            experts, primary, scores = cells
            costs = [registry.get_run(e.run_id).cost for e in experts]
            rates = [c["train_examples_per_second"] for c in costs if c.get("train_examples_per_second")]
            peaks = [c["peak_memory_bytes"] for c in costs if c.get("peak_memory_bytes")]
            rows.append({
                "task": task,
                "method": method,
                "metric": primary,
                "seeds": len(experts),
                "mean": statistics.mean(scores),
                "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                "scores": scores,
                "trainable_params": experts[0].trainable_params,
                "train_examples_per_second": statistics.mean(rates) if rates else None,
                "peak_memory_bytes": max(peaks) if peaks else None,
                "wall_seconds": statistics.mean(c.get("wall_seconds") or 0.0 for c in costs),
                "experts": [e.id for e in experts],
            })
    return rows


def collect(registry: RegistryStore, grid: Grid) -> list[dict]:
    """One row per (target, strategy): the primary test metric's mean over seeds with its 95% interval (seeds and
    test examples resampled), the paired difference to `scratch` where the grid has it, cost (wall time and FLOPs,
    a strategy's preparation included) and top gates (merge and lorahub: their weights; arrow: mean routed shares)."""
    grid.validate(registry)
    rows = []
    for target in grid.targets:
        task = resolve_registered_task(registry, target)
        outputs = {strategy: _test_outputs(registry, grid, target, strategy) for strategy in grid.strategies}
        for strategy in grid.strategies:
            cells = _stored_cells(registry, grid, target, strategy)
            if cells is None:
                continue
            experts, primary, scores = cells
            costs = [registry.get_run(e.run_id).cost for e in experts]
            walls = [c.get("wall_seconds") or 0.0 for c in costs]
            flops = [c.get("train_flops") for c in costs]
            gates: dict[str, list[float]] = {}
            for expert in experts:
                for source, weight in expert.extra.get("gate_weights", {}).get("mean", {}).items():
                    gates.setdefault(source, []).append(weight)
            top = sorted(((statistics.mean(w), s) for s, w in gates.items()), reverse=True)[:3]
            zero = [e.extra["gate_weights"]["zero_expert"]["mean"] for e in experts if "zero_expert" in e.extra.get("gate_weights", {})]
            entropy = [e.extra["gate_weights"]["entropy"] for e in experts if "entropy" in e.extra.get("gate_weights", {})]
            mine = outputs[strategy]
            interval = metric_interval(list(mine.values()), task, primary) if len(mine) == len(experts) else None
            baseline = outputs.get("scratch") or {}
            versus = paired_difference(mine, baseline, task, primary) if strategy != "scratch" and mine and baseline else None
            rows.append(
                {
                    "target": target,
                    "strategy": strategy,
                    "metric": primary,
                    "seeds": len(experts),
                    "mean": statistics.mean(scores),
                    "std": statistics.stdev(scores) if len(scores) > 1 else 0.0,
                    "interval": interval.to_dict() if interval is not None else None,
                    "versus_scratch": versus.to_dict() if versus is not None else None,
                    "scores": scores,
                    "wall_seconds": statistics.mean(walls),
                    "max_wall_seconds": max(walls),
                    # CPU-core-seconds on CPU (GPU-seconds on CUDA): unlike wall time, not inflated by a loaded machine.
                    "device_seconds": statistics.mean(c.get("device_seconds") or 0.0 for c in costs),
                    # Training FLOPs plus any preparation's (a merge, a weight search); None if a cell lacks the count.
                    "train_flops": statistics.mean(flops) if all(isinstance(f, (int, float)) for f in flops) else None,
                    "preparation_seconds": statistics.mean((c.get("preparation") or {}).get("wall_seconds") or 0.0 for c in costs),
                    "steps": [e.extra.get("steps") for e in experts],
                    "top_gates": [{"source": s, "weight": round(w, 4)} for w, s in top],
                    "zero_expert_gate": round(statistics.mean(zero), 4) if zero else None,
                    "gate_entropy": round(statistics.mean(entropy), 4) if entropy else None,
                    "experts": [e.id for e in experts],
                }
            )
    return rows


def _test_outputs(registry: RegistryStore, grid: Grid, target: str, strategy: str) -> dict[int, dict]:
    """Seed -> the stored test predictions and labels of that cell (cells stored before they were kept are left out)."""
    found = {}
    for seed in grid.seeds:
        expert = _stored(registry, grid.cell_name(target, strategy, seed))
        if expert is not None and expert.extra.get("test_outputs"):
            found[seed] = expert.extra["test_outputs"]
    return found
