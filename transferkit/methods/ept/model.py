"""EPT: a short prompt, a low-rank update of the first real tokens' embeddings, prompt fusion and multi-space projection.

Everything happens in `prepare_inputs`, on the real-token embeddings:
- update U = lowrank_scale · A (s x r) · B (r x d), added to the embeddings of the first s real tokens
  (DePT). An input shorter than s uses the first rows only; padding positions are left unchanged;
- prompt fusion: the short prompt P (m x d) attends over the rows of U (scaled dot product, no
  extra parameters) and adds what it reads: F = P + softmax(P Uᵀ / √d) U;
- multi-space projection: K low-rank residual projections F + F U_k V_k, mixed per prompt token by a
  softmax gate over K computed from F: prompt = Σ_k g_k(F) · (F + F U_k V_k).
B, every V_k and the gate start at zero, so training starts at the initial short prompt and unchanged embeddings.

None of this depends on the input, so the stored expert is collapsed: the final m x d prompt and the
factors A, B (storing A and B is smaller than their s x d product and reproduces it bit for bit).
"""

from __future__ import annotations

import math

import torch
from torch import nn

from transferkit.backbone import Backbone
from transferkit.methods.base import ExpertModule
from transferkit.methods.ept.config import EptConfig
from transferkit.methods.prompt import PromptConfig
from transferkit.methods.prompt.model import initial_prompt


class EptExpert(ExpertModule):
    def __init__(self, config: EptConfig, backbone: Backbone) -> None:
        super().__init__(config, backbone)
        d = backbone.hidden_size
        start = PromptConfig(num_virtual_tokens=config.num_virtual_tokens, init=config.init, init_text=config.init_text)
        self.prompt = nn.Parameter(initial_prompt(start, backbone))
        self.lowrank_a = nn.Parameter(torch.empty(config.lowrank_positions, config.rank))
        nn.init.kaiming_uniform_(self.lowrank_a, a=math.sqrt(5))
        self.lowrank_b = nn.Parameter(torch.zeros(config.rank, d))
        self.space_u = nn.Parameter(torch.randn(config.num_spaces, d, config.space_rank) / math.sqrt(d))
        self.space_v = nn.Parameter(torch.zeros(config.num_spaces, config.space_rank, d))
        self.gate = nn.Linear(d, config.num_spaces)
        nn.init.zeros_(self.gate.weight)
        nn.init.zeros_(self.gate.bias)
        self.collapsed = False  # True once loaded: `prompt` is already the final prompt

    def embedding_update(self) -> torch.Tensor:
        """U = lowrank_scale · A · B, (s, d)."""
        return self.config.lowrank_scale * (self.lowrank_a @ self.lowrank_b)

    def effective_prompt(self, update: torch.Tensor) -> torch.Tensor:
        """The m x d prompt after fusion with `update` and multi-space projection."""
        if self.collapsed:
            return self.prompt
        attention = torch.softmax(self.prompt @ update.t() / math.sqrt(self.prompt.shape[1]), dim=-1)
        fused = self.prompt + attention @ update
        spaces = fused.unsqueeze(0) + torch.bmm(torch.bmm(fused.expand(len(self.space_u), -1, -1), self.space_u), self.space_v)
        weights = torch.softmax(self.gate(fused), dim=-1)  # (m, K)
        return torch.einsum("mk,kmd->md", weights, spaces)

    def prepare_inputs(self, embeddings: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        batch, length = embeddings.shape[:2]
        update = self.embedding_update()
        rows = min(length, update.shape[0])
        added = nn.functional.pad(update[:rows], (0, 0, 0, length - rows)).to(embeddings.dtype)
        embeddings = embeddings + added.unsqueeze(0) * attention_mask.unsqueeze(-1).to(embeddings.dtype)
        prompt = self.effective_prompt(update).to(embeddings.dtype).unsqueeze(0).expand(batch, -1, -1)
        ones = attention_mask.new_ones(batch, prompt.shape[1])
        return torch.cat([prompt, embeddings], dim=1), torch.cat([ones, attention_mask], dim=1), prompt.shape[1]

    def export_tensors(self) -> dict[str, torch.Tensor]:
        return {
            "prompt": self.effective_prompt(self.embedding_update()).detach().clone(),
            "lowrank_a": self.lowrank_a.detach().clone(),
            "lowrank_b": self.lowrank_b.detach().clone(),
        }

    def import_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self._check_tensor_names(
            tensors,
            {"prompt": tuple(self.prompt.shape), "lowrank_a": tuple(self.lowrank_a.shape), "lowrank_b": tuple(self.lowrank_b.shape)},
        )
        # Fusion, projections and gate are folded into the stored prompt.
        if not self.collapsed:
            del self.space_u, self.space_v, self.gate
            self.collapsed = True
        with torch.no_grad():
            self.prompt.copy_(tensors["prompt"])
            self.lowrank_a.copy_(tensors["lowrank_a"])
            self.lowrank_b.copy_(tensors["lowrank_b"])
