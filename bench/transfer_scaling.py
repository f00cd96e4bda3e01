"""Transfer training cost as the registry grows: 1, 4, 16 and 64 source experts in the mixture.

Usage: python bench/transfer_scaling.py [--sources 1,4,16,64] [--steps 8] [--method lora] [--rounds 2]

Synthetic LoRA (or adapter) experts with random weights on the real packaged MiniLM (they are
frozen sources; their values do not change the cost), a PEMT mixture with a new target adapter,
batches of 32 real RTE training examples (max length 128). For each source count: seconds per
training step (forward + backward + optimiser step, median over steps after one warm-up step,
alternating the configurations `--rounds` times) with top-2 routing and with dense routing (every
expert evaluated in one batched einsum over stacked weights), and the peak RSS growth of building
and training the mixture. Baseline named here: the same mixture with 1 source.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch

from transferkit.backbone import load_backbone
from transferkit.composition.pemt import build_mixture
from transferkit.methods import get_method
from transferkit.modeling import TaskModel
from transferkit.task_prompt import TaskPrompt, description_prompt
from transferkit.tasks import load_splits, resolve_task
from transferkit.training.cost import _peak_rss_bytes, _reset_peak_rss
from transferkit.training.data import collate, length_bucketed_batches, tokenize_examples


def synthetic_experts(backbone, method: str, count: int) -> list:
    method_type = get_method(method)
    experts = []
    for seed in range(count):
        torch.manual_seed(seed)
        expert = method_type.build(method_type.config_class(), backbone)
        with torch.no_grad():
            for parameter in expert.parameters():
                parameter.normal_(0, 0.02)
        experts.append(expert)
    return experts


def time_steps(backbone, experts, route_top_k, batches, task) -> tuple[float, int]:
    _reset_peak_rss()
    before = _peak_rss_bytes(since_reset=True)
    mixture = build_mixture(experts, backbone, route_top_k, learn_gate=True)
    target = get_method("adapter").build(get_method("adapter").config_class(), backbone)
    prompt = TaskPrompt(description_prompt(task.description, backbone, 8))
    model = TaskModel(backbone, target, task.num_labels, task_prompt=prompt, composition=mixture)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    times = []
    try:
        for batch in batches:
            labels = batch.pop("labels")
            start = time.perf_counter()
            loss = torch.nn.functional.cross_entropy(model(**batch), labels) + 0.1 * model.composition.auxiliary_loss()
            loss.backward()
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            times.append(time.perf_counter() - start)
            batch["labels"] = labels
    finally:
        model.detach()
    return statistics.median(times[1:]), _peak_rss_bytes(since_reset=True) - before


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", default="1,4,16,64")
    parser.add_argument("--steps", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--method", default="lora", choices=["lora", "adapter"])
    parser.add_argument("--data-dir", default=os.environ.get("TRANSFERKIT_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    args = parser.parse_args()
    backbone = load_backbone(None)
    task = resolve_task("rte")
    split = tokenize_examples(load_splits(task, Path(args.data_dir), seed=1).train, backbone.tokenizer, 128, regression=False)
    order = length_bucketed_batches(split.lengths(), 32, seed=1)[: args.steps + 1]
    batches = [collate(split, indices, backbone.tokenizer.pad_token_id) for indices in order]
    counts = [int(c) for c in args.sources.split(",")]
    pool = synthetic_experts(backbone, args.method, max(counts))
    results: dict[tuple[int, str], list[tuple[float, int]]] = {}
    for _ in range(args.rounds):
        for count in counts:
            for routing, top_k in (("top-2", min(2, count)), ("dense", None)):
                results.setdefault((count, routing), []).append(time_steps(backbone, pool[:count], top_k, batches, task))
    print(f"PEMT transfer step, {args.method} sources on the packaged MiniLM, RTE batches of 32 (max length 128), "
          f"{args.steps} steps x {args.rounds} rounds, medians; baseline: 1 source")
    print(f"{'sources':>7} {'routing':>7} {'s/step':>8} {'vs 1 source':>11} {'peak RSS growth':>15}")
    for routing in ("top-2", "dense"):
        baseline = statistics.median(s for s, _ in results[(counts[0], routing)])
        for count in counts:
            runs = results[(count, routing)]
            seconds = statistics.median(s for s, _ in runs)
            growth = max(m for _, m in runs)
            print(f"{count:7d} {routing:>7} {seconds:8.3f} {seconds / baseline:11.2f} {growth / 2**20:12.0f} MiB")


if __name__ == "__main__":
    main()
