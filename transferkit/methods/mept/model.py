"""MEPT: routed deep prompts. Per chosen layer, num_experts prompts, a shared prompt and a router.

`prepare_inputs` reserves P virtual positions (holding the frozen pad-token embedding, which is what
layers below the first chosen one see). A forward pre-hook on every chosen block replaces the hidden
states at those positions with that layer's prompt for each example:

    r = mean over real tokens of LayerNorm(h)   (no learnable affine: the router sees normalised states)
    p = softmax(r W_router ᵀ (+ noise while training)),  W_router bias-free, orthogonal init
    prompt = Σ_{k in top_k(p)} p_k · expert_k + shared        (probabilities not renormalised)

Noise, when enabled, is Gaussian with std = noise × the std of that example's logits, training only.
The layout is [task prompt][P virtual][T real tokens], so the virtual positions are found from the
end of the sequence (just before the last T), whatever the task prompt's length.

Load counts (how often each expert was in the top-k, training forward passes only) are a
non-persistent buffer: restoring the best checkpoint does not roll them back, and they are
reported through `training_statistics`, not stored in the artifact.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from transferkit.backbone import Backbone
from transferkit.errors import InvalidInputError
from transferkit.methods.base import ExpertModule
from transferkit.methods.mept.config import MeptConfig
from transferkit.methods.structure import encoder_layers, hidden_states_argument, real_token_activations, with_hidden_states


class MeptExpert(ExpertModule):
    def __init__(self, config: MeptConfig, backbone: Backbone) -> None:
        super().__init__(config, backbone)
        num_layers = len(encoder_layers(backbone, "MEPT"))
        self.layer_ids = sorted(config.layers) if config.layers is not None else list(range(num_layers))
        if self.layer_ids[-1] >= num_layers:
            raise InvalidInputError(f"MEPT layers {self.layer_ids} out of range for a {num_layers}-layer backbone (0..{num_layers - 1})")
        d, length, count = backbone.hidden_size, config.num_virtual_tokens, config.num_experts
        # Experts start as the layer inputs of real tokens (each expert different ones), so they sit at the scale the layer expects.
        start = real_token_activations(backbone, length * count, "MEPT")["hidden"]
        self.experts = nn.Parameter(torch.stack([start[i].view(count, length, d) for i in self.layer_ids]))  # (L, E, P, d)
        self.shared = nn.Parameter(torch.zeros(len(self.layer_ids), length, d))
        router = torch.empty(len(self.layer_ids), count, d)
        for matrix in router:
            nn.init.orthogonal_(matrix)
        self.router = nn.Parameter(router)
        self.register_buffer("load", torch.zeros(len(self.layer_ids), count, dtype=torch.long), persistent=False)
        pad_id = backbone.tokenizer.pad_token_id or 0
        self.register_buffer("placeholder", backbone.input_embeddings().weight[pad_id].detach().float().clone(), persistent=False)
        self._real_mask: torch.Tensor | None = None

    def prepare_inputs(self, embeddings: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        self._real_mask = attention_mask  # the routers pool over these real tokens
        batch, length = embeddings.shape[0], self.config.num_virtual_tokens
        slots = self.placeholder.to(embeddings.dtype).expand(batch, length, -1)
        ones = attention_mask.new_ones(batch, length)
        return torch.cat([slots, embeddings], dim=1), torch.cat([ones, attention_mask], dim=1), length

    def attach(self, backbone: Backbone) -> None:
        self.detach()
        blocks = encoder_layers(backbone, "MEPT")
        self._handles.append(backbone.model.register_forward_hook(self._release))
        for slot, layer in enumerate(self.layer_ids):
            self._handles.append(blocks[layer].register_forward_pre_hook(self._make_hook(slot), with_kwargs=True))

    def _release(self, module: nn.Module, args: tuple, output: object) -> None:
        self._real_mask = None

    def route(self, slot: int, hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(prompts (B, P, d), chosen expert indices (B, top_k)) for the block at `slot` given its real-token hidden states."""
        normed = nn.functional.layer_norm(hidden.float(), (hidden.shape[-1],))
        weights = mask.to(normed.dtype).unsqueeze(-1)
        pooled = (normed * weights).sum(1) / weights.sum(1).clamp_min(1.0)
        logits = pooled @ self.router[slot].t()
        if self.training and self.config.noise > 0:
            logits = logits + torch.randn_like(logits) * self.config.noise * logits.detach().std(dim=-1, keepdim=True)
        probabilities = torch.softmax(logits, dim=-1)
        top, index = probabilities.topk(self.config.top_k, dim=-1)
        mixture = torch.zeros_like(probabilities).scatter(1, index, top)
        return torch.einsum("be,epd->bpd", mixture, self.experts[slot]) + self.shared[slot], index

    def _make_hook(self, slot: int):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
            if self._real_mask is None:  # a backbone call that did not go through prepare_inputs has no virtual positions
                return None
            hidden = hidden_states_argument(args, kwargs)
            mask, length = self._real_mask, self.config.num_virtual_tokens
            start = hidden.shape[1] - mask.shape[1] - length
            prompts, index = self.route(slot, hidden[:, -mask.shape[1]:], mask)
            if self.training:
                self.load[slot] += torch.bincount(index.flatten(), minlength=self.config.num_experts)
            replaced = torch.cat([hidden[:, :start], prompts.to(hidden.dtype), hidden[:, start + length:]], dim=1)
            return with_hidden_states(args, kwargs, replaced)

        return hook

    def training_statistics(self) -> dict[str, Any]:
        config = self.config
        load = self.load.clone()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            torch.distributed.all_reduce(load)  # every process counted the routes of its own share of each batch
        return {
            "expert_load": {f"layer{layer}": load[slot].tolist() for slot, layer in enumerate(self.layer_ids)},
            "num_experts": config.num_experts,
            "top_k": config.top_k,
            "shared_expert": True,
            "layers": list(self.layer_ids),
            # Prompts (of P tokens each) that take part in one example's forward pass, out of all stored ones.
            "activated_prompts": (config.top_k + 1) * len(self.layer_ids),
            "total_prompts": (config.num_experts + 1) * len(self.layer_ids),
        }

    def export_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for slot, layer in enumerate(self.layer_ids):
            tensors[f"layer{layer}.experts"] = self.experts[slot].detach().clone()
            tensors[f"layer{layer}.shared"] = self.shared[slot].detach().clone()
            tensors[f"layer{layer}.router"] = self.router[slot].detach().clone()
        return tensors

    def import_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        expected = {}
        for slot, layer in enumerate(self.layer_ids):
            expected[f"layer{layer}.experts"] = tuple(self.experts[slot].shape)
            expected[f"layer{layer}.shared"] = tuple(self.shared[slot].shape)
            expected[f"layer{layer}.router"] = tuple(self.router[slot].shape)
        self._check_tensor_names(tensors, expected)
        with torch.no_grad():
            for slot, layer in enumerate(self.layer_ids):
                self.experts[slot].copy_(tensors[f"layer{layer}.experts"])
                self.shared[slot].copy_(tensors[f"layer{layer}.shared"])
                self.router[slot].copy_(tensors[f"layer{layer}.router"])
