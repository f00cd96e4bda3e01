"""LoRA <-> PEFT's LORA: the same tensor names (lora_A, lora_B) under PEFT's prefix.

The task-description prompt rides on PEFT's trainable tokens: the embeddings of unused vocabulary entries
(`[unused0]`, ...), which the recipe puts in front of the input. Import refuses LoRA settings that change
what the adapter computes and that a transferkit LoRA expert cannot express.
"""

from __future__ import annotations

import math
import re
from typing import Any

import torch

from transferkit.backbone import Backbone
from transferkit.errors import InvalidInputError
from transferkit.methods.peft import (
    PeftExport,
    PeftExportInput,
    PeftImportInput,
    PeftLoaded,
    PeftMapping,
    PeftRecipe,
    input_embedding_name,
    unused_token_ids,
)

TOKENS_SUFFIX = ".token_adapter.trainable_tokens_delta"


def export(expert: PeftExportInput) -> PeftExport:
    from peft import LoraConfig

    own = expert.tensors
    modules = sorted({name.rsplit(".lora_", 1)[0] for name in own})
    weights = {f"base_model.model.{name}": tensor for name, tensor in own.items()}
    prepend: list[int] = []
    trainable = None
    if expert.task_prompt is not None:
        prepend = unused_token_ids(expert.backbone, expert.task_prompt_length, expert.name)
        embedding = input_embedding_name(expert.backbone)
        weights[f"base_model.model.{embedding}{TOKENS_SUFFIX}"] = expert.task_prompt
        trainable = {embedding: prepend}
    config = LoraConfig(
        r=expert.config["r"], lora_alpha=expert.config["alpha"], lora_dropout=expert.config["dropout"],
        target_modules=modules, bias="none", trainable_token_indices=trainable, **expert.common,
    )
    recipe = PeftRecipe(expert.head_module, expert.num_outputs, prepend, len(prepend), 0, False, expert.task_prompt_length)
    return PeftExport(config, weights, "base_model.model.", recipe)


def load(adapter: PeftImportInput) -> PeftLoaded:
    tensors = {_backbone_relative(key, adapter.backbone): tensor for key, tensor in adapter.tensors.items()}
    method_config = _lora_config(adapter.config, tensors, adapter.where)
    tokens = {k: v for k, v in tensors.items() if k.endswith(TOKENS_SUFFIX)}
    task_prompt = None
    if tokens:
        recipe = adapter.recipe
        expected = {input_embedding_name(adapter.backbone): recipe["prepend_token_ids"]} if recipe else None
        if adapter.config.get("trainable_token_indices") != expected or len(tokens) != 1 or not adapter.task_prompt_length:
            raise InvalidInputError(
                f"{adapter.where} retrains vocabulary embeddings (trainable_token_indices), which a transferkit expert cannot hold"
            )
        task_prompt = next(iter(tokens.values())).float().clone()
    own = {key: tensor.float().clone() for key, tensor in tensors.items() if key not in tokens}
    return PeftLoaded(own, task_prompt, method_config)


def _backbone_relative(key: str, backbone: Backbone) -> str:
    """A tensor name relative to the encoder: adapters made on e.g. BertForSequenceClassification name it `bert.<...>`."""
    prefix = f"{getattr(backbone.model, 'base_model_prefix', '')}."
    return key[len(prefix):] if prefix != "." and key.startswith(prefix) else key


# LoRA settings that change what the adapter computes and that a transferkit LoRA expert cannot express.
_LORA_UNSUPPORTED: dict[str, Any] = {
    "use_dora": lambda v: bool(v), "lora_bias": lambda v: bool(v), "bias": lambda v: v not in (None, "none"),
    "fan_in_fan_out": lambda v: bool(v), "rank_pattern": lambda v: bool(v), "alpha_pattern": lambda v: bool(v),
    "layer_replication": lambda v: bool(v), "target_parameters": lambda v: bool(v), "use_qalora": lambda v: bool(v),
    "alora_invocation_tokens": lambda v: bool(v), "use_bdlora": lambda v: bool(v), "megatron_config": lambda v: bool(v),
}


def _lora_config(config: dict, tensors: dict[str, torch.Tensor], where: str) -> dict:
    used = sorted(key for key, unsupported in _LORA_UNSUPPORTED.items() if unsupported(config.get(key)))
    if used:
        raise InvalidInputError(f"{where} uses LoRA settings transferkit cannot reproduce: {', '.join(used)}")
    rank, alpha = config.get("r"), config.get("lora_alpha")
    if not isinstance(rank, int) or isinstance(rank, bool) or rank < 1 or not isinstance(alpha, (int, float)) or isinstance(alpha, bool):
        raise InvalidInputError(f"{where}: r must be a positive integer and lora_alpha a number")
    if config.get("use_rslora"):  # rsLoRA scales by alpha / sqrt(r); transferkit by alpha / r
        alpha = alpha * math.sqrt(rank)
    pairs = [key.rsplit(".lora_", 1)[0] for key in tensors if re.search(r"\.lora_[AB]\.weight$", key)]
    others = [key for key in tensors if not re.search(r"\.lora_[AB]\.weight$|\.token_adapter\.trainable_tokens_delta$", key)]
    if others or not pairs:
        raise InvalidInputError(f"{where} has tensors transferkit's LoRA cannot hold: {sorted(others)[:3] or 'no lora_A/lora_B pairs'}")
    dropout = config.get("lora_dropout") or 0.0
    return {"r": rank, "alpha": float(alpha), "dropout": float(dropout), "target_modules": sorted(set(pairs))}


PEFT = PeftMapping("LORA", "base_model.model.", export, load)
