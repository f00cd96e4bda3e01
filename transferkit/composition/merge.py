"""`transferkit merge`: a trained mixture whose gate does not depend on the input, collapsed into one static expert.

With fixed per-layer weights g (uniform for `average`, a task-level gate for `pemt --gate-input task`,
after top-k routing), the mixed change to a module, sum_j g_j delta_j, is itself one expert of the
sources' method (`ExpertStack.merge`): LoRA sources become one LoRA whose rank is (used sources x r),
adapter sources one bottleneck of (used sources x width). The merged expert is self-contained: it
needs no sources at inference, and it costs one expert of that size however many sources the
registry held. The target's own expert, the task prompt and the head are kept as they are.

Merging checks itself: the merged model and the mixture run on the dev split, the largest absolute
logit difference is stored with the new expert, and the merged model's own dev and test metrics are
computed (they match the mixture's up to that difference).
"""

from __future__ import annotations

import time

import torch

from transferkit.backbone import load_backbone
from transferkit.composition.fixed import MERGED_METHOD, build_merged
from transferkit.composition.mixture import SourceMixture
from transferkit.errors import InvalidInputError
from transferkit.experts import artifact_metadata, expert_name
from transferkit.methods import METHODS
from transferkit.modeling import TaskModel
from transferkit.provenance import code_version, package_versions
from transferkit.rebuild import load_expert_model
from transferkit.registry import ExpertRecord, RegistryStore
from transferkit.task_prompt import TaskPrompt
from transferkit.tasks import compute_metrics, load_splits, resolve_task
from transferkit.training.data import TokenizedSplit, collate, sequential_batches
from transferkit.training.run import tokenize_splits

MERGED_FROM_ROLE = "merged-from"
# Largest absolute logit difference between the merged model and the mixture that counts as "the same outputs".
MERGE_TOLERANCE = 1e-3


def fixed_weights(model: TaskModel) -> dict[str, torch.Tensor]:
    """Per adapted module, the (J,) routed weights the mixture gives every input (zero for unused sources)."""
    mixture = model.composition
    if not isinstance(mixture, SourceMixture):
        raise InvalidInputError("only pemt and average experts (a gated mixture of LoRA or adapter sources) can be merged")
    if not mixture.input_independent:
        raise InvalidInputError(
            "this pemt expert's gate reads prompt states inside the encoder, which also see the input, so its weights "
            "differ per example and cannot be merged exactly; train it with --gate-input task, or merge an average expert"
        )
    if model.task_prompt is not None:
        mixture.observe_task_prompt(model.task_prompt())
    probe = torch.zeros(1, 1, model.backbone.hidden_size)
    per_layer = {}
    for layer in mixture.layers:
        weights, index = mixture.route(layer, probe)
        per_layer[layer] = torch.zeros(mixture.num_sources).scatter(0, index[0].cpu(), weights[0].detach().float().cpu())
    return {name: per_layer[layer] for name, layer in mixture.module_layer.items()}


@torch.no_grad()
def _logits(model: TaskModel, split: TokenizedSplit, pad_id: int, batch_size: int = 64) -> torch.Tensor:
    model.eval()
    outputs = torch.zeros(len(split), model.head.linear.out_features)
    for indices in sequential_batches(split.lengths(), batch_size):
        batch = collate(split, indices, pad_id)
        batch.pop("labels")
        outputs[indices] = model(**{k: v.to(model.device) for k, v in batch.items()}).float().cpu()
    return outputs


def merge_expert(
    registry: RegistryStore, reference: str, *, data_dir, name: str | None, command: list[str]
) -> tuple[ExpertRecord, float]:
    """Store the merged form of a mixture expert; returns it and the largest logit difference on the dev split."""
    source = registry.get_expert(reference)
    if source.method != "mixture":
        raise InvalidInputError(f"expert {source.name} is of method {source.method}, not a mixture; nothing to merge")
    run = registry.get_run(source.run_id)
    task = resolve_task(source.task_name)
    hyper = run.hyperparams
    backbone = load_backbone((hyper.get("job") or {}).get("model"))
    mixture_model = load_expert_model(registry, source, backbone)
    try:
        mixture_model.eval()
        weights = fixed_weights(mixture_model)
        stack = mixture_model.composition.stack
        merged_sources = stack.merge(weights, backbone)
        tensors = mixture_model.export_tensors()
    finally:
        mixture_model.detach()
    source_method = next(m for m in METHODS.values() if isinstance(merged_sources, m.module_class))
    config = dict(source.config)
    merged_config = {
        "source_method": source_method.name,
        "source_config": merged_sources.config.to_dict(),
        "target_method": config["target_method"],
        "target_config": config["target_config"],
        "merged_from": source.id,
        "strategy": config["strategy"],
        "gates": {name: [round(float(w), 6) for w in values] for name, values in weights.items()},
    }
    prompt_tensor = tensors.get("task_prompt.embedding")
    merged_model = build_merged(
        merged_config, backbone, tensors["head.linear.bias"].shape[0],
        TaskPrompt(prompt_tensor) if prompt_tensor is not None else None,
    )
    merged_model.import_tensors({
        **{k: v for k, v in tensors.items() if not k.startswith("composition.")},
        **{f"composition.{k}": v for k, v in merged_sources.export_tensors().items()},
    })
    splits = load_splits(task, data_dir, seed=run.seed, max_train_examples=hyper.get("max_train_examples"))
    _, dev, test = tokenize_splits(splits, backbone, hyper.get("max_length", 128))
    pad_id = backbone.tokenizer.pad_token_id
    started = time.perf_counter()
    try:
        merged_dev = _logits(merged_model, dev, pad_id)
        merged_test = _logits(merged_model, test, pad_id)
    finally:
        merged_model.detach()
    mixture_model = load_expert_model(registry, source, backbone)
    try:
        difference = float((merged_dev - _logits(mixture_model, dev, pad_id)).abs().max()) if len(dev) else 0.0
    finally:
        mixture_model.detach()
    if difference > MERGE_TOLERANCE:
        raise InvalidInputError(
            f"the merged model's logits differ from {source.name}'s by up to {difference:.2e} on the dev split "
            f"(tolerance {MERGE_TOLERANCE}); nothing was stored"
        )
    metrics = {"primary": source.metrics.get("primary")}
    for split_name, split, logits in (("dev", dev, merged_dev), ("test", test, merged_test)):
        predictions = logits.squeeze(-1) if task.is_regression else logits.argmax(-1)
        metrics[split_name] = compute_metrics(task, predictions.tolist(), split.labels.tolist(), split.groups)
    new_run = registry.start_run(
        kind="merge", command=command, hyperparams={"merged_from": source.id, "task": task.name}, seed=run.seed,
        code_version=code_version(), package_versions=package_versions(), data_fingerprint=splits.to_dict(),
    )
    stored_tensors = merged_model.export_tensors()
    expert = registry.register_expert(
        run_id=new_run.id,
        name=expert_name(registry, name, f"{source.name}-merged"),
        task_name=task.name,
        method=MERGED_METHOD,
        config=merged_config,
        backbone=source.backbone,
        backbone_id=source.backbone_id,
        trainable_params=sum(t.numel() for t in stored_tensors.values()),
        metrics=metrics,
        tensors=stored_tensors,
        tensor_metadata=artifact_metadata(MERGED_METHOD, merged_config, source.backbone_id, task.name,
                                          stored_tensors["head.linear.bias"].shape[0]),
        lineage=[(source.id, MERGED_FROM_ROLE, None)],
        extra={"max_logit_difference": difference, "label_names": source.extra.get("label_names"),
               "task_prompt_length": source.extra.get("task_prompt_length", 0)},
        cost={"wall_seconds": round(time.perf_counter() - started, 3), "device_kind": backbone.model.device.type},
    )
    return expert, difference
