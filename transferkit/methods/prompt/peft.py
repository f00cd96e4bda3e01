"""Prompt tuning <-> PEFT's PROMPT_TUNING: the virtual tokens are [task-description prompt][method prompt]."""

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
)


def export(expert: PeftExportInput) -> PeftExport:
    from peft import PromptTuningConfig

    own, task_prompt = expert.tensors["prompt"], expert.task_prompt
    virtual = own if task_prompt is None else torch.cat([task_prompt, own])
    config = PromptTuningConfig(num_virtual_tokens=virtual.shape[0], **expert.prompt_learning_shape(), **expert.common)
    recipe = PeftRecipe(expert.head_module, expert.num_outputs, [], virtual.shape[0], 0, True, expert.task_prompt_length)
    return PeftExport(config, {"prompt_embeddings": virtual}, "base_model.", recipe)


def load(adapter: PeftImportInput) -> PeftLoaded:
    embeddings = prompt_embeddings(adapter)
    hidden = dimensions(adapter.backbone)[0]
    prompt_length = adapter.task_prompt_length
    if embeddings.dim() != 2 or embeddings.shape[1] != hidden or embeddings.shape[0] <= prompt_length:
        raise InvalidInputError(f"{adapter.where}: prompt_embeddings of shape {tuple(embeddings.shape)} does not fit hidden size {hidden}")
    task_prompt = embeddings[:prompt_length].clone() if prompt_length else None
    return PeftLoaded({"prompt": embeddings[prompt_length:].clone()}, task_prompt,
                      {"num_virtual_tokens": embeddings.shape[0] - prompt_length})


PEFT = PeftMapping("PROMPT_TUNING", "base_model.", export, load)
