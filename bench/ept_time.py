"""EPT vs plain prompt tuning of (about) the same trainable-parameter count: training time per step.

Usage: python bench/ept_time.py [--tasks sst2,rte] [--steps 40] [--rounds 2] [--data-dir ../shared/data]

EPT (defaults: 10-token prompt + rank-4 embedding update + fusion + 2 subspaces, 8,194
trained expert parameters on MiniLM) against the baseline named here, a 20-token `prompt`
(7,680), both with the 8-token task prompt every expert carries. Same task, seed, batch
(32), max length (128) and steps; the two run alternately, `--rounds` times, in this one
process, so a slower or busier stretch of the machine hits both. Time is the loop's
training seconds (optimiser steps only, evaluation excluded). Prints per-task medians and
the EPT / prompt time ratio (below 1 = EPT is faster).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
from pathlib import Path

from transferkit.registry import open_registry
from transferkit.training.loop import TrainingConfig
from transferkit.workflows import SourceJob, train_source

ARMS = {"prompt (20 tokens)": ("prompt", ["num_virtual_tokens=20"]), "ept (defaults)": ("ept", [])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", default="sst2,rte")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--data-dir", default=os.environ.get("TRANSFERKIT_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    args = parser.parse_args()
    registry = open_registry(f"sqlite:///{tempfile.mkdtemp()}/bench.db")
    results: dict[tuple[str, str], list[dict]] = {}
    for task in args.tasks.split(","):
        for _ in range(args.rounds):
            for arm, (method, options) in ARMS.items():
                expert = train_source(registry, SourceJob(
                    task=task, method=method, method_options=options, data_dir=Path(args.data_dir), show_progress=False,
                    # One dev evaluation at the end: the bench times training, not evaluation.
                    training=TrainingConfig(max_steps=args.steps, eval_every=args.steps, seed=1),
                ))
                cost = registry.get_run(expert.run_id).cost
                tensors, _ = registry.load_expert_tensors(expert)
                results.setdefault((task, arm), []).append({
                    "params": sum(t.numel() for name, t in tensors.items() if name.startswith("expert.")),
                    "seconds_per_step": cost["train_seconds"] / cost["steps"],
                    "dev": expert.metrics["dev"][expert.metrics["primary"]],
                })
    print(f"{args.steps} steps x 32, max length 128, fp32, packaged MiniLM, {args.rounds} alternating rounds; baseline: prompt (20 tokens)")
    print(f"{'task':6} {'arm':20} {'expert params':>13} {'s/step (median)':>16} {'vs prompt':>9} {'dev (last round)':>16}")
    for task in args.tasks.split(","):
        baseline = statistics.median(r["seconds_per_step"] for r in results[(task, "prompt (20 tokens)")])
        for arm in ARMS:
            runs = results[(task, arm)]
            median = statistics.median(r["seconds_per_step"] for r in runs)
            print(f"{task:6} {arm:20} {runs[-1]['params']:13,d} {median:16.3f} {median / baseline:9.2f} {runs[-1]['dev']:16.4f}")


if __name__ == "__main__":
    main()
