"""Arrow (Ostapenko et al., ICML 2024; microsoft/mttl, PEFT): label-free per-token routing over LoRA sources,
from the sources' own weights.

For every module the sources adapt, source j's prototype v_j is the top right-singular vector of its change
ΔW_j = s_j B_j A_j (computed exactly from the factors: A_jᵀ = Q R, then the SVD of the small B_j Rᵀ; a
source that does not change the module gets a zero prototype). A token whose input to the module is h
scores every source by |<v_j, h>| (singular vectors have no sign); its top-k sources (`-O top_k`, default
2) are mixed by a softmax of their scores / `-O temperature` (default 1), the others get 0:

    y = base + Σ_j g_j(h) ΔW_j h

`transfer --strategy arrow`: the router is fixed (nothing about it is trained, no label is read); the
target's head, task prompt and target expert (`-O target=`, default an adapter) train on top. The
prototypes are stored in the expert (the sources are read from the registry when it loads, as for a
mixture); the mean routed share of each source over the dev set's real tokens is its lineage weight.

`initialise_gate` starts pemt's learned gate from Arrow instead of uniform (`transfer --gate-init arrow`):
pemt's gate in layer l is softmax(h_task · W_l) with h_task the mean task-prompt state entering the layer.
At the mean task state of a probe batch of training examples h̄, column j of W_l is set to the mean over
the layer's modules that read the layer's input of sign(<v_j, h̄>) v_j / temperature, so the gate's logits
at h̄ are Arrow's scores of h̄ (|<v_j, h̄>|, averaged over those modules) and the gate starts at Arrow's
dense routing of the task. With pemt's zero expert, the sources' columns are shifted along h̄ so that the
zero expert keeps its prior share at h̄. Layers none of whose modules read the layer's input stay uniform.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from transferkit.backbone import Backbone
from transferkit.composition.mixture import SourceMixture, layer_of
from transferkit.composition.plugins import (
    HookedComposition,
    Lineage,
    Preparation,
    Prepared,
    Strategy,
    StrategyContext,
    TargetOptions,
    build_target,
    check_config,
    rebuild_target,
)
from transferkit.errors import InvalidInputError
from transferkit.experts import load_method_expert
from transferkit.methods import MethodConfig
from transferkit.methods.base import option
from transferkit.methods.lora.stack import LoraStack
from transferkit.modeling import TaskModel
from transferkit.registry import ExpertReader, ExpertRecord
from transferkit.task_prompt import TaskPrompt
from transferkit.tasks import Example
from transferkit.training.data import collate, sequential_batches, tokenize_examples

ARROW_METHOD = "arrow"
DEFAULT_TOP_K = 2
PROBE_EXAMPLES = 32


def top_right_singular_vectors(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(J, in) unit top right-singular vectors of ΔW_j = B_j A_j from A (J, r, in) and B (J, out, r), without forming
    ΔW_j; the sign makes the largest-magnitude entry positive, and a zero change gets a zero vector."""
    vectors = torch.zeros(a.shape[0], a.shape[2], dtype=torch.float32)
    for j in range(a.shape[0]):
        q, r = torch.linalg.qr(a[j].double().t())  # A_jᵀ = Q R, so ΔW_j = (B_j Rᵀ) Qᵀ
        _, s, vh = torch.linalg.svd(b[j].double() @ r.t(), full_matrices=False)
        if s.numel() == 0 or float(s[0]) == 0.0:
            continue
        vector = q @ vh[0]
        vectors[j] = (vector * torch.sign(vector[vector.abs().argmax()])).float()
    return vectors


@dataclass
class ArrowConfig(TargetOptions):
    """`transfer --strategy arrow` options (`-O KEY=VALUE`)."""

    top_k: int | None = option(None, f"sources mixed per token (default {DEFAULT_TOP_K}, at most the number of sources)")
    temperature: float = option(1.0, "softmax temperature over the chosen sources' scores")

    def validate(self) -> None:
        if self.top_k is not None and self.top_k < 1:
            raise InvalidInputError(f"-O top_k must be at least 1, got {self.top_k}")
        if not (math.isfinite(self.temperature) and self.temperature > 0):
            raise InvalidInputError(f"-O temperature must be a positive number, got {self.temperature}")


class ArrowRouter(HookedComposition):
    """Frozen LoRA sources routed per token by |<prototype, input>|, top-k, softmax; nothing trainable."""

    def __init__(self, stack: LoraStack, num_sources: int, top_k: int, temperature: float) -> None:
        super().__init__()
        if not 1 <= top_k <= num_sources:
            raise InvalidInputError(f"-O top_k must be between 1 and the number of sources ({num_sources}), got {top_k}")
        self.stack, self.num_sources, self.top_k, self.temperature = stack, num_sources, top_k, temperature
        self.module_names = list(stack.module_names)
        for slot, name in enumerate(self.module_names):
            self.register_buffer(f"p{slot}", top_right_singular_vectors(*stack.factors(name)))
        self._mask: torch.Tensor | None = None
        self._sums: dict[str, torch.Tensor] | None = None
        self._tokens: dict[str, float] = {}

    def prototypes(self, name: str) -> torch.Tensor:
        return getattr(self, f"p{self.module_names.index(name)}")

    def routing(self, name: str, hidden: torch.Tensor) -> torch.Tensor:
        """(..., J) weights per token: softmax over the top-k scores |<v_j, h>| / temperature, 0 elsewhere."""
        scores = (hidden.float() @ self.prototypes(name).t()).abs()
        top, index = scores.topk(self.top_k, dim=-1)
        return torch.zeros_like(scores).scatter(-1, index, torch.softmax(top / self.temperature, dim=-1))

    def attach(self, backbone: Backbone, prompt_length: int) -> None:
        self.detach()
        self._handles.append(backbone.model.register_forward_pre_hook(self._mask_hook, with_kwargs=True))
        modules = dict(backbone.model.named_modules())
        for name in self.module_names:
            self._handles.append(modules[name].register_forward_hook(self._hook(name)))

    def _mask_hook(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        self._mask = kwargs.get("attention_mask")

    def _hook(self, name: str):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            weights = self.routing(name, args[0])  # (B, T, J)
            deltas = self.stack.deltas(name, args[0], output, None)  # code (B, T, J, r), up (J, out, r)
            change = torch.einsum("btjr,jor->bto", deltas.code * weights.unsqueeze(-1).to(deltas.code.dtype), deltas.up.to(deltas.code.dtype))
            if self._sums is not None:
                mask = self._mask.to(weights.dtype) if self._mask is not None and self._mask.shape == weights.shape[:2] else torch.ones_like(weights[..., 0])
                self._sums[name] = self._sums.get(name, 0) + (weights * mask.unsqueeze(-1)).sum((0, 1)).detach().cpu()
                self._tokens[name] = self._tokens.get(name, 0.0) + float(mask.sum())
            return output + change.to(output.dtype)

        return hook

    def start_recording(self) -> None:
        self._sums, self._tokens = {}, {}

    def stop_recording(self) -> dict[str, list[float]]:
        """Mean routed weight per source and module over the real tokens (task prompt included) since start_recording."""
        sums, self._sums = self._sums or {}, None
        return {name: [round(float(v) / max(self._tokens[name], 1.0), 6) for v in sums[name]] for name in self.module_names if name in sums}

    def export_tensors(self) -> dict[str, torch.Tensor]:
        return {f"prototype.{name}": self.prototypes(name).clone() for name in self.module_names}

    def import_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        expected = {f"prototype.{name}": tuple(self.prototypes(name).shape) for name in self.module_names}
        if set(tensors) != set(expected) or any(tuple(tensors[k].shape) != shape for k, shape in expected.items()):
            raise InvalidInputError(f"stored Arrow prototypes {sorted(tensors)[:2]} do not match the sources' modules")
        with torch.no_grad():
            for name in self.module_names:
                self.prototypes(name).copy_(tensors[f"prototype.{name}"])


def _probe_batch(examples: list[Example], model: TaskModel, max_length: int, regression: bool) -> dict[str, torch.Tensor]:
    split = tokenize_examples(examples[:PROBE_EXAMPLES], model.backbone.tokenizer, max_length, regression)
    batch = collate(split, list(range(len(split))), model.backbone.tokenizer.pad_token_id)
    batch.pop("labels")
    return {k: v.to(model.device) for k, v in batch.items()}


def prepare(ctx: StrategyContext, config: MethodConfig) -> Prepared:
    if not isinstance(config, ArrowConfig):
        raise TypeError("arrow needs an ArrowConfig")
    ctx.source_method(("lora",), "arrow (it routes by the top singular vector of each source's LoRA ΔW)")
    top_k = config.top_k or min(DEFAULT_TOP_K, len(ctx.ranking))
    preparation = Preparation(f"Arrow prototypes of {len(ctx.ranking)} LoRA sources")
    with preparation.measure():
        router = ArrowRouter(LoraStack(ctx.modules()), len(ctx.ranking), top_k, config.temperature)  # type: ignore[arg-type]
    target, target_method, target_config = build_target(config.target, ctx.backbone)
    model = TaskModel(ctx.backbone, target, ctx.task.num_labels, ctx.training.precision, ctx.prompt, router)
    stored = {"strategy": "arrow", "sources": ctx.source_ids, "top_k": top_k, "temperature": config.temperature,
              "target_method": target_method, "target_config": target_config}

    def finalize(trained: TaskModel) -> tuple[Lineage, dict]:
        router.start_recording()
        split = tokenize_examples(ctx.splits.dev, ctx.backbone.tokenizer, ctx.training.max_length, ctx.task.is_regression)
        was_training = trained.training
        trained.eval()
        with torch.no_grad():
            for indices in sequential_batches(split.lengths(), ctx.training.eval_batch_size):
                batch = collate(split, indices, ctx.backbone.tokenizer.pad_token_id)
                batch.pop("labels")
                trained(**{k: v.to(trained.device) for k, v in batch.items()})
        trained.train(was_training)
        per_module = router.stop_recording()
        per_layer: dict[str, list[float]] = {}
        for name, shares in per_module.items():
            per_layer.setdefault(layer_of(name), []).append(shares)  # type: ignore[arg-type]
        layers = {layer: [round(sum(s[j] for s in rows) / len(rows), 6) for j in range(len(ctx.ranking))]  # type: ignore[index]
                  for layer, rows in per_layer.items()}
        mean = [round(sum(v[j] for v in layers.values()) / max(len(layers), 1), 6) for j in range(len(ctx.ranking))]
        extra = {
            "arrow": {"top_k": top_k, "temperature": config.temperature, "per_module": per_module},
            "gate_weights": {"per_layer": layers, "mean": dict(zip(ctx.source_names, mean)), "sources": ctx.source_names},
        }
        return [(sid, "source", w) for sid, w in zip(ctx.source_ids, mean)], extra

    return Prepared(model, ARROW_METHOD, stored, ctx.target_lr(target), finalize, preparation.to_dict())


_CONFIG_FIELDS: dict[str, tuple[type, ...]] = {
    "strategy": (str,), "sources": (list,), "top_k": (int,), "temperature": (int, float), "target_method": (str,),
    "target_config": (dict,),
}


def rebuild(reader: ExpertReader, expert: ExpertRecord, backbone: Backbone, num_outputs: int, prompt: TaskPrompt | None) -> TaskModel:
    """A stored arrow expert: its LoRA sources from the registry (each verified), its stored prototypes and target."""
    config = expert.config
    check_config(config, _CONFIG_FIELDS, expert.name, ARROW_METHOD)
    records = [reader.get_expert(source_id) for source_id in config["sources"]]
    if any(record.method != "lora" for record in records):
        raise InvalidInputError(f"arrow expert {expert.name}: its sources must be LoRA experts")
    sources = [load_method_expert(reader, record, backbone)[0] for record in records]
    if not (math.isfinite(config["temperature"]) and config["temperature"] > 0):
        raise InvalidInputError(f"arrow expert {expert.name}: temperature must be positive")
    router = ArrowRouter(LoraStack(sources), len(sources), config["top_k"], float(config["temperature"]))  # type: ignore[arg-type]
    target = rebuild_target(config["target_method"], config["target_config"], backbone)
    return TaskModel(backbone, target, num_outputs, task_prompt=prompt, composition=router)


class ArrowStrategy(Strategy):
    name = "arrow"
    summary = "Arrow: per-token top-k routing by the sources' top singular vectors"
    config_class = ArrowConfig
    source_methods = frozenset({"lora"})
    stored_methods = (ARROW_METHOD,)

    def prepare(self, ctx: StrategyContext, config: MethodConfig) -> Prepared:
        return prepare(ctx, config)

    def rebuild(self, reader: ExpertReader, expert: ExpertRecord, backbone: Backbone, num_outputs: int,
                prompt: TaskPrompt | None) -> TaskModel:
        return rebuild(reader, expert, backbone, num_outputs, prompt)


STRATEGY = ArrowStrategy()


@torch.no_grad()
def initialise_gate(model: TaskModel, examples: list[Example], max_length: int, regression: bool, temperature: float = 1.0) -> dict:
    """Set pemt's gate (per-layer W, gate_input "states") to Arrow's routing of the probe batch's mean task state;
    returns the record of it (per layer: the modules used and the starting shares at that state)."""
    mixture = model.composition
    if not isinstance(mixture, SourceMixture) or not mixture.learn_gate or mixture.gate_input != "states":
        raise InvalidInputError("--gate-init arrow initialises pemt's learned gate with --gate-input states")
    if not isinstance(mixture.stack, LoraStack):
        raise InvalidInputError("--gate-init arrow needs LoRA sources (prototypes are the top singular vectors of their ΔW)")
    modules = dict(model.backbone.model.named_modules())
    layer_inputs: dict[str, torch.Tensor] = {}
    module_inputs: dict[str, torch.Tensor] = {}
    def keep(store: dict[str, torch.Tensor], key: str, value: torch.Tensor) -> None:
        store.setdefault(key, value)

    handles = [modules[layer].register_forward_pre_hook(
        lambda m, a, k, layer=layer: keep(layer_inputs, layer, a[0] if a else k["hidden_states"]), with_kwargs=True)
        for layer in mixture.layers]
    handles += [modules[name].register_forward_hook(lambda m, a, out, name=name: keep(module_inputs, name, a[0]))
                for name in mixture.stack.module_names]
    was_training = model.training
    try:
        model.eval()
        model.pooled(**_probe_batch(examples, model, max_length, regression))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    record: dict = {"mode": "arrow", "temperature": temperature, "probe_examples": min(len(examples), PROBE_EXAMPLES), "layers": {}}
    for layer in mixture.layers:
        state = layer_inputs[layer][:, : mixture.prompt_length].float().mean(dim=(0, 1))  # the mean task state h̄
        reading = [name for name, owner in mixture.module_layer.items()
                   if owner == layer and torch.equal(module_inputs[name], layer_inputs[layer])]
        if not reading:
            record["layers"][layer] = {"modules": [], "shares": None}
            continue
        columns = torch.zeros(state.shape[0], mixture.num_sources)
        for name in reading:
            prototypes = top_right_singular_vectors(*mixture.stack.factors(name))  # (J, d)
            columns += (prototypes * torch.sign(prototypes @ state).unsqueeze(-1)).t() / (temperature * len(reading))
        if mixture.zero_expert:  # keep the zero expert's prior share at h̄: the sources' logits sum (in exp) to J
            scores = state @ columns
            shift = math.log(mixture.num_sources) - float(torch.logsumexp(scores, dim=0))
            columns += shift * state.unsqueeze(-1) / float(state @ state)
        gate = mixture.gates[layer.replace(".", "/")]
        gate[:, : mixture.num_sources] = columns.to(gate.dtype)
        shares = mixture.gate_probabilities(layer, state.view(1, 1, -1).expand(1, max(mixture.prompt_length, 1), -1))
        record["layers"][layer] = {"modules": reading, "shares": [round(float(s), 6) for s in shares[0]]}
    return record
