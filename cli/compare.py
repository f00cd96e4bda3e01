"""`transferkit compare`: run (or resume) the transfer grid or the method grid, and print its table."""

from __future__ import annotations

from typing import Annotated, Optional

import typer
from rich.table import Table

from transferkit.cli.common import (
    DEFAULT_SPARSITY_WEIGHT,
    SparsityWeightOption,
    BatchSizeOption,
    EpochsOption,
    GlobalOptions,
    HeadInitOption,
    MaxStepsOption,
    PatienceOption,
    PromptLrOption,
    SourcePromptScaleOption,
    ZeroExpertOption,
    mib,
    registry_from,
    out,
    print_json,
)
from transferkit.cli.options import OUTPUT, STORE, OutputOptions, StoreOptions, store_options, with_options
from transferkit.errors import TransferkitError


def _csv(value: str) -> list[str]:
    return [part.strip() for part in value.split(",") if part.strip()]


@with_options(locations=STORE, output=OUTPUT)
def compare_command(
    ctx: typer.Context,
    targets: Annotated[str, typer.Option(help="Comma-separated target tasks.")] = "rte,cb,mrpc,stsb,cola",
    strategies: Annotated[
        Optional[str], typer.Option(help="Comma-separated strategies (default scratch,spot,average,pemt; also attempt, merge, "
                                         "lorahub, arrow).", show_default=False)
    ] = None,
    methods: Annotated[
        Optional[str],
        typer.Option(help="Compare source methods instead: comma-separated methods trained with train-source on each target "
                          "(e.g. prompt,ept,mept,prefix,lora,adapter)."),
    ] = None,
    seeds: Annotated[
        str, typer.Option(help="Comma-separated seeds; each also re-splits a small task's official validation set into dev/test.")
    ] = "1,2,3,4,5",
    grid: Annotated[str, typer.Option(help="Name of the grid; cells are stored as <grid>-<target>-<strategy>-s<seed>.")] = "compare",
    sources: Annotated[Optional[str], typer.Option(help="Comma-separated source experts (default: chosen per target).")] = None,
    top_k: Annotated[Optional[int], typer.Option(help="Keep the k most similar sources.")] = None,
    route_top_k: Annotated[Optional[int], typer.Option(help="Experts active per example and layer.")] = None,
    sparsity_weight: SparsityWeightOption = DEFAULT_SPARSITY_WEIGHT,
    zero_expert: ZeroExpertOption = None,
    source_prompt_scale: SourcePromptScaleOption = None,
    head_init: HeadInitOption = "auto",
    gate_init: Annotated[
        str, typer.Option(help="How pemt's gate starts: uniform, or arrow (routing by the LoRA sources' top singular vectors).")
    ] = "uniform",
    strategy_option: Annotated[
        Optional[list[str]],
        typer.Option("--strategy-option", "-O", help="A strategy's option STRATEGY:KEY=VALUE, repeatable "
                                                     "(e.g. -O merge:combine=ties -O merge:density=0.3 -O pemt:r=16).",
                     show_default=False),
    ] = None,
    max_steps: MaxStepsOption = None,
    epochs: EpochsOption = None,
    patience: PatienceOption = None,
    batch_size: BatchSizeOption = 32,
    precision: Annotated[str, typer.Option(help="fp32 or bf16.")] = "fp32",
    prompt_lr: PromptLrOption = 2e-3,
    model: Annotated[Optional[str], typer.Option(help="Backbone (must match the sources').")] = None,
    render_only: Annotated[bool, typer.Option("--render-only", help="Only print the table from stored cells.")] = False,
    markdown: Annotated[bool, typer.Option("--markdown", help="Print the grid's table as GitHub Markdown (for a README).")] = False,
    locations: StoreOptions = None,
    output: OutputOptions = None,
) -> None:
    """Run (or resume) the transfer grid, or with --methods the method grid, and print the official test metric per cell: mean over seeds, 95% interval, paired difference to scratch."""
    from transferkit.composition.compare import Grid, GridBudget, collect, run_grid
    from transferkit.composition.grid_text import gates_text, markdown_table, score_text, versus_text

    options = store_options(ctx, locations)
    try:
        seed_values = [int(s) for s in _csv(seeds)]
    except ValueError:
        raise TransferkitError(f"--seeds must be comma-separated integers, got {seeds!r}") from None
    budget = GridBudget(
        max_steps=max_steps, epochs=epochs, patience=patience, batch_size=batch_size, precision=precision, prompt_lr=prompt_lr
    )
    if markdown and output.as_json:
        raise TransferkitError("--markdown and --json each choose the output; pass one")
    if methods is not None:
        if strategies is not None or sources is not None or strategy_option:
            raise TransferkitError("--methods compares source methods; drop --strategies, --sources and -O")
        _compare_methods(options, grid, _csv(targets), _csv(methods), seed_values, budget, model, render_only, output.as_json,
                         output.quiet, markdown)
        return
    spec = Grid(
        name=grid, targets=_csv(targets), strategies=_csv(strategies or "scratch,spot,average,pemt"), seeds=seed_values,
        budget=budget, sources=_csv(sources) if sources else None, top_k=top_k, route_top_k=route_top_k,
        sparsity_weight=sparsity_weight, zero_expert=zero_expert, head_init=head_init, gate_init=gate_init,
        source_prompt_scale=source_prompt_scale,
        strategy_options=_strategy_options(strategy_option or []),
    )
    registry = registry_from(options)
    if not render_only:
        run_grid(registry, spec, options.data_dir, model, show_progress=not output.quiet)
    rows = collect(registry, spec)
    if output.as_json:
        print_json(rows)
        return
    if markdown:
        print(markdown_table(rows))
        return
    table = Table(
        title=f"transfer grid {grid}: test metric x 100, mean over seeds [95% interval over seeds and test examples]; "
              "vs scratch: paired difference [95% interval] wins/losses (an interval containing 0 is a tie)"
    )
    for column in ("target", "metric", "strategy", "score", "vs scratch", "seeds", "wall s (max)", "TFLOPs", "top gates"):
        table.add_column(column)
    for row in rows:
        flops = "-" if row["train_flops"] is None else f"{row['train_flops'] / 1e12:.2f}"
        table.add_row(row["target"], row["metric"], row["strategy"], score_text(row), versus_text(row["versus_scratch"]),
                      str(row["seeds"]), f"{row['wall_seconds']:.0f} ({row['max_wall_seconds']:.0f})", flops, gates_text(row))
    out.print(table)


def _strategy_options(given: list[str]) -> dict[str, list[str]]:
    """`STRATEGY:KEY=VALUE` options grouped by strategy, in the order given."""
    options: dict[str, list[str]] = {}
    for item in given:
        strategy, separator, option = item.partition(":")
        if not separator or not strategy.strip() or "=" not in option:
            raise TransferkitError(f"-O takes STRATEGY:KEY=VALUE (e.g. merge:combine=ties), got {item!r}")
        options.setdefault(strategy.strip(), []).append(option.strip())
    return options


def _compare_methods(
    options: GlobalOptions, grid: str, tasks: list[str], methods: list[str], seeds: list[int], budget, model: str | None,
    render_only: bool, as_json: bool, quiet: bool, markdown: bool,
) -> None:
    from transferkit.composition.compare import MethodGrid, collect_methods, run_method_grid
    from transferkit.composition.grid_text import methods_markdown_table

    spec = MethodGrid(name=grid, tasks=tasks, methods=methods, seeds=seeds, budget=budget)
    registry = registry_from(options)
    if not render_only:
        run_method_grid(registry, spec, options.data_dir, model, show_progress=not quiet)
    rows = collect_methods(registry, spec)
    if as_json:
        print_json(rows)
        return
    if markdown:
        print(methods_markdown_table(rows))
        return
    table = Table(title=f"method grid {grid}: test metric, mean ± std over seeds")
    for column in ("task", "metric", "method", "score", "seeds", "trainable params", "train ex/s", "peak memory", "wall s"):
        table.add_column(column)
    for row in rows:
        rate = row["train_examples_per_second"]
        table.add_row(
            row["task"], row["metric"], row["method"], f"{100 * row['mean']:.1f} ± {100 * row['std']:.1f}", str(row["seeds"]),
            f"{row['trainable_params']:,}", "-" if rate is None else f"{rate:.1f}", mib(row["peak_memory_bytes"]),
            f"{row['wall_seconds']:.0f}",
        )
    out.print(table)
