"""Inference cost of a composed expert: the PEMT mixture, its merged form, and a single expert.

Usage: python bench/merged_inference.py [--sources 4] [--top-k 2] [--rounds 3] [--method lora]

Synthetic LoRA (or adapter) source experts with random weights on the real packaged MiniLM, a PEMT
mixture with a task-level gate (`--gate-input task`, so its weights do not depend on the input) and a
new target adapter, and the same model collapsed by `transferkit merge`'s code path into one static
expert of the sources' method. Each model classifies the real RTE dev split (138 examples; batch 64, max
length 128, no autograd); the configurations alternate `--rounds` times and the table shows the median
eval examples/second. Baseline named here: a single source expert of the same method plus the same
target adapter, which is what a user would run without composition. The merged model's logits are
compared with the mixture's (largest absolute difference).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from transfer_scaling import synthetic_experts

from transferkit.backbone import load_backbone
from transferkit.composition.fixed import FixedExperts
from transferkit.composition.merge import fixed_weights
from transferkit.composition.pemt import build_mixture
from transferkit.methods import get_method
from transferkit.modeling import TaskModel
from transferkit.task_prompt import TaskPrompt, description_prompt
from transferkit.tasks import load_splits, resolve_task
from transferkit.training.data import collate, sequential_batches, tokenize_examples


@torch.no_grad()
def classify(model: TaskModel, batches: list[dict]) -> tuple[float, torch.Tensor]:
    """Seconds to classify every batch, and the logits."""
    model.eval()
    start = time.perf_counter()
    logits = [model(**batch) for batch in batches]
    return time.perf_counter() - start, torch.cat(logits).float()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sources", type=int, default=4)
    parser.add_argument("--top-k", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--method", default="lora", choices=["lora", "adapter"])
    parser.add_argument("--data-dir", default=os.environ.get("TRANSFERKIT_DATA_DIR", str(Path(__file__).resolve().parents[2] / "shared" / "data")))
    args = parser.parse_args()
    backbone = load_backbone(None)
    task = resolve_task("rte")
    dev = tokenize_examples(load_splits(task, Path(args.data_dir), seed=1).dev, backbone.tokenizer, 128, regression=False)
    batches = []
    for indices in sequential_batches(dev.lengths(), 64):
        batch = collate(dev, indices, backbone.tokenizer.pad_token_id)
        batch.pop("labels")
        batches.append(batch)
    examples = len(dev)

    adapter = get_method("adapter")
    torch.manual_seed(0)
    target_state = adapter.build(adapter.config_class(), backbone).export_tensors()
    prompt = description_prompt(task.description, backbone, 8)
    sources = synthetic_experts(backbone, args.method, args.sources)

    def with_target(composition) -> TaskModel:
        target = adapter.build(adapter.config_class(), backbone)
        target.import_tensors(target_state)
        torch.manual_seed(0)
        return TaskModel(backbone, target, task.num_labels, task_prompt=TaskPrompt(prompt.clone()), composition=composition)

    mixture = with_target(build_mixture(sources, backbone, args.top_k, learn_gate=True, gate_input="task"))
    with torch.no_grad():  # a trained gate is not uniform: give it distinct task-level logits
        for parameter in mixture.composition.parameters():
            if parameter.requires_grad:
                parameter.normal_(0, 0.5)
    weights = fixed_weights(mixture)
    merged_sources = mixture.composition.stack.merge(weights, backbone)
    state = mixture.export_tensors()
    mixture.detach()
    merged = with_target(FixedExperts(merged_sources))
    merged.import_tensors({
        **{k: v for k, v in state.items() if not k.startswith("composition.")},
        **{f"composition.{k}": v for k, v in merged_sources.export_tensors().items()},
    })
    merged.detach()
    single = with_target(FixedExperts(sources[0]))
    single.detach()

    models = {"single expert": single, f"mixture ({args.sources} src, top-{args.top_k})": mixture, "merged": merged}
    seconds: dict[str, list[float]] = {name: [] for name in models}
    logits: dict[str, torch.Tensor] = {}
    for _ in range(args.rounds):
        for name, model in models.items():
            model.attach()
            try:
                classify(model, batches[:1])  # warm-up
                elapsed, logits[name] = classify(model, batches)
            finally:
                model.detach()
            seconds[name].append(elapsed)
    difference = float((logits["merged"] - logits[f"mixture ({args.sources} src, top-{args.top_k})"]).abs().max())
    baseline = statistics.median(seconds["single expert"])
    print(f"Inference on {examples} real RTE dev examples (batch 64, max length 128), {args.method} sources on the "
          f"packaged MiniLM, median of {args.rounds} alternating rounds; baseline: single expert")
    print(f"{'model':26} {'eval ex/s':>9} {'time vs single':>14}")
    for name in models:
        median = statistics.median(seconds[name])
        print(f"{name:26} {examples / median:9.1f} {median / baseline:14.2f}")
    print(f"merged vs mixture: largest absolute logit difference {difference:.2e}")


if __name__ == "__main__":
    main()
