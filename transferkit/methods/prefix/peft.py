"""Prefix tuning <-> PEFT's PREFIX_TUNING (no projection): per-layer keys and values in PEFT's layout.

PEFT hands the prefix to BERT as a key/value cache, and BERT then numbers the real tokens from P on;
transferkit's prefix numbers them from 0 (unless `position_offset`), so the recipe passes position ids
shifted back by P. A prefix adapter has no input tokens to carry a task-description prompt: refused.
"""

from __future__ import annotations

import torch

from transferkit.errors import InvalidInputError
from transferkit.methods.peft import (
    PeftExport,
    PeftExportInput,
    PeftImportInput,
    PeftLoaded,
    PeftMapping,
    PeftRecipe,
    dimensions,
    prompt_embeddings,
    require_fit,
)


def export(expert: PeftExportInput) -> PeftExport:
    from peft import PrefixTuningConfig

    if expert.task_prompt is not None:
        raise InvalidInputError(
            f"expert {expert.name} cannot be exported for PEFT: a PEFT prefix adapter has no input tokens to carry its "
            f"{expert.task_prompt_length}-token task-description prompt; train the prefix expert with --task-prompt-length 0, "
            "or use --format bundle"
        )
    hidden, layers, _ = dimensions(expert.backbone)
    own, length = expert.tensors, expert.config["num_virtual_tokens"]
    pairs = [torch.stack([own[f"prefix.layer{i}.key"], own[f"prefix.layer{i}.value"]]) for i in range(layers)]
    # PEFT's layout: per virtual token, layer by layer, key then value (get_prompt's view + permute).
    prefix = torch.stack(pairs).permute(2, 0, 1, 3).reshape(length, layers * 2 * hidden)
    config = PrefixTuningConfig(num_virtual_tokens=length, encoder_hidden_size=hidden, prefix_projection=False,
                                **expert.prompt_learning_shape(), **expert.common)
    shift = 0 if expert.config.get("position_offset") else length
    return PeftExport(config, {"prompt_embeddings": prefix}, "base_model.",
                      PeftRecipe(expert.head_module, expert.num_outputs, [], 0, shift, True, 0))


def load(adapter: PeftImportInput) -> PeftLoaded:
    embeddings = prompt_embeddings(adapter)
    hidden, layers, heads = dimensions(adapter.backbone)
    require_fit(adapter.config, "num_layers", layers, adapter.where, "layers")
    require_fit(adapter.config, "num_attention_heads", heads, adapter.where, "attention heads")
    if embeddings.dim() != 2 or embeddings.shape[1] != layers * 2 * hidden:
        raise InvalidInputError(
            f"{adapter.where}: prompt_embeddings of shape {tuple(embeddings.shape)} does not fit {layers} layers of hidden size {hidden}"
        )
    per_layer = embeddings.reshape(embeddings.shape[0], layers, 2, hidden).permute(1, 2, 0, 3)
    tensors = {}
    for index in range(layers):
        tensors[f"prefix.layer{index}.key"] = per_layer[index, 0].contiguous()
        tensors[f"prefix.layer{index}.value"] = per_layer[index, 1].contiguous()
    return PeftLoaded(tensors, None, {"num_virtual_tokens": embeddings.shape[0], "share": "none", "position_offset": True})


PEFT = PeftMapping("PREFIX_TUNING", "base_model.", export, load)
