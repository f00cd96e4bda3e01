"""What every `transferkit` command shares: consoles, option types, global options, registry access, JSON output."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer
from rich.console import Console

from transferkit.errors import DataError

if TYPE_CHECKING:  # the registry is imported when a command opens it, not at CLI start-up
    from transferkit.registry import SqlAlchemyStore

# Wide tables when piped: a wrapped table is unreadable in a log file. Under torchrun / accelerate launch
# every process runs the same command; only the first (RANK 0) prints results, the others would repeat them.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200, quiet=os.environ.get("RANK", "0") != "0")
err = Console(stderr=True)

RegistryOption = Annotated[
    Optional[str],
    typer.Option(
        "--registry",
        envvar="TRANSFERKIT_REGISTRY",
        help="SQLAlchemy URL of the registry (default: a SQLite file under the user data dir). Env: TRANSFERKIT_REGISTRY.",
        show_default=False,
    ),
]
ArtifactsOption = Annotated[
    Optional[str],
    typer.Option(
        "--artifacts",
        envvar="TRANSFERKIT_ARTIFACTS",
        help="Folder or fsspec URL (s3://bucket/prefix, gs://..., file:///...) for expert artifacts "
        "(default: beside a SQLite registry, else under the user data dir). Env: TRANSFERKIT_ARTIFACTS.",
        show_default=False,
    ),
]
DataDirOption = Annotated[
    Optional[Path],
    typer.Option(
        "--data-dir",
        envvar="TRANSFERKIT_DATA_DIR",
        help="Folder with official GLUE/SuperGLUE files; without it, data comes from the Hugging Face Hub. Env: TRANSFERKIT_DATA_DIR.",
        show_default=False,
    ),
]
JsonOption = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON on stdout.")]
QuietOption = Annotated[bool, typer.Option("--quiet", "-q", help="No progress output.")]
# Training options shared by train-source and transfer.
MethodOptions = Annotated[
    Optional[list[str]], typer.Option("--method-option", "-O", help="Method option KEY=VALUE, repeatable (e.g. -O r=16).")
]
ModelOption = Annotated[Optional[str], typer.Option(help="HF model id or local path (default: packaged all-MiniLM-L6-v2).")]
MaxStepsOption = Annotated[
    Optional[int],
    typer.Option(help="Train exactly this many optimiser steps (overrides --epochs). Default: the adaptive schedule "
                      "(up to 20 epochs, at most 32,000 examples, early stopping on dev).", show_default=False),
]
EpochsOption = Annotated[
    Optional[float], typer.Option(help="Train exactly this many passes over the training split. Default: the adaptive schedule.",
                                  show_default=False)
]
ZeroExpertOption = Annotated[
    Optional[bool],
    typer.Option("--zero-expert/--no-zero-expert",
                 help="pemt: let the gate also choose an expert that changes nothing, so a target unlike every source "
                      "can use none of them (default: on for pemt).", show_default=False),
]
SourcePromptScaleOption = Annotated[
    Optional[str],
    typer.Option(help="pemt: add the sources' correlated prompts to the target's task prompt at full weight (fixed, "
                      "PEMT) or scaled by a learned scalar that starts at 0 (learned). Default: fixed.",
                 show_default=False),
]
# The library's default (composition.options.DEFAULT_SPARSITY_WEIGHT), repeated here so that `--help` needs no torch.
DEFAULT_SPARSITY_WEIGHT = 0.0
SparsityWeightOption = Annotated[
    float,
    typer.Option(help="Weight of PEMT's task sparsity loss, which concentrates the gate on sources that agree with the "
                      "mixed change (default 0: off, chosen on RTE, CB and CoLA dev)."),
]
HeadInitOption = Annotated[
    str,
    typer.Option(help="auto: start the target's head from the sources' heads where their labels match by name or meaning "
                      "(recorded on the expert); none: from zero."),
]
PatienceOption = Annotated[
    Optional[int],
    typer.Option(help="Stop after this many dev evaluations without improvement and keep the best (0: never). "
                      "Default: 5 with the adaptive schedule, off with --max-steps/--epochs.", show_default=False),
]
BatchSizeOption = Annotated[int, typer.Option(help="Examples per step.")]
LrOption = Annotated[Optional[float], typer.Option(help="Learning rate of the expert (default: the method's recommended rate).")]
HeadLrOption = Annotated[float, typer.Option(help="Learning rate of the task head.")]
PromptLrOption = Annotated[float, typer.Option(help="Learning rate of the task-description prompt and mixture gates.")]
MaxLengthOption = Annotated[int, typer.Option(help="Truncate inputs to this many tokens.")]
SeedOption = Annotated[int, typer.Option(help="Seed for splits, initialisation and batch order.")]
EvalEveryOption = Annotated[Optional[int], typer.Option(help="Evaluate on dev every N steps (default: 4 times per run).")]
PrecisionOption = Annotated[str, typer.Option(help="fp32, or bf16: frozen backbone weights held in bf16 and run under autocast (trainable parts stay fp32).")]
MaxTrainOption = Annotated[Optional[int], typer.Option(help="Seeded subsample of the training split.")]
TaskFileOption = Annotated[
    Optional[Path],
    typer.Option("--task-file", help="A custom task spec (TOML): checked, and registered with the new expert (see `task add`)."),
]
TaskPromptOption = Annotated[int, typer.Option(help="Tokens of the PEMT task-description prompt trained with the expert (0: none).")]
ResumeOption = Annotated[
    bool,
    typer.Option(
        "--resume",
        help="Continue the latest unfinished (failed or killed) run with the same task, method, --name and settings "
        "from its last checkpoint; start a new run if there is none.",
    ),
]
CheckpointEveryOption = Annotated[int, typer.Option(help="Save a training checkpoint every N steps for --resume (0: never).")]


@dataclass
class GlobalOptions:
    registry_url: str | None = None
    data_dir: Path | None = None
    artifacts: str | None = None


def global_options(
    ctx: typer.Context, registry_url: str | None, data_dir: Path | None, artifacts: str | None = None
) -> GlobalOptions:
    """Command-level options win over the same options given before the command."""
    parent: GlobalOptions = ctx.obj or GlobalOptions()
    return GlobalOptions(registry_url or parent.registry_url, data_dir or parent.data_dir, artifacts or parent.artifacts)


def registry_from(options: GlobalOptions) -> SqlAlchemyStore:
    """The registry the options name (opened, created or upgraded as needed)."""
    from transferkit.registry import open_registry

    return open_registry(options.registry_url, options.artifacts)


def print_json(data) -> None:
    if not out.quiet:  # quiet on the non-main processes of a multi-process launch
        sys.stdout.write(json.dumps(data, indent=2, default=str) + "\n")


def check_data_dir(data_dir: Path | None) -> None:
    if data_dir is None:
        return
    if not data_dir.is_dir() or not os.access(data_dir, os.R_OK | os.X_OK):
        raise DataError(f"data dir {str(data_dir)!r} is not a readable folder; pass --data-dir pointing at your GLUE/SuperGLUE files")


def primary_value(metrics: dict, split: str) -> str:
    primary = metrics.get("primary")
    value = metrics.get(split, {}).get(primary)
    return f"{value:.4f}" if isinstance(value, (int, float)) else "-"


def mib(value) -> str:
    return f"{value / 2**20:.0f} MiB" if isinstance(value, (int, float)) else "-"


def compact_json(value, max_items: int = 4) -> str:
    """JSON for a table cell: lists longer than `max_items` keep their first items and say how many more there are
    (a LoRAHub search records every evaluation); `--json` prints everything."""

    def shorten(item):
        if isinstance(item, dict):
            return {key: shorten(inner) for key, inner in item.items()}
        if isinstance(item, list):
            kept = [shorten(inner) for inner in item[:max_items]]
            return kept + [f"... {len(item) - max_items} more (see --json)"] if len(item) > max_items else kept
        return item

    return json.dumps(shorten(value))
