"""Rebuild any stored expert as a model on a backbone: a method expert directly, a composed one (mixture,
attempt, merge, arrow, merged) through the strategy that stored it (`transferkit.composition.strategies`)."""

from __future__ import annotations

from transferkit.backbone import Backbone
from transferkit.composition.strategies import stored_rebuild
from transferkit.errors import InvalidInputError
from transferkit.experts import read_expert
from transferkit.methods import get_method
from transferkit.modeling import HEAD_PREFIX, TASK_PROMPT_PREFIX, TaskModel
from transferkit.registry import ExpertReader, ExpertRecord
from transferkit.task_prompt import TaskPrompt


def load_expert_model(registry: ExpertReader, expert: ExpertRecord, backbone: Backbone) -> TaskModel:
    """Rebuild a stored expert on `backbone` (verifies artifact digests and backbone bindings, sources included)."""
    tensors = read_expert(registry, expert, backbone)
    if HEAD_PREFIX + "linear.bias" not in tensors:
        raise InvalidInputError(
            f"expert {expert.name} has no task head (it was imported without one), so it cannot predict by itself; "
            "use it as a transfer source (--sources) or for spot initialisation"
        )
    num_outputs = tensors[HEAD_PREFIX + "linear.bias"].shape[0]
    prompt_tensor = tensors.get(TASK_PROMPT_PREFIX + "embedding")
    prompt = TaskPrompt(prompt_tensor) if prompt_tensor is not None else None
    rebuild = stored_rebuild(expert.method)
    if rebuild is not None:
        model = rebuild(registry, expert, backbone, num_outputs, prompt)
    else:
        method = get_method(expert.method)
        config = method.config_class.from_dict(expert.config)
        model = TaskModel(backbone, method.build(config, backbone), num_outputs, task_prompt=prompt)
    model.import_tensors(tensors)
    return model
