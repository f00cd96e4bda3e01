"""Source training throughput: transferkit vs PEFT under HF Trainer with length grouping, on real GLUE data.

Usage: python bench/train_throughput.py [--task sst2] [--methods prompt,lora] [--steps 60] [--rounds 3]
                                        [--precisions fp32,bf16] [--trainer-precisions fp32,bf16] [--plain-loop-steps 0]
                                        [--data-dir ../shared/data]

Per method, in this one process and alternating, `--rounds` times, each side trains on the same
training examples in batches of 32 (max length 128) for `--steps` optimiser steps and is then scored
on the same held-out dev examples (SST-2: its 1,000-example dev split):
- transferkit: `train_source` with its defaults (a fresh registry) at each of `--precisions` (fp32,
  the default, and `--precision bf16`: the frozen backbone's weights in bf16 under bf16 autocast,
  trainable parameters fp32); examples/s from the training loop's own timing of optimiser steps
  (evaluation excluded);
- the baseline, "PEFT Trainer fp32" and "PEFT Trainer bf16" (`bf16=True`: autocast, fp32 weights), the
  faster of the two per method: `AutoModelForSequenceClassification` + `get_peft_model` (prompt
  tuning 20 tokens / prefix tuning 10 / LoRA r 8 on query,value) trained by transformers' `Trainer`
  with `train_sampling_strategy="group_by_length"` (its strongest stock setting: batches of similar
  lengths, padded per batch by `DataCollatorWithPadding`), no evaluation, logging or saving
  during training, AdamW with transferkit's rates (method rate for the adapter, 1e-2 for the
  classifier) and its schedule (linear warm-up over 6%, linear decay); examples/s = steps x 32 /
  the seconds from Trainer's `on_train_begin` to its last `on_step_end` (its one-off setup excluded);
- with `--plain-loop-steps N`, also "PEFT plain loop": the same model in a plain PyTorch loop over
  shuffled batches padded per batch (the README's earlier baseline).
`--task rte` runs the same at RTE's lengths (sentence pairs, mostly 60-128 tokens; its dev set is
the first half of the official validation set, as transferkit splits it).
Prints examples/s (training), the ratio to the faster PEFT Trainer setting, dev accuracy and eval examples/s; then the
achieved FLOP/s of transferkit's training step (measured step FLOPs / step time) as a fraction of an
fp32 and a bf16 matmul micro-benchmark run in this process. When `--precisions` includes bf16, every
transferkit expert is also predicted on the dev set in both precisions: eval examples/s of each and the
share of equal predictions (the lowest over rounds). On a CPU without bf16 instructions (AVX2 only),
where torch emulates bf16 far below fp32's rate, run `--precisions fp32 --trainer-precisions fp32`.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback

from transferkit.backbone import cpu_has_native_bf16, default_model_path, load_backbone
from transferkit.methods import get_method
from transferkit.registry import open_registry
from transferkit.tasks import load_splits, resolve_task
from transferkit.training.data import tokenize_examples
from transferkit.training.loop import TrainingConfig, predict
from transferkit.rebuild import load_expert_model
from transferkit.workflows import SourceJob, train_source

BATCH, MAX_LENGTH, HEAD_LR, WARMUP_RATIO = 32, 128, 1e-2, 0.06
TRAINER = "PEFT Trainer"  # + " fp32" / " bf16"; the faster of the two per method is the baseline


def peft_config(method: str):
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType

    if method == "prompt":
        return PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=20)
    if method == "prefix":
        return PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=10)
    if method == "lora":
        return LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, lora_dropout=0.0, target_modules=["query", "value"])
    raise SystemExit(f"no PEFT baseline for method {method!r}")


class StepClock(TrainerCallback):
    """Seconds from the start of Trainer's loop (its one-off setup excluded) to the end of the last step: batch
    loading, collation and the optimiser steps, the part that compares with transferkit's own step timing."""

    def __init__(self) -> None:
        self.started, self.seconds = 0.0, 0.0

    def on_train_begin(self, args, state, control, **kwargs):
        self.started = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        self.seconds = time.perf_counter() - self.started


def _peft_model(method: str, num_labels: int, lr: float, seed: int):
    from peft import get_peft_model
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.manual_seed(seed)
    path = default_model_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = get_peft_model(AutoModelForSequenceClassification.from_pretrained(path, num_labels=num_labels), peft_config(method))
    head = [p for n, p in model.named_parameters() if p.requires_grad and "classifier" in n]
    rest = [p for n, p in model.named_parameters() if p.requires_grad and "classifier" not in n]
    optimizer = torch.optim.AdamW([{"params": rest, "lr": lr}, {"params": head, "lr": HEAD_LR}], weight_decay=0.01)
    return tokenizer, model, optimizer


def _encode(tokenizer, examples) -> list[dict]:
    texts = [e.texts for e in examples]
    pairs = len(texts[0]) > 1
    encoded = tokenizer([t[0] for t in texts], [t[1] for t in texts] if pairs else None, truncation=True, max_length=MAX_LENGTH)
    return [{**{key: values[i] for key, values in encoded.items()}, "labels": e.label} for i, e in enumerate(examples)]


def _dev_accuracy(model, tokenizer, dev: list[dict]) -> tuple[float, float]:
    from transformers import DataCollatorWithPadding

    model.eval()
    correct, start = 0, time.perf_counter()
    collator = DataCollatorWithPadding(tokenizer, padding=True)
    with torch.no_grad():
        for begin in range(0, len(dev), 64):
            batch = collator(dev[begin:begin + 64])
            labels = batch.pop("labels")
            correct += int((model(**batch).logits.argmax(-1) == labels).sum())
    return correct / len(dev), len(dev) / (time.perf_counter() - start)


def _linear_schedule(optimizer, steps: int):
    warmup = int(steps * WARMUP_RATIO)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: (step + 1) / max(1, warmup) if step < warmup else max(0.0, (steps - step) / max(1, steps - warmup)))


def peft_trainer_run(method: str, splits, steps: int, precision: str, seed: int = 1) -> dict:
    """PEFT under HF Trainer with length-grouped sampling for `steps` batches: training examples/s, dev accuracy, eval examples/s."""
    from datasets import Dataset
    from transformers import DataCollatorWithPadding, Trainer, TrainingArguments

    tokenizer, model, optimizer = _peft_model(method, splits.task.num_labels, get_method(method).config_class.recommended_lr, seed)
    train = _encode(tokenizer, splits.train)
    dataset = Dataset.from_list([{**row, "length": len(row["input_ids"])} for row in train])
    arguments = TrainingArguments(
        output_dir=tempfile.mkdtemp(), per_device_train_batch_size=BATCH, max_steps=steps, seed=seed, use_cpu=True,
        train_sampling_strategy="group_by_length", length_column_name="length", report_to="none", save_strategy="no",
        eval_strategy="no", logging_strategy="no", disable_tqdm=True, dataloader_num_workers=0, remove_unused_columns=True,
        bf16=precision == "bf16",
    )
    clock = StepClock()
    trainer = Trainer(model=model, args=arguments, train_dataset=dataset, data_collator=DataCollatorWithPadding(tokenizer),
                      optimizers=(optimizer, _linear_schedule(optimizer, steps)), callbacks=[clock])
    trainer.train()
    accuracy, eval_rate = _dev_accuracy(model, tokenizer, _encode(tokenizer, splits.dev))
    return {"train_eps": steps * BATCH / clock.seconds, "dev": accuracy, "eval_eps": eval_rate}


def peft_plain_run(method: str, splits, steps: int, seed: int = 1) -> dict:
    """PEFT in a plain loop over shuffled batches padded per batch: training examples/s, dev accuracy, eval examples/s."""
    from transformers import DataCollatorWithPadding

    tokenizer, model, optimizer = _peft_model(method, splits.task.num_labels, get_method(method).config_class.recommended_lr, seed)
    schedule = _linear_schedule(optimizer, steps)
    collator = DataCollatorWithPadding(tokenizer, padding=True)
    train = _encode(tokenizer, splits.train)
    order = np.random.default_rng(seed).permutation(len(train))
    model.train()
    seconds = 0.0
    for step in range(steps):
        indices = order[(step * BATCH) % len(train):][:BATCH]
        start = time.perf_counter()
        loss = model(**collator([train[i] for i in indices])).loss
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        seconds += time.perf_counter() - start
    accuracy, eval_rate = _dev_accuracy(model, tokenizer, _encode(tokenizer, splits.dev))
    return {"train_eps": steps * BATCH / seconds, "dev": accuracy, "eval_eps": eval_rate}


def transferkit_run(method: str, registry, splits, data_dir: Path, steps: int, precision: str, predict_in: list[str],
                    seed: int = 1) -> dict:
    expert = train_source(registry, SourceJob(
        task=splits.task.name, method=method, data_dir=data_dir, show_progress=False,
        training=TrainingConfig(max_steps=steps, eval_every=steps, seed=seed, precision=precision),
    ))
    run = registry.get_run(expert.run_id)
    rates, predictions = {}, {}
    for at in predict_in:  # the same stored expert predicted in each precision: speed and agreement
        backbone = load_backbone(None, precision=at)
        model = load_expert_model(registry, expert, backbone)
        model.precision = at
        dev = tokenize_examples(splits.dev, backbone.tokenizer, MAX_LENGTH, regression=False)
        start = time.perf_counter()
        predictions[at] = predict(model, dev, 64, backbone.tokenizer.pad_token_id, splits.task)
        rates[at] = len(dev) / (time.perf_counter() - start)
        model.detach()
    return {
        "train_eps": run.cost["train_examples_per_second"],
        "dev": expert.metrics["dev"]["accuracy"],
        "flops_per_second": run.cost.get("train_flops_per_second"),
        "eval_eps": rates[precision],
        **{f"eval_eps_{at}": rate for at, rate in rates.items()},
        "bf16_agreement": float((predictions["fp32"] == predictions["bf16"]).mean()) if "bf16" in predictions else None,
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
    parser.add_argument("--task", default="sst2", help="a GLUE task in the data dir (sst2; rte for sentence pairs)")
    parser.add_argument("--methods", default="prompt,lora")
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--trainer-precisions", default="fp32,bf16", help="PEFT Trainer runs: fp32, and bf16=True (autocast)")
    parser.add_argument("--plain-loop-steps", type=int, default=0, help="also time PEFT in a plain loop (0: skip)")
    parser.add_argument("--data-dir", default=os.environ.get("TRANSFERKIT_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    args = parser.parse_args()
    data_dir = Path(args.data_dir)
    methods, precisions = args.methods.split(","), args.precisions.split(",")
    predict_in = ["fp32", "bf16"] if "bf16" in precisions else ["fp32"]  # bf16 only when asked: AVX2 CPUs emulate it
    baselines = [(f"{TRAINER} {p}", args.steps, functools.partial(peft_trainer_run, precision=p)) for p in args.trainer_precisions.split(",")]
    if args.plain_loop_steps:
        baselines.append(("PEFT plain loop", args.plain_loop_steps, peft_plain_run))
    sides = [f"transferkit {precision}" for precision in precisions] + [side for side, _, _ in baselines]
    splits = load_splits(resolve_task(args.task), data_dir, seed=1)
    registry = open_registry(f"sqlite:///{tempfile.mkdtemp()}/bench.db")
    results: dict[tuple[str, str], list[dict]] = {}
    failures: dict[tuple[str, str], str] = {}
    for _ in range(args.rounds):
        for method in methods:
            for precision in precisions:
                results.setdefault((method, f"transferkit {precision}"), []).append(
                    transferkit_run(method, registry, splits, data_dir, args.steps, precision, predict_in))
            for side, steps, run in baselines:
                if (method, side) in failures:
                    continue
                try:
                    results.setdefault((method, side), []).append(run(method, splits, steps))
                except Exception as error:  # noqa: BLE001 - a baseline that cannot run is reported, not fatal
                    failures[(method, side)] = f"{type(error).__name__}: {error}"
    print(f"{splits.task.name}, batch {BATCH}, max length {MAX_LENGTH}, {args.steps} steps, {len(splits.dev)} dev examples, "
          f"{args.rounds} alternating rounds, medians; baseline: the faster {TRAINER} (group_by_length) setting, "
          f"torch threads {torch.get_num_threads()}")
    print(f"{'method':7} {'side':17} {'train ex/s':>10} {'vs baseline':>11} {'dev acc':>8} {'eval ex/s':>9}")
    for method in methods:
        trainer_rates = [statistics.median(r["train_eps"] for r in runs)
                         for (m, side), runs in results.items() if m == method and side.startswith(TRAINER)]
        baseline = max(trainer_rates) if trainer_rates else None
        for side in sides:
            runs = results.get((method, side))
            if not runs:
                if (method, side) in failures:
                    print(f"{method:7} {side:17} {'failed':>10}  {failures[(method, side)][:110]}")
                continue
            rate = statistics.median(r["train_eps"] for r in runs)
            ratio = f"{rate / baseline:11.2f}" if baseline else f"{'n/a':>11}"
            print(f"{method:7} {side:17} {rate:10.1f} {ratio} {statistics.median(r['dev'] for r in runs):8.4f} "
                  f"{statistics.median(r['eval_eps'] for r in runs):9.1f}")
    if "bf16" in predict_in:
        print_prediction_agreement(results, methods, precisions)
    print_hardware_efficiency(results, methods, precisions)


def print_prediction_agreement(results: dict, methods: list[str], precisions: list[str]) -> None:
    print(f"\nprediction on the dev set: each transferkit expert predicted in fp32 and in bf16 (eval ex/s, share of equal predictions)")
    print(f"{'method':7} {'trained in':10} {'fp32 ex/s':>9} {'bf16 ex/s':>9} {'bf16/fp32':>9} {'same':>7}")
    for method in methods:
        for precision in precisions:
            runs = results[(method, f"transferkit {precision}")]
            fp32_rate, bf16_rate = (statistics.median(r[k] for r in runs) for k in ("eval_eps_fp32", "eval_eps_bf16"))
            print(f"{method:7} {precision:10} {fp32_rate:9.1f} {bf16_rate:9.1f} {bf16_rate / fp32_rate:9.2f} "
                  f"{min(r['bf16_agreement'] for r in runs):7.1%}")


def print_hardware_efficiency(results: dict, methods: list[str], precisions: list[str]) -> None:
    fp32 = matmul_flops_per_second(torch.float32)
    bf16 = matmul_flops_per_second(torch.bfloat16) if "bf16" in precisions else None
    print(f"\nmatmul micro-benchmark (1536^3): fp32 {fp32 / 1e9:.1f} GFLOP/s"
          + (f", bf16 {bf16 / 1e9:.1f} GFLOP/s" if bf16 else "")
          + f"; CPU bf16 instructions (AVX512-BF16 or AMX): {'yes' if cpu_has_native_bf16() else 'no'}")
    print(f"{'method':7} {'precision':9} {'step GFLOP/s':>12} {'of fp32 matmul':>14} {'of bf16 matmul':>14}")
    for method in methods:
        for precision in precisions:
            runs = results[(method, f"transferkit {precision}")]
            achieved = statistics.median(r["flops_per_second"] for r in runs)
            of_bf16 = f"{achieved / bf16:14.0%}" if bf16 else f"{'n/a':>14}"
            print(f"{method:7} {precision:9} {achieved / 1e9:12.1f} {achieved / fp32:14.0%} {of_bf16}")


if __name__ == "__main__":
    main()
