"""What crash safety costs: training time with checkpoints every N steps against none, on the packaged MiniLM.

Usage: python bench/checkpoint_overhead.py [--steps 40] [--every 0,20,5,1] [--method lora] [--data-dir ../shared/data]
Prints one row per checkpoint interval. Baseline named in the same run: no checkpoints (--every 0);
the overhead column is the extra wall time over it (noisy on a shared machine), and `saves %` is the
measured time spent saving as a share of that run's wall time (the direct measure). The
checkpoint's size is shown too. Real SST-2 examples (a seeded 512-example subset), batch 16,
max length 64, so a step is short and the relative overhead is a worst case.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import torch

from transferkit.backbone import load_backbone
from transferkit.methods import get_method
from transferkit.tasks import load_splits, resolve_task
from transferkit.training.checkpoint import Checkpointer, list_checkpoints
from transferkit.training.loop import TrainingConfig, train
from transferkit.training.run import tokenize_splits
from transferkit.workflows import build_task_model


class TimedCheckpointer(Checkpointer):
    """A Checkpointer that records how long each save takes and how large the checkpoint is."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.seconds: list[float] = []
        self.bytes = 0

    def save(self, *args, **kwargs):
        start = time.perf_counter()
        folder = super().save(*args, **kwargs)
        self.seconds.append(time.perf_counter() - start)
        self.bytes = list_checkpoints(self.folder)[-1].bytes
        return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--every", default="0,20,5,1", help="comma-separated checkpoint intervals; 0 (none) is the baseline")
    parser.add_argument("--method", default="lora")
    parser.add_argument("--data-dir", default=os.environ.get("TRANSFERKIT_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    args = parser.parse_args()
    intervals = [int(x) for x in args.every.split(",")]
    if 0 not in intervals:
        intervals.insert(0, 0)
    task = resolve_task("glue/sst2")
    splits = load_splits(task, Path(args.data_dir), seed=1, max_train_examples=512)
    backbone = load_backbone(None)
    config = TrainingConfig(max_steps=args.steps, batch_size=16, max_length=64, eval_every=args.steps, seed=1)
    method = get_method(args.method)
    config.lr = method.config_class.recommended_lr
    train_split, dev_split, _ = tokenize_splits(splits, backbone, config.max_length)
    test_split = dev_split  # evaluation is not what is measured: one small eval set for both
    rows = []
    for every in intervals:
        torch.manual_seed(1)
        model = build_task_model(task, method.name, method.config_class(), backbone, config.precision, 8)
        checkpointer = TimedCheckpointer(Path(tempfile.mkdtemp()) / "run", every)
        result = train(model, task, train_split, dev_split, test_split, config, backbone.tokenizer.pad_token_id,
                       show_progress=False, checkpointer=checkpointer)
        model.detach()
        rows.append((every, result.cost["train_seconds"], result.cost["wall_seconds"], checkpointer.seconds, checkpointer.bytes))
    baseline_wall = next(wall for every, _, wall, _, _ in rows if every == 0)
    print(f"SST-2 subset, {args.steps} steps x 16, max length 64, {args.method}, packaged MiniLM, {torch.get_num_threads()} threads; "
          "baseline: no checkpoints")
    print(f"{'every':>5} {'saves':>5} {'ms/save':>8} {'ckpt KiB':>9} {'train s':>8} {'wall s':>7} {'saves %':>8} {'overhead':>9}")
    for every, train_seconds, wall, saves, size in rows:
        per_save = 1000 * sum(saves) / len(saves) if saves else 0.0
        overhead = 100 * (wall - baseline_wall) / baseline_wall
        print(f"{every:5d} {len(saves):5d} {per_save:8.1f} {size / 1024:9.0f} {train_seconds:8.2f} {wall:7.2f} "
              f"{100 * sum(saves) / wall:7.2f}% {overhead:8.1f}%")


if __name__ == "__main__":
    main()
