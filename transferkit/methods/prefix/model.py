"""Prefix tuning through the self-attention's key/value cache argument.

BERT-style self-attention (transformers 5) projects keys and values, reshapes
them with the *query* length, then calls `cache.update(key, value, layer_idx)`
(the argument was `past_key_values` before transformers 5.24) and attends over whatever that returns. Extending the key/value
projections' outputs would break that reshape, so a forward pre-hook on each
self-attention module passes a one-layer cache whose `update` returns
[prefix; key] and [prefix; value], and extends the attention mask by P
always-visible positions. Queries keep the real length, so the sequence length,
the residual stream and pooling are unchanged, and the concatenation happens
before the attention kernel (eager, SDPA or flash alike).

Position ids start at 0 by default. PEFT's prefix tuning passes the prefix as a
real cache, and BERT then numbers the tokens after it (P, P+1, ...);
`position_offset=True` does the same, so adapters trained by PEFT import exactly.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from transferkit.backbone import Backbone
from transferkit.errors import InvalidInputError
from transferkit.methods.base import ExpertModule
from transferkit.methods.prefix.config import PrefixConfig
from transferkit.methods.structure import (
    CACHE_ARGUMENT_NAMES,
    cache_argument,
    real_token_activations,
    self_attention_modules,
)


class PrefixCache:
    """The part of transformers' Cache protocol BERT-style self-attention uses: `update` returns the keys/values to attend over."""

    def __init__(self, key: torch.Tensor, value: torch.Tensor) -> None:
        self.key, self.value = key, value  # (P, d)

    def _expand(self, prefix: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        batch, heads, _, head_size = like.shape
        return prefix.to(like.dtype).view(1, prefix.shape[0], heads, head_size).transpose(1, 2).expand(batch, -1, -1, -1)

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, layer_idx: int | None = None, *args, **kwargs):
        return (
            torch.cat([self._expand(self.key, key_states), key_states], dim=2),
            torch.cat([self._expand(self.value, value_states), value_states], dim=2),
        )


def extend_attention_mask(mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """Prepend `length` visible key positions to a 2D keep-mask, a 4D boolean mask or a 4D additive mask."""
    if mask is None:  # no padding: every key, prefix included, is visible
        return None
    if mask.dim() == 2:
        return torch.cat([mask.new_ones(mask.shape[0], length), mask], dim=1)
    if mask.dim() == 4:
        visible = torch.ones if mask.dtype == torch.bool else torch.zeros  # boolean keep-mask vs additive bias
        pad = visible(*mask.shape[:3], length, dtype=mask.dtype, device=mask.device)
        return torch.cat([pad, mask], dim=3)
    raise InvalidInputError(f"prefix tuning cannot extend an attention mask of shape {tuple(mask.shape)}")


def shifted_positions(args: tuple, kwargs: dict, offset: int) -> torch.Tensor:
    """The backbone call's position ids moved `offset` places on (default ids 0..T-1 become offset..offset+T-1)."""
    given = kwargs.get("position_ids")
    if given is not None:
        return given + offset
    inputs = kwargs.get("inputs_embeds")
    if inputs is None:
        inputs = kwargs.get("input_ids", args[0] if args else None)
    if inputs is None:
        raise InvalidInputError("prefix tuning with position_offset needs input_ids or inputs_embeds")
    length = inputs.shape[1]
    return torch.arange(offset, offset + length, device=inputs.device).unsqueeze(0)


class PrefixExpert(ExpertModule):
    def __init__(self, config: PrefixConfig, backbone: Backbone) -> None:
        super().__init__(config, backbone)
        self.num_layers = len(self_attention_modules(backbone, "prefix tuning"))
        d, length = backbone.hidden_size, config.num_virtual_tokens
        start = real_token_activations(backbone, length, "prefix tuning", keys_values=True)
        self.share = config.share
        # share=none trains these directly; deep/simple train `embedding` and the maps, and set them only when loaded.
        self.keys: nn.Parameter | None = None
        self.values: nn.Parameter | None = None
        if config.share == "none":
            self.keys, self.values = nn.Parameter(start["key"].clone()), nn.Parameter(start["value"].clone())
        else:
            # One embedding per layer and position, started at the layer inputs of real tokens.
            self.embedding = nn.Parameter(start["hidden"].clone())
        if config.share == "simple":
            # The frozen layer's own key/value projections: training starts at real tokens' keys and values.
            attention = self_attention_modules(backbone, "prefix tuning")
            weight = torch.stack([torch.cat([a.key.weight.t(), a.value.weight.t()], 1) for a in attention]).detach().float()
            bias = torch.stack([torch.cat([a.key.bias, a.value.bias])[None] for a in attention]).detach().float()
            self.map_weight, self.map_bias = nn.Parameter(weight.cpu().clone()), nn.Parameter(bias.cpu().clone())
        if config.share == "deep":
            # Per-layer MLP d -> h -> 2d (Linear-Tanh-Linear), batched over layers. The output layer starts small
            # with its bias at the layer's mean real key/value, so the initial prefix looks like an average token.
            hidden = config.reparam_hidden
            self.w1 = nn.Parameter(torch.empty(self.num_layers, d, hidden).uniform_(-1 / math.sqrt(d), 1 / math.sqrt(d)))
            self.b1 = nn.Parameter(torch.zeros(self.num_layers, 1, hidden))
            self.w2 = nn.Parameter(torch.randn(self.num_layers, hidden, 2 * d) * 0.01)
            mean = torch.cat([start["key"], start["value"]], dim=2).mean(dim=1, keepdim=True)
            self.b2 = nn.Parameter(mean.clone())
        self._current: list[tuple[torch.Tensor, torch.Tensor]] | None = None

    @property
    def length(self) -> int:
        return self.config.num_virtual_tokens

    def key_values(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-layer prefix keys and values, (L, P, d) each."""
        if self.keys is not None:
            return self.keys, self.values
        if self.share == "simple":
            out = torch.baddbmm(self.map_bias, self.embedding, self.map_weight)
        else:
            out = torch.baddbmm(self.b2, torch.tanh(torch.baddbmm(self.b1, self.embedding, self.w1)), self.w2)
        key, value = out.chunk(2, dim=2)
        return key, value

    def attach(self, backbone: Backbone) -> None:
        self.detach()
        # Keys/values are computed once per backbone forward (the MLP runs once, not once per layer).
        self._handles.append(backbone.model.register_forward_pre_hook(self._compute, with_kwargs=True))
        self._handles.append(backbone.model.register_forward_hook(self._release))
        for index, attention in enumerate(self_attention_modules(backbone, "prefix tuning")):
            hook = self._make_hook(index, cache_argument(attention))
            self._handles.append(attention.register_forward_pre_hook(hook, with_kwargs=True))

    def _compute(self, module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict] | None:
        key, value = self.key_values()
        self._current = list(zip(key.unbind(0), value.unbind(0)))
        if not self.config.position_offset:
            return None
        return args, {**kwargs, "position_ids": shifted_positions(args, kwargs, self.length)}

    def _release(self, module: nn.Module, args: tuple, output: object) -> None:
        self._current = None

    def _make_hook(self, index: int, cache_name: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
            if any(kwargs.get(name) is not None for name in CACHE_ARGUMENT_NAMES):
                raise InvalidInputError("prefix tuning cannot run together with a key/value cache (generation)")
            if self._current is None:
                raise InvalidInputError("prefix tuning runs only through the whole backbone, not a single layer")
            key, value = self._current[index]
            kwargs = {**kwargs, cache_name: PrefixCache(key, value)}
            if len(args) > 1:  # attention mask passed positionally
                args = (args[0], extend_attention_mask(args[1], self.length), *args[2:])
            else:
                kwargs["attention_mask"] = extend_attention_mask(kwargs.get("attention_mask"), self.length)
            return args, kwargs

        return hook

    def export_tensors(self) -> dict[str, torch.Tensor]:
        key, value = self.key_values()
        tensors = {}
        for layer in range(self.num_layers):
            tensors[f"prefix.layer{layer}.key"] = key[layer].detach().clone()
            tensors[f"prefix.layer{layer}.value"] = value[layer].detach().clone()
        return tensors

    def import_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        shape = (self.length, self.backbone_hidden_size)
        self._check_tensor_names(
            tensors, {f"prefix.layer{i}.{kind}": shape for i in range(self.num_layers) for kind in ("key", "value")}
        )
        # Loaded prefixes are final: the reparameterisation is training-only and is dropped.
        for name in ("embedding", "map_weight", "map_bias", "w1", "b1", "w2", "b2"):
            if hasattr(self, name):
                delattr(self, name)
        self.keys = nn.Parameter(torch.stack([tensors[f"prefix.layer{i}.key"] for i in range(self.num_layers)]).float())
        self.values = nn.Parameter(torch.stack([tensors[f"prefix.layer{i}.value"] for i in range(self.num_layers)]).float())
