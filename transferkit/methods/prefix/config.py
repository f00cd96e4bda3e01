"""Configuration of prefix tuning with ReparamPrefix's sharing options."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from transferkit.errors import InvalidInputError
from transferkit.methods.base import MethodConfig, option


@dataclass
class PrefixConfig(MethodConfig):
    """Prefix tuning (Li & Liang): trainable keys and values prepended in every self-attention layer.

    `share` chooses how keys and values are parameterised during training (ReparamPrefix):
    deep = one embedding per layer and position through a per-layer MLP whose output is split into
    key and value; simple = a per-layer linear map of that embedding; none = independent keys and values.
    Only the final per-layer keys and values are stored.
    """

    recommended_lr: ClassVar[float] = 5e-3

    num_virtual_tokens: int = option(10, "prefix length: keys/values prepended in every layer (the sequence length is unchanged)")
    share: Literal["deep", "simple", "none"] = option(
        "deep", "key/value structure while training: shared MLP (deep), shared linear map (simple) or independent (none)"
    )
    reparam_hidden: int = option(128, "hidden width of the share=deep MLP (training only; dropped when stored)")
    position_offset: bool = option(
        False,
        "real tokens' position ids start after the prefix (P, P+1, ...), as in PEFT's prefix tuning, where the prefix "
        "is a key/value cache of length P; off: they start at 0. `import` sets it for PEFT prefix adapters",
    )

    def validate(self) -> None:
        if not 1 <= self.num_virtual_tokens <= 512:
            raise InvalidInputError(f"num_virtual_tokens must be between 1 and 512, got {self.num_virtual_tokens}")
        if self.reparam_hidden < 1:
            raise InvalidInputError(f"reparam_hidden must be positive, got {self.reparam_hidden}")
