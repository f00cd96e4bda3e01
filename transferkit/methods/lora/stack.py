"""Several frozen LoRA experts as stacked tensors, for the transfer mixture."""

from __future__ import annotations

import torch

from transferkit.backbone import Backbone
from transferkit.methods.base import ExpertStack, StackedDeltas
from transferkit.methods.lora.config import LoraConfig
from transferkit.methods.lora.model import LoraExpert


class LoraStack(ExpertStack):
    """Per adapted module: A (J, r_max, in) and B (J, out, r_max) with each expert's alpha/r folded into B.

    Experts with a smaller rank are zero-padded, and an expert that does not adapt
    a module has zeros there, so both are exact.
    """

    def __init__(self, experts: list[LoraExpert]) -> None:
        super().__init__()
        self.module_names = sorted({name for expert in experts for name in expert.module_names})
        rank = max(expert.config.r for expert in experts)
        self._slots = {}
        for slot, name in enumerate(self.module_names):
            key = name.replace(".", "/")
            shapes = [expert.pairs[key] for expert in experts if name in expert.module_names]
            out_features, in_features = shapes[0].lora_B.shape[0], shapes[0].lora_A.shape[1]
            a = torch.zeros(len(experts), rank, in_features)
            b = torch.zeros(len(experts), out_features, rank)
            for j, expert in enumerate(experts):
                if name in expert.module_names:
                    pair = expert.pairs[key]
                    r = pair.lora_A.shape[0]
                    a[j, :r] = pair.lora_A.detach()
                    b[j, :, :r] = pair.lora_B.detach() * expert.scaling
            self.register_buffer(f"a{slot}", a)
            self.register_buffer(f"b{slot}", b)
            self._slots[name] = slot

    def factors(self, module_name: str) -> tuple[torch.Tensor, torch.Tensor]:
        """A (J, r_max, in) and B (J, out, r_max) of one module, each expert's alpha/r folded into B: ΔW_j = B_j A_j."""
        slot = self._slots[module_name]
        return getattr(self, f"a{slot}"), getattr(self, f"b{slot}")

    def deltas(self, module_name: str, inputs: torch.Tensor, output: torch.Tensor, index: torch.Tensor | None) -> StackedDeltas:
        a, b = self.factors(module_name)  # (J, r, in), (J, out, r)
        if index is None:
            return StackedDeltas(torch.einsum("bti,kri->btkr", inputs, a.to(inputs.dtype)), b, None)
        return StackedDeltas(torch.einsum("bti,bkri->btkr", inputs, a[index].to(inputs.dtype)), b[index], None)

    def merge(self, weights: dict[str, torch.Tensor], backbone: Backbone) -> LoraExpert:
        """A = [A_j; ...] and B = [w_j s_j B_j, ...] over the used sources: rank = used sources x r_max, scaling 1."""
        used = {name: torch.nonzero(weights[name] != 0).flatten() for name in self.module_names}
        rank = max(len(index) for index in used.values()) * getattr(self, "a0").shape[1]
        merged = LoraExpert(LoraConfig(r=rank, alpha=float(rank), dropout=0.0, target_modules=list(self.module_names)), backbone)
        with torch.no_grad():
            for name, index in used.items():
                slot = self._slots[name]
                a, b = getattr(self, f"a{slot}")[index], getattr(self, f"b{slot}")[index]  # (u, r, in), (u, out, r)
                scaled = b * weights[name][index].to(b.dtype)[:, None, None]
                pair = merged.pairs[name.replace(".", "/")]
                pair.lora_A.zero_()
                pair.lora_B.zero_()
                width = a.shape[0] * a.shape[1]
                pair.lora_A[:width] = a.reshape(width, -1)
                pair.lora_B[:, :width] = scaled.permute(1, 0, 2).reshape(scaled.shape[1], width)
        return merged
