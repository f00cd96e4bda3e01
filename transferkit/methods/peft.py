"""What a method registers to be exported to and imported from PEFT's adapter format (`transferkit.interop.peft_format`).

A method with a PEFT counterpart gives its `MethodType` a `PeftMapping`: PEFT's type name, the prefix PEFT puts
before the method's tensor names, and two functions: `export` (the stored expert's tensors -> PEFT's config,
tensor names and the recipe that reproduces transferkit's logits) and `load` (an adapter's tensors -> the
method's tensors and config). The format's shared parts (reading folders, the head, the side file, the model
card, provenance) stay in `peft_format`; only what differs per method lives in the method's folder.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from transferkit.backbone import Backbone
from transferkit.errors import IncompatibleBackboneError, InvalidInputError

HEAD_MODULE = "transferkit_head"
_UNUSED_TOKEN = re.compile(r"^\[unused\d+\]$|^<unused\d+>$")


@dataclass(frozen=True)
class PeftRecipe:
    """How to get transferkit's logits from the PEFT model (stored in transferkit.json, read by the model card's code)."""

    head_module: str | None  # modules_to_save module holding the head; None: the expert has no head
    num_outputs: int | None
    prepend_token_ids: list[int]  # put in front of the input (LoRA's task prompt as trainable tokens)
    skip_leading_outputs: int  # leading positions of last_hidden_state that are not real tokens
    position_shift: int  # pass position_ids = arange(T) - shift (prefix: PEFT adds the prefix length)
    fold_token_types: bool  # PEFT drops token_type_ids here: add their embeddings to inputs_embeds
    task_prompt_length: int


@dataclass(frozen=True)
class PeftExportInput:
    """A stored expert as its method's export sees it."""

    name: str  # the expert's name, for error messages
    config: dict  # the expert's method config
    tensors: dict[str, torch.Tensor]  # the method's own tensors (no expert prefix)
    task_prompt: torch.Tensor | None  # the task-description prompt, if the expert has one
    head_module: str | None  # where the head goes (HEAD_MODULE), None without a head
    num_outputs: int | None
    backbone: Backbone
    common: dict  # PEFT config fields every export sets (task type, base model, revision, modules_to_save)

    @property
    def task_prompt_length(self) -> int:
        return 0 if self.task_prompt is None else self.task_prompt.shape[0]

    def prompt_learning_shape(self) -> dict[str, int]:
        """PEFT's prompt-learning config fields that describe the backbone."""
        hidden, layers, heads = dimensions(self.backbone)
        return {"token_dim": hidden, "num_transformer_submodules": 1, "num_attention_heads": heads, "num_layers": layers}


@dataclass(frozen=True)
class PeftExport:
    """A method's PEFT form: the PEFT config object, the method's tensors under PEFT's names, and the recipe."""

    config: Any
    weights: dict[str, torch.Tensor]
    head_prefix: str  # where PEFT keeps modules_to_save: the head's tensors are named `<head_prefix><HEAD_MODULE>.<key>`
    recipe: PeftRecipe


@dataclass(frozen=True)
class PeftImportInput:
    """An adapter's tensors as its method's import sees them (after PEFT's prefix and the head are split off)."""

    config: dict  # adapter_config.json
    tensors: dict[str, torch.Tensor]  # the method's tensors without PEFT's prefix
    recipe: dict | None  # the recipe from transferkit.json, when transferkit exported the adapter
    backbone: Backbone
    where: str  # "the <PEFT type> adapter in <folder>", for error messages

    @property
    def task_prompt_length(self) -> int:
        return self.recipe["task_prompt_length"] if self.recipe else 0


@dataclass(frozen=True)
class PeftLoaded:
    """What an adapter holds, by transferkit's names: the method's tensors, the task prompt, the method config."""

    tensors: dict[str, torch.Tensor]  # the method's own tensor names (as its module's import_tensors takes them)
    task_prompt: torch.Tensor | None
    config: dict


@dataclass(frozen=True)
class PeftMapping:
    """A method's PEFT counterpart: registered on its `MethodType` (`peft=`)."""

    peft_type: str  # PEFT's name for it, e.g. "LORA"
    tensor_prefix: str  # what PEFT puts before the method's tensor names in adapter_model.safetensors
    export: Callable[[PeftExportInput], PeftExport]
    load: Callable[[PeftImportInput], PeftLoaded]


def dimensions(backbone: Backbone) -> tuple[int, int, int]:
    """(hidden size, layers, attention heads) of the backbone."""
    config = backbone.model.config
    return backbone.hidden_size, backbone.fingerprint.num_layers, int(config.num_attention_heads)


def require_fit(config: dict, key: str, expected: int, where: str, what: str) -> None:
    """Refuse an adapter made for another shape of backbone (a missing field is not checked)."""
    value = config.get(key)
    if value is not None and value != expected:
        raise IncompatibleBackboneError(f"{where} was made for {value} {what}, but the backbone has {expected}; pass the adapter's own base model")


def prompt_embeddings(source: PeftImportInput) -> torch.Tensor:
    """A prompt-learning adapter's one tensor, checked against its config's number of virtual tokens."""
    if set(source.tensors) != {"prompt_embeddings"}:
        raise InvalidInputError(
            f"{source.where} has tensors {sorted(source.tensors)[:3]}; a {source.config.get('peft_type')} adapter holds prompt_embeddings"
        )
    embeddings = source.tensors["prompt_embeddings"].float()
    require_fit(source.config, "num_virtual_tokens", embeddings.shape[0], source.where, "virtual tokens")
    return embeddings


def unused_token_ids(backbone: Backbone, count: int, name: str) -> list[int]:
    """Ids of `count` unused vocabulary entries ([unused0], ...) whose embeddings can carry a task prompt."""
    ids = sorted(i for token, i in backbone.tokenizer.get_vocab().items() if _UNUSED_TOKEN.match(token))
    if len(ids) < count:
        raise InvalidInputError(
            f"expert {name} cannot be exported for PEFT: its {count}-token task prompt would ride on unused vocabulary "
            f"entries, and this backbone's vocabulary has {len(ids)}; train with --task-prompt-length 0 or use --format bundle"
        )
    return ids[:count]


def input_embedding_name(backbone: Backbone) -> str:
    embedding = backbone.input_embeddings()
    return next(name for name, module in backbone.model.named_modules() if module is embedding)
