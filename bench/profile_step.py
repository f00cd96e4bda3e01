"""Where a transferkit training step spends its time: torch.profiler's top operators, per configuration.

Usage: python bench/profile_step.py [--task sst2] [--method lora] [--precisions fp32,bf16]
                                    [--task-prompt-lengths 8,0] [--steps 20] [--top 15] [--data-dir ../shared/data]

For each (precision, task-prompt length) it builds the same model `train-source` trains (the packaged
backbone, the method's defaults, the task's description prompt), runs `--steps` training steps over
length-bucketed batches of 32 real training examples (max length 128), after 3 warm-up steps, and
prints: examples/s, the mean sequence length the backbone saw (task prompt and virtual tokens included),
and the operators that took the most self CPU time. A step is forward, loss, backward and AdamW, as in
the training loop (no evaluation, no checkpoint). The baseline in the same run is the first
configuration (fp32 with the default task prompt): every row's speed is also shown relative to it.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

from transferkit.backbone import load_backbone
from transferkit.methods import get_method
from transferkit.tasks import load_splits, resolve_task
from transferkit.training.data import collate, length_bucketed_batches, tokenize_examples
from transferkit.workflows import build_task_model

BATCH, MAX_LENGTH, WARMUP = 32, 128, 3


def run(task_name: str, method: str, precision: str, prompt_length: int, steps: int, data_dir: Path, top: int) -> dict:
    task = resolve_task(task_name)
    splits = load_splits(task, data_dir, seed=1)
    backbone = load_backbone(None, precision=precision)
    config = get_method(method).config_class()
    model = build_task_model(task, method, config, backbone, precision, prompt_length)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=get_method(method).config_class.recommended_lr)
    split = tokenize_examples(splits.train, backbone.tokenizer, MAX_LENGTH, task.is_regression)
    batches = length_bucketed_batches(split.lengths(), BATCH, seed=1)[: WARMUP + steps]
    loss_fn = torch.nn.MSELoss() if task.is_regression else torch.nn.CrossEntropyLoss()
    model.train()

    lengths: list[int] = []  # the sequence length the backbone sees: task prompt and virtual tokens included
    seen = backbone.model.register_forward_pre_hook(
        lambda module, args, kwargs: lengths.append(int(kwargs["inputs_embeds"].shape[1])), with_kwargs=True)

    def step(indices: list[int]) -> None:
        batch = collate(split, indices, backbone.tokenizer.pad_token_id)
        labels = batch.pop("labels")
        logits = model(**batch)
        loss = loss_fn(logits.squeeze(-1) if task.is_regression else logits, labels)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for indices in batches[:WARMUP]:
        step(indices)
    lengths.clear()
    started = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for indices in batches[WARMUP:]:
            step(indices)
    seconds = time.perf_counter() - started
    seen.remove()
    model.detach()
    table = profiler.key_averages().table(sort_by="self_cpu_time_total", row_limit=top, max_name_column_width=40)
    return {"examples_per_second": steps * BATCH / seconds, "mean_length": sum(lengths) / len(lengths), "table": table}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="sst2")
    parser.add_argument("--method", default="lora")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--task-prompt-lengths", default="8,0")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--data-dir", default=os.environ.get("TRANSFERKIT_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    args = parser.parse_args()
    configurations = [(p, int(n)) for p in args.precisions.split(",") for n in args.task_prompt_lengths.split(",")]
    results = {c: run(args.task, args.method, *c, args.steps, Path(args.data_dir), args.top) for c in configurations}
    baseline = results[configurations[0]]["examples_per_second"]
    print(f"{args.task}, {args.method}, batch {BATCH}, {args.steps} steps after {WARMUP} warm-up, torch threads {torch.get_num_threads()}; "
          f"baseline: {configurations[0][0]} with task prompt {configurations[0][1]}")
    print(f"{'precision':9} {'task prompt':>11} {'train ex/s':>10} {'vs baseline':>11} {'mean length':>11}")
    for (precision, length), result in results.items():
        print(f"{precision:9} {length:11d} {result['examples_per_second']:10.1f} {result['examples_per_second'] / baseline:11.2f} "
              f"{result['mean_length']:11.1f}")
    for (precision, length), result in results.items():
        print(f"\n== {precision}, task prompt {length}: top operators by self CPU time\n{result['table']}")


if __name__ == "__main__":
    main()
