"""Source training throughput: transferkit vs plain PEFT + a standard PyTorch loop, on real SST-2.

Usage: python bench/train_throughput.py [--methods prompt,prefix,lora] [--steps 60] [--rounds 2]
                                        [--precisions fp32,bf16] [--max-length-padding-steps 20]
                                        [--data-dir ../shared/data]

Per method, in this one process and alternating, `--rounds` times:
- transferkit: `train_source` with its defaults (a fresh registry) at each of `--precisions`
  (fp32, the default, and `--precision bf16`: the frozen backbone's weights in bf16 under bf16
  autocast, trainable parameters fp32), the training loop's own timing of optimiser steps
  (evaluation excluded);
- the baseline named "PEFT dynamic": `AutoModelForSequenceClassification` + `get_peft_model`
  (prompt tuning 20 tokens / prefix tuning 10 / LoRA r 8 on query,value), fp32 weights, shuffled
  batches padded per batch by `DataCollatorWithPadding` (PEFT's strongest plain setup), AdamW with
  the same learning rates as transferkit (method rate for the adapter, 1e-2 for the classifier);
- "PEFT max-length": the same with every batch padded to 128 tokens (fewer steps: it is slow).
Both sides see batches of 32 SST-2 training examples (max length 128) from the same split and are
evaluated on the same 1,000 held-out dev examples after the same number of training examples.
Prints examples/s (training), the ratio to PEFT dynamic, dev accuracy and eval examples/s; then the
achieved FLOP/s of transferkit's training step (measured step FLOPs / step time) as a fraction of an
fp32 and a bf16 matmul micro-benchmark run in this process.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from transferkit.backbone import default_model_path, load_backbone
from transferkit.methods import get_method
from transferkit.registry import open_registry
from transferkit.tasks import load_splits, resolve_task
from transferkit.training.data import tokenize_examples
from transferkit.training.loop import TrainingConfig, predict
from transferkit.rebuild import load_expert_model
from transferkit.workflows import SourceJob, train_source

BATCH, MAX_LENGTH, HEAD_LR = 32, 128, 1e-2


def peft_config(method: str):
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType

    if method == "prompt":
        return PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=20)
    if method == "prefix":
        return PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=10)
    if method == "lora":
        return LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"])
    raise SystemExit(f"no PEFT baseline for method {method!r}")


def peft_run(method: str, splits, steps: int, pad_to_max: bool, seed: int = 1) -> dict:
    """Train a PEFT model for `steps` batches; return training examples/s, dev accuracy and eval examples/s."""
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding

    torch.manual_seed(seed)
    path = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = get_peft_model(AutoModelForSequenceClassification.from_pretrained(path, num_labels=2), peft_config(method))
    lr = get_method(method).config_class.recommended_lr
    head = [p for n, p in model.named_parameters() if p.requires_grad and "classifier" in n]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and "classifier" not in n]
    optimizer = torch.optim.AdamW([{"params": rest, "lr": lr}, {"params": head, "lr": HEAD_LR}], weight_decay=0.01)
    collator = DataCollatorWithPadding(tokenizer, padding="max_length" if pad_to_max else True, max_length=MAX_LENGTH)

    def encode(examples) -> list[dict]:
        encoded = tokenizer([e.texts[0] for e in examples], truncation=True, max_length=MAX_LENGTH)
        return [{**{key: values[i] for key, values in encoded.items()}, "labels": e.label} for i, e in enumerate(examples)]

    train, dev = encode(splits.train), encode(splits.dev)
    order = np.random.default_rng(seed).permutation(len(train))
    model.train()
    seconds = 0.0
    for step in range(steps):
        indices = order[(step * BATCH) % len(train):][:BATCH]
        start = time.perf_counter()
        batch = collator([train[i] for i in indices])
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - start
    model.eval()
    correct, start = 0, time.perf_counter()
    dev_collator = DataCollatorWithPadding(tokenizer, padding=True)
    with torch.no_grad():
        for begin in range(0, len(dev), 64):
            batch = dev_collator(dev[begin:begin + 64])
            labels = batch.pop("labels")
            correct += int((model(**batch).logits.argmax(-1) == labels).sum())
    eval_seconds = time.perf_counter() - start
    return {"train_eps": steps * BATCH / seconds, "dev": correct / len(dev), "eval_eps": len(dev) / eval_seconds}


def transferkit_run(method: str, registry, splits, data_dir: Path, steps: int, precision: str, seed: int = 1) -> dict:
    expert = train_source(registry, SourceJob(
        task="glue/sst2", method=method, data_dir=data_dir, show_progress=False,
        training=TrainingConfig(max_steps=steps, eval_every=steps, seed=seed, precision=precision),
    ))
    run = registry.get_run(expert.run_id)
    backbone = load_backbone(None, precision=precision)
    model = load_expert_model(registry, expert, backbone)
    model.precision = precision
    dev = tokenize_examples(splits.dev, backbone.tokenizer, MAX_LENGTH, regression=False)
    start = time.perf_counter()
    predict(model, dev, 64, backbone.tokenizer.pad_token_id, splits.task)
    eval_seconds = time.perf_counter() - start
    model.detach()
    return {
        "train_eps": run.cost["train_examples_per_second"],
        "dev": expert.metrics["dev"]["accuracy"],
        "flops_per_second": run.cost.get("train_flops_per_second"),
        "eval_eps": len(dev) / eval_seconds,
    }


def matmul_flops_per_second(dtype: torch.dtype, size: int = 1536, repeats: int = 20) -> float:
    a, b = torch.randn(size, size, dtype=dtype), torch.randn(size, size, dtype=dtype)
    for _ in range(3):
        a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", default="prompt,prefix,lora")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--max-length-padding-steps", type=int, default=20)
    parser.add_argument("--data-dir", default=os.environ.get("TRANSFERKIT_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    args = parser.parse_args()
    data_dir = Path(args.data_dir)
    precisions = args.precisions.split(",")
    sides = [f"transferkit {precision}" for precision in precisions] + ["PEFT dynamic", "PEFT max-length"]
    splits = load_splits(resolve_task("sst2"), data_dir, seed=1)
    registry = open_registry(f"sqlite:///{tempfile.mkdtemp()}/bench.db")
    results: dict[tuple[str, str], list[dict]] = {}
    failures: dict[tuple[str, str], str] = {}
    for _ in range(args.rounds):
        for method in args.methods.split(","):
            for precision in precisions:
                results.setdefault((method, f"transferkit {precision}"), []).append(
                    transferkit_run(method, registry, splits, data_dir, args.steps, precision))
            for side, steps, pad_to_max in (("PEFT dynamic", args.steps, False), ("PEFT max-length", args.max_length_padding_steps, True)):
                if not steps or (method, side) in failures:
                    continue
                try:
                    results.setdefault((method, side), []).append(peft_run(method, splits, steps, pad_to_max))
                except Exception as error:  # noqa: BLE001 - a baseline that cannot run is reported, not fatal
                    failures[(method, side)] = f"{type(error).__name__}: {error}"
    fp32, bf16 = matmul_flops_per_second(torch.float32), matmul_flops_per_second(torch.bfloat16)

    print(f"SST-2, batch {BATCH}, max length {MAX_LENGTH}, {args.steps} steps ({args.max_length_padding_steps} for max-length "
          f"padding), {args.rounds} alternating rounds, medians; baseline: PEFT dynamic")
    print(f"{'method':7} {'side':16} {'train ex/s':>10} {'vs PEFT dyn':>11} {'dev acc':>8} {'eval ex/s':>9}")
    for method in args.methods.split(","):
        dynamic = results.get((method, "PEFT dynamic"))
        baseline = statistics.median(r["train_eps"] for r in dynamic) if dynamic else None
        for side in sides:
            runs = results.get((method, side))
            if not runs:
                if (method, side) in failures:
                    print(f"{method:7} {side:16} {'failed':>10}  {failures[(method, side)][:110]}")
                continue
            rate = statistics.median(r["train_eps"] for r in runs)
            ratio = f"{rate / baseline:11.2f}" if baseline else f"{'n/a':>11}"
            print(f"{method:7} {side:16} {rate:10.1f} {ratio} {statistics.median(r['dev'] for r in runs):8.4f} "
                  f"{statistics.median(r['eval_eps'] for r in runs):9.1f}")
    print(f"\nmatmul micro-benchmark (1536^3): fp32 {fp32 / 1e9:.1f} GFLOP/s, bf16 {bf16 / 1e9:.1f} GFLOP/s")
    print(f"{'method':7} {'precision':9} {'step GFLOP/s':>12} {'of fp32 matmul':>14} {'of bf16 matmul':>14}")
    for method in args.methods.split(","):
        for precision in precisions:
            runs = results[(method, f"transferkit {precision}")]
            achieved = statistics.median(r["flops_per_second"] for r in runs)
            print(f"{method:7} {precision:9} {achieved / 1e9:12.1f} {achieved / fp32:14.0%} {achieved / bf16:14.0%}")


if __name__ == "__main__":
    main()
