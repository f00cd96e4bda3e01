"""Stored experts as building blocks: the artifact format, expert names, and reading a stored expert back.

A stored expert is a safetensors blob whose metadata says what it is (`artifact_metadata`); `read_expert`
returns its verified tensors, and `load_source_parts` rebuilds a stored method expert's module, task
prompt and head, which is what a transfer borrows from its sources. Rebuilding a whole stored model of
any kind (compositions included) is `transferkit.rebuild.load_expert_model`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import torch

from transferkit.backbone import Backbone
from transferkit.errors import ArtifactCorruptError, InvalidInputError
from transferkit.methods import ExpertModule, get_method
from transferkit.modeling import EXPERT_PREFIX, HEAD_PREFIX, TASK_PROMPT_PREFIX
from transferkit.registry import ExpertReader, ExpertRecord, RegistryStore

ARTIFACT_FORMAT = "transferkit.expert/1"


def artifact_metadata(method: str, config: dict, backbone_id: str, task_name: str, num_outputs: int) -> dict[str, str]:
    """The safetensors metadata of a stored expert: enough to tell what the blob is without the database."""
    return {
        "format": ARTIFACT_FORMAT,
        "method": method,
        "config": json.dumps(config, sort_keys=True),
        "backbone_id": backbone_id,
        "task": task_name,
        "num_outputs": str(num_outputs),
    }


def read_expert(registry: ExpertReader, expert: ExpertRecord, backbone: Backbone) -> dict[str, torch.Tensor]:
    """The expert's verified tensors, after checking it belongs to `backbone`."""
    backbone.require_compatible(expert.backbone_id, f"expert {expert.name}")
    tensors, metadata = registry.load_expert_tensors(expert)
    if metadata.get("format") != ARTIFACT_FORMAT:
        raise ArtifactCorruptError(f"expert {expert.name}'s artifact is not a transferkit expert (format {metadata.get('format')!r})")
    return tensors


def job_expert_name(registry: RegistryStore, requested: str | None, default_base: str) -> tuple[str, bool]:
    """(name, is_base): the user's `--name` if it is free (else a one-line error), or the default base,
    which is made unique when the expert is stored (concurrent jobs would otherwise pick the same name)."""
    if requested is None:
        return default_base, True
    return expert_name(registry, requested, default_base), False


def expert_name(registry: RegistryStore, requested: str | None, default_base: str) -> str:
    """The user's `--name` if it is free (else a one-line error), or a unique name from `default_base`."""
    if requested is None:
        return registry.unique_expert_name(default_base)
    if registry.unique_expert_name(requested) != requested:
        raise InvalidInputError(f"an expert named {requested!r} already exists; choose another --name")
    return requested


@dataclass
class SourceParts:
    """What a stored expert lends to a new one: its method module (not attached), task prompt and head."""

    module: ExpertModule
    prompt: torch.Tensor | None
    head: tuple[torch.Tensor, torch.Tensor] | None  # (weight (C, d), bias (C,)); None if it was imported without one


def load_source_parts(registry: ExpertReader, expert: ExpertRecord, backbone: Backbone) -> SourceParts:
    """A stored expert's parts, read and verified once."""
    tensors = read_expert(registry, expert, backbone)
    method = get_method(expert.method)
    module = method.build(method.config_class.from_dict(expert.config), backbone)
    module.import_tensors({k[len(EXPERT_PREFIX):]: v for k, v in tensors.items() if k.startswith(EXPERT_PREFIX)})
    weight, bias = tensors.get(HEAD_PREFIX + "linear.weight"), tensors.get(HEAD_PREFIX + "linear.bias")
    return SourceParts(module, tensors.get(TASK_PROMPT_PREFIX + "embedding"), (weight, bias) if weight is not None and bias is not None else None)


def load_method_expert(registry: ExpertReader, expert: ExpertRecord, backbone: Backbone) -> tuple[ExpertModule, torch.Tensor | None]:
    """A stored expert's method module (not attached) and its task-description prompt, if it has one."""
    parts = load_source_parts(registry, expert, backbone)
    return parts.module, parts.prompt
