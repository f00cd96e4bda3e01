"""Bottleneck adapters as forward hooks on the FFN output projections.

PEFT has no bottleneck adapter, so this is own code. The adapter is residual and
its up-projection starts at zero, so training starts from the frozen model.
"""

from __future__ import annotations

import torch
from torch import nn

from transferkit.backbone import Backbone
from transferkit.errors import InvalidInputError
from transferkit.methods.adapter.config import AdapterConfig
from transferkit.methods.base import ExpertModule, find_modules
from transferkit.methods.lora.model import linear_features

_ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def default_adapter_targets(backbone: Backbone) -> list[str]:
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING

    targets = TRANSFORMERS_MODELS_TO_IA3_FEEDFORWARD_MODULES_MAPPING.get(backbone.fingerprint.model_type)
    if not targets:
        raise InvalidInputError(
            f"no default adapter placement for model type {backbone.fingerprint.model_type!r}; "
            "pass -O target_modules=NAME of the feed-forward output projection"
        )
    return list(targets)


class Bottleneck(nn.Module):
    def __init__(self, width: int, bottleneck: int, activation: str) -> None:
        super().__init__()
        self.down = nn.Linear(width, bottleneck)
        self.act = _ACTIVATIONS[activation]()
        self.up = nn.Linear(bottleneck, width)
        nn.init.zeros_(self.up.weight)
        nn.init.zeros_(self.up.bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.up(self.act(self.down(hidden)))


class AdapterExpert(ExpertModule):
    def __init__(self, config: AdapterConfig, backbone: Backbone) -> None:
        super().__init__(config, backbone)
        targets = config.target_modules or default_adapter_targets(backbone)
        # Attention output projections share the "output.dense" suffix in BERT-like models; adapters go after the FFN only.
        modules = find_modules(backbone.model, targets, exclude=r"attention|attn")
        if not modules:
            raise InvalidInputError(f"no backbone module matches adapter target_modules {targets}")
        self.module_names = sorted(modules)
        self.adapters = nn.ModuleDict(
            {
                name.replace(".", "/"): Bottleneck(
                    linear_features(modules[name])[1],
                    config.bottleneck_size or max(1, linear_features(modules[name])[1] // config.reduction_factor),
                    config.activation,
                )
                for name in self.module_names
            }
        )

    def attach(self, backbone: Backbone) -> None:
        self.detach()
        modules = dict(backbone.model.named_modules())
        for name in self.module_names:
            adapter = self.adapters[name.replace(".", "/")]
            self._handles.append(modules[name].register_forward_hook(self._make_hook(adapter)))

    @staticmethod
    def _make_hook(adapter: Bottleneck):
        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            return output + adapter(output).to(output.dtype)

        return hook

    @torch.no_grad()
    def silence(self) -> None:
        for adapter in self.adapters.values():
            adapter.up.weight.zero_()
            adapter.up.bias.zero_()

    def export_tensors(self) -> dict[str, torch.Tensor]:
        return {
            f"{name}.adapter.{key}": value.detach().clone()
            for name in self.module_names
            for key, value in self.adapters[name.replace(".", "/")].state_dict().items()
        }

    def import_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        expected = {
            f"{name}.adapter.{key}": tuple(value.shape)
            for name in self.module_names
            for key, value in self.adapters[name.replace(".", "/")].state_dict().items()
        }
        self._check_tensor_names(tensors, expected)
        for name in self.module_names:
            prefix = f"{name}.adapter."
            state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            self.adapters[name.replace(".", "/")].load_state_dict(state)
