"""Already-merged source experts attached ahead of the target's own expert, and how a stored `merged` expert
(what `transferkit merge` and the merge/lorahub strategies store) is rebuilt from its config."""

from __future__ import annotations

import torch

from transferkit.backbone import Backbone
from transferkit.methods import ExpertModule, get_method
from transferkit.modeling import Composition, TaskModel
from transferkit.registry import ExpertReader, ExpertRecord
from transferkit.task_prompt import TaskPrompt

MERGED_METHOD = "merged"  # how `transferkit merge` stores a collapsed mixture


class FixedExperts(Composition):
    """Already-merged source experts attached ahead of the target's own expert: no gate, no sources."""

    def __init__(self, expert: ExpertModule) -> None:
        super().__init__()
        self.expert = expert

    def attach(self, backbone: Backbone, prompt_length: int) -> None:
        self.expert.attach(backbone)

    def detach(self) -> None:
        self.expert.detach()

    def auxiliary_loss(self) -> torch.Tensor | None:
        return None

    def export_tensors(self) -> dict[str, torch.Tensor]:
        return self.expert.export_tensors()

    def import_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self.expert.import_tensors(tensors)


def build_merged(config: dict, backbone: Backbone, num_outputs: int, prompt: TaskPrompt | None) -> TaskModel:
    """Rebuild a stored merged expert from its config (everything else it needs is in its own artifact)."""
    source_method, target_method = get_method(config["source_method"]), get_method(config["target_method"])
    merged = source_method.build(source_method.config_class.from_dict(config["source_config"]), backbone)
    target = target_method.build(target_method.config_class.from_dict(config["target_config"]), backbone)
    return TaskModel(backbone, target, num_outputs, task_prompt=prompt, composition=FixedExperts(merged))


def rebuild_merged(reader: ExpertReader, expert: ExpertRecord, backbone: Backbone, num_outputs: int,
                   prompt: TaskPrompt | None) -> TaskModel:
    """A stored `merged` expert (everything it needs is in its own artifact: no source is read)."""
    return build_merged(expert.config, backbone, num_outputs, prompt)
