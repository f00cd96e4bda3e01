"""Several frozen bottleneck adapters as stacked tensors, for the transfer mixture."""

from __future__ import annotations

import torch

from transferkit.backbone import Backbone
from transferkit.errors import InvalidInputError
from transferkit.methods.adapter.config import AdapterConfig
from transferkit.methods.adapter.model import _ACTIVATIONS, AdapterExpert
from transferkit.methods.base import ExpertStack, StackedDeltas


class AdapterStack(ExpertStack):
    """Per module: down (J, b_max, d), up (J, d, b_max) and biases; narrower bottlenecks are zero-padded (exact)."""

    def __init__(self, experts: list[AdapterExpert]) -> None:
        super().__init__()
        activations = {expert.config.activation for expert in experts}
        if len(activations) > 1:
            raise InvalidInputError(f"adapter sources use different activations {sorted(activations)}; mix adapters of one kind")
        self.activation_name = activations.pop()
        self.activation = _ACTIVATIONS[self.activation_name]()
        self.module_names = sorted({name for expert in experts for name in expert.module_names})
        width = max(a.down.out_features for expert in experts for a in expert.adapters.values())
        self._slots = {}
        for slot, name in enumerate(self.module_names):
            key = name.replace(".", "/")
            reference = next(expert.adapters[key] for expert in experts if name in expert.module_names)
            features = reference.down.in_features
            down_w = torch.zeros(len(experts), width, features)
            down_b = torch.zeros(len(experts), width)
            up_w = torch.zeros(len(experts), features, width)
            up_b = torch.zeros(len(experts), features)
            for j, expert in enumerate(experts):
                if name in expert.module_names:
                    adapter = expert.adapters[key]
                    bottleneck = adapter.down.out_features
                    down_w[j, :bottleneck] = adapter.down.weight.detach()
                    down_b[j, :bottleneck] = adapter.down.bias.detach()
                    up_w[j, :, :bottleneck] = adapter.up.weight.detach()
                    up_b[j] = adapter.up.bias.detach()
            for label, tensor in (("dw", down_w), ("db", down_b), ("uw", up_w), ("ub", up_b)):
                self.register_buffer(f"{label}{slot}", tensor)
            self._slots[name] = slot

    def deltas(self, module_name: str, inputs: torch.Tensor, output: torch.Tensor, index: torch.Tensor | None) -> StackedDeltas:
        slot = self._slots[module_name]
        down_w, down_b, up_w, up_b = (getattr(self, f"{label}{slot}") for label in ("dw", "db", "uw", "ub"))
        # Padded units have zero weight and bias; activation(0) is 0 for relu/tanh/gelu, so they add nothing.
        if index is None:
            hidden = torch.einsum("bto,kho->btkh", output, down_w.to(output.dtype)) + down_b.to(output.dtype)
            return StackedDeltas(self.activation(hidden), up_w, up_b)
        hidden = torch.einsum("bto,bkho->btkh", output, down_w[index].to(output.dtype)) + down_b[index].to(output.dtype)[:, None]
        return StackedDeltas(self.activation(hidden), up_w[index], up_b[index])

    def merge(self, weights: dict[str, torch.Tensor], backbone: Backbone) -> AdapterExpert:
        """One bottleneck per module, the used sources side by side: D = [D_j; ...], U = [w_j U_j, ...], u = sum_j w_j u_j."""
        used = {name: torch.nonzero(weights[name] != 0).flatten() for name in self.module_names}
        width = max(len(index) for index in used.values()) * getattr(self, "dw0").shape[1]
        config = AdapterConfig(bottleneck_size=width, activation=self.activation_name, target_modules=list(self.module_names))
        merged = AdapterExpert(config, backbone)
        with torch.no_grad():
            for name, index in used.items():
                slot = self._slots[name]
                tensor = lambda label: getattr(self, f"{label}{slot}")[index]  # noqa: E731
                weight = weights[name][index]
                adapter = merged.adapters[name.replace(".", "/")]
                for parameter in adapter.parameters():
                    parameter.zero_()
                units = len(index) * tensor("dw").shape[1]
                adapter.down.weight[:units] = tensor("dw").reshape(units, -1)
                adapter.down.bias[:units] = tensor("db").reshape(units)
                scaled = tensor("uw") * weight[:, None, None].to(tensor("uw").dtype)  # (u, d, b)
                adapter.up.weight[:, :units] = scaled.permute(1, 0, 2).reshape(scaled.shape[1], units)
                adapter.up.bias.copy_((tensor("ub") * weight[:, None].to(tensor("ub").dtype)).sum(0))
        return merged
