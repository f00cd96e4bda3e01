"""Finding a backbone's transformer blocks and self-attention modules by structure, not by name.

Deep-prompt methods (prefix, MEPT) hook every block; BERT-family encoders
(BERT, RoBERTa, ELECTRA, XLM-R, ...) share the same block and attention code
but not the same attribute paths, so blocks are found as the ModuleList with
one entry per hidden layer, and self-attention as the module in each block that
projects `key`/`value` and accepts a key/value cache.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn

from transferkit.backbone import Backbone
from transferkit.errors import InvalidInputError


def encoder_layers(backbone: Backbone, method: str) -> list[nn.Module]:
    """The transformer blocks in order (BERT: `encoder.layer`)."""
    count = backbone.fingerprint.num_layers
    for module in backbone.model.modules():
        if isinstance(module, nn.ModuleList) and count > 0 and len(module) == count:
            return list(module)
    raise InvalidInputError(
        f"{method} needs a stack of {count} transformer blocks, which model type {backbone.fingerprint.model_type!r} does not expose"
    )


# transformers renamed the self-attention's cache argument (`past_key_values` before 5.24, `cache` after).
CACHE_ARGUMENT_NAMES = ("cache", "past_key_values")


def cache_argument(module: nn.Module) -> str | None:
    """The name under which this attention module's forward takes a key/value cache, if it takes one."""
    parameters = inspect.signature(module.forward).parameters
    return next((name for name in CACHE_ARGUMENT_NAMES if name in parameters), None)


def _is_self_attention(module: nn.Module) -> bool:
    return (
        isinstance(getattr(module, "key", None), nn.Linear)
        and isinstance(getattr(module, "value", None), nn.Linear)
        and "attention_mask" in inspect.signature(module.forward).parameters
        and cache_argument(module) is not None
    )


def self_attention_modules(backbone: Backbone, method: str) -> list[nn.Module]:
    """Per block, the one self-attention module (BERT: `attention.self`)."""
    found = []
    for layer in encoder_layers(backbone, method):
        candidates = [m for m in layer.modules() if _is_self_attention(m)]
        if len(candidates) != 1:
            raise InvalidInputError(
                f"{method} supports BERT-style encoders (self-attention with key/value projections and a key/value cache); "
                f"model type {backbone.fingerprint.model_type!r} is not supported"
            )
        found.append(candidates[0])
    return found


def hidden_states_argument(args: tuple, kwargs: dict) -> torch.Tensor:
    """A block's or attention module's input hidden states, positional or keyword."""
    return args[0] if args else kwargs["hidden_states"]


def with_hidden_states(args: tuple, kwargs: dict, hidden: torch.Tensor) -> tuple[tuple, dict]:
    """(args, kwargs) with the hidden-states argument replaced, for a forward pre-hook's return value."""
    if args:
        return (hidden, *args[1:]), kwargs
    return args, {**kwargs, "hidden_states": hidden}


@torch.no_grad()
def real_token_activations(backbone: Backbone, num_tokens: int, method: str, keys_values: bool = False) -> dict[str, torch.Tensor]:
    """Per layer, the block inputs (and with `keys_values`, the attention key/value projections) of `num_tokens`
    random vocabulary tokens, shapes (L, num_tokens, d).

    Deep prompts and prefixes start from these: values the frozen layers actually see,
    instead of random numbers at an arbitrary scale.
    """
    embedding = backbone.input_embeddings().weight
    low = min(1000, embedding.shape[0] // 2)  # skip the special/unused low ids of BERT-style vocabularies
    ids = torch.randint(low, embedding.shape[0], (1, num_tokens), device=embedding.device)
    captured: dict[str, list[torch.Tensor]] = {"hidden": [], "key": [], "value": []}
    handles = [
        layer.register_forward_pre_hook(
            lambda m, a, k: captured["hidden"].append(hidden_states_argument(a, k)[0].float().cpu()), with_kwargs=True
        )
        for layer in encoder_layers(backbone, method)
    ]
    if keys_values:
        for attention in self_attention_modules(backbone, method):
            handles.append(attention.key.register_forward_hook(lambda m, a, out: captured["key"].append(out[0].float().cpu())))
            handles.append(attention.value.register_forward_hook(lambda m, a, out: captured["value"].append(out[0].float().cpu())))
    was_training = backbone.model.training
    try:
        backbone.model.eval()
        backbone.model(input_ids=ids, attention_mask=torch.ones_like(ids))
    finally:
        backbone.model.train(was_training)
        for handle in handles:
            handle.remove()
    return {name: torch.stack(values) for name, values in captured.items() if values}
