"""Experts from elsewhere, held in memory and checked the way loading them later would, before the registry sees them."""

from __future__ import annotations

import json

import torch

from transferkit.backbone import Backbone
from transferkit.errors import InvalidInputError, NotFoundError
from transferkit.modeling import EXPERT_PREFIX, HEAD_PREFIX, TASK_PROMPT_PREFIX
from transferkit.registry import ExpertReader, ExpertRecord
from transferkit.experts import load_method_expert
from transferkit.rebuild import load_expert_model

TASK_PROMPT_TENSOR = TASK_PROMPT_PREFIX + "embedding"


class StagedExperts:
    """Experts not yet stored, readable like a registry; ids not staged here are read from `fallback`."""

    def __init__(self, fallback: ExpertReader | None = None) -> None:
        self._fallback = fallback
        self._staged: dict[str, tuple[ExpertRecord, dict[str, torch.Tensor], dict[str, str]]] = {}

    def add(self, expert: ExpertRecord, tensors: dict[str, torch.Tensor], metadata: dict[str, str]) -> None:
        self._staged[expert.id] = (expert, tensors, metadata)

    def get_expert(self, id_or_name: str) -> ExpertRecord:
        if id_or_name in self._staged:
            return self._staged[id_or_name][0]
        if self._fallback is None:
            raise NotFoundError(f"expert {id_or_name} is not part of this import")
        return self._fallback.get_expert(id_or_name)

    def load_expert_tensors(self, expert: ExpertRecord) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
        if expert.id in self._staged:
            _, tensors, metadata = self._staged[expert.id]
            return dict(tensors), dict(metadata)
        if self._fallback is None:
            raise NotFoundError(f"expert {expert.name} ({expert.id}) is not part of this import")
        return self._fallback.load_expert_tensors(expert)


def check_expert(reader: ExpertReader, expert: ExpertRecord, backbone: Backbone) -> None:
    """Rebuild `expert` on `backbone` from `reader` exactly as using it later would, refusing anything that would not load.

    That checks the method and its config fields, every tensor's name and shape, the backbone binding, and for a
    mixture its sources; the artifact's own metadata and parameter count must agree with the record.
    """
    try:
        _check(reader, expert, backbone)
    except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as error:  # malformed data the checks did not name
        raise InvalidInputError(f"expert {expert.name} cannot be rebuilt from what was given ({type(error).__name__}: {error})"[:400]) from None


def _check(reader: ExpertReader, expert: ExpertRecord, backbone: Backbone) -> None:
    tensors, metadata = reader.load_expert_tensors(expert)
    recorded = {"method": expert.method, "backbone_id": expert.backbone_id, "task": expert.task_name}
    for key, value in recorded.items():
        if key in metadata and metadata[key] != value:
            raise InvalidInputError(f"expert {expert.name}: its artifact says {key} {metadata[key]!r}, its record {value!r}")
    if "config" in metadata and _json_or_none(metadata["config"]) != expert.config:
        raise InvalidInputError(f"expert {expert.name}: the config in its artifact differs from its record")
    count = sum(t.numel() for t in tensors.values())
    if count != expert.trainable_params:
        raise InvalidInputError(f"expert {expert.name} records {expert.trainable_params} parameters but its artifact holds {count}")
    if HEAD_PREFIX + "linear.bias" in tensors:
        load_expert_model(reader, expert, backbone).detach()
        return
    extra = sorted(k for k in tensors if not k.startswith(EXPERT_PREFIX) and k != TASK_PROMPT_TENSOR)
    if extra:
        raise InvalidInputError(f"expert {expert.name} has tensors its method does not use: {', '.join(extra[:3])}")
    _, prompt = load_method_expert(reader, expert, backbone)
    if prompt is not None and (prompt.dim() != 2 or prompt.shape[1] != backbone.hidden_size):
        raise InvalidInputError(
            f"expert {expert.name}: task prompt of shape {tuple(prompt.shape)} does not fit hidden size {backbone.hidden_size}"
        )


def _json_or_none(text: str) -> object:
    try:
        return json.loads(text)
    except ValueError:
        return None
