"""LoRA as forward hooks on the backbone's frozen linear layers.

Own code rather than PEFT's LoraModel: hooks leave the backbone untouched, so
the transfer mixture can evaluate several frozen LoRA experts on the same layer
under one gate. Tensor names and initialisation follow PEFT (lora_A, lora_B,
scaling = alpha / r, B zero-initialised) so exports map one-to-one.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from transferkit.backbone import Backbone
from transferkit.errors import InvalidInputError
from transferkit.methods.base import ExpertModule, find_modules
from transferkit.methods.lora.config import LoraConfig


def linear_features(module: nn.Module) -> tuple[int, int]:
    """(in, out) features of nn.Linear or transformers' Conv1D (GPT-2 style, transposed weight)."""
    if isinstance(module, nn.Linear):
        return module.in_features, module.out_features
    weight = getattr(module, "weight", None)
    if type(module).__name__ == "Conv1D" and weight is not None:
        return weight.shape[0], weight.shape[1]
    raise InvalidInputError(f"LoRA can only adapt linear layers, not {type(module).__name__}")


def default_lora_targets(backbone: Backbone) -> list[str]:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    targets = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING.get(backbone.fingerprint.model_type)
    if not targets:
        raise InvalidInputError(
            f"no default LoRA target modules for model type {backbone.fingerprint.model_type!r}; "
            "pass -O target_modules=NAME1,NAME2"
        )
    return list(targets)


class LoraPair(nn.Module):
    def __init__(self, in_features: int, out_features: int, r: int) -> None:
        super().__init__()
        self.lora_A = nn.Parameter(torch.empty(r, in_features))
        self.lora_B = nn.Parameter(torch.zeros(out_features, r))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))


class LoraExpert(ExpertModule):
    def __init__(self, config: LoraConfig, backbone: Backbone) -> None:
        super().__init__(config, backbone)
        targets = config.target_modules or default_lora_targets(backbone)
        modules = find_modules(backbone.model, targets)
        if not modules:
            raise InvalidInputError(f"no backbone module matches LoRA target_modules {targets}")
        self.module_names = sorted(modules)
        # ModuleDict keys may not contain dots.
        self.pairs = nn.ModuleDict(
            {name.replace(".", "/"): LoraPair(*linear_features(modules[name]), config.r) for name in self.module_names}
        )
        self.scaling = config.alpha / config.r
        self.dropout = nn.Dropout(config.dropout)

    def attach(self, backbone: Backbone) -> None:
        self.detach()
        modules = dict(backbone.model.named_modules())
        for name in self.module_names:
            pair = self.pairs[name.replace(".", "/")]
            self._handles.append(modules[name].register_forward_hook(self._make_hook(pair)))

    def _make_hook(self, pair: LoraPair):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            x = self.dropout(args[0])
            delta = (x @ pair.lora_A.to(x.dtype).t()) @ pair.lora_B.to(x.dtype).t()
            return output + delta.to(output.dtype) * self.scaling

        return hook

    @torch.no_grad()
    def silence(self) -> None:
        for pair in self.pairs.values():
            pair.lora_B.zero_()

    def export_tensors(self) -> dict[str, torch.Tensor]:
        out = {}
        for name in self.module_names:
            pair = self.pairs[name.replace(".", "/")]
            out[f"{name}.lora_A.weight"] = pair.lora_A.detach().clone()
            out[f"{name}.lora_B.weight"] = pair.lora_B.detach().clone()
        return out

    def import_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        expected = {}
        for name in self.module_names:
            pair = self.pairs[name.replace(".", "/")]
            expected[f"{name}.lora_A.weight"] = tuple(pair.lora_A.shape)
            expected[f"{name}.lora_B.weight"] = tuple(pair.lora_B.shape)
        self._check_tensor_names(tensors, expected)
        with torch.no_grad():
            for name in self.module_names:
                pair = self.pairs[name.replace(".", "/")]
                pair.lora_A.copy_(tensors[f"{name}.lora_A.weight"])
                pair.lora_B.copy_(tensors[f"{name}.lora_B.weight"])
