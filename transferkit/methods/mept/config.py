"""Configuration of MEPT (mixture of expert prompts)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from transferkit.errors import InvalidInputError
from transferkit.methods.base import MethodConfig, option


@dataclass
class MeptConfig(MethodConfig):
    """MEPT (Zeng et al., EMNLP 2025): in each chosen layer, a router picks top_k of num_experts deep prompts per example,
    weighted by its softmax probabilities, plus an always-on shared prompt (zero-initialised)."""

    recommended_lr: ClassVar[float] = 1e-2

    num_virtual_tokens: int = option(10, "prompt length P: virtual positions whose hidden states each chosen layer replaces")
    num_experts: int = option(4, "prompt experts per chosen layer")
    top_k: int = option(1, "experts routed per example and layer")
    layers: list[int] | None = option(None, "0-based layers that get expert prompts (comma-separated); default: all")
    noise: float = option(0.0, "router noise during training: Gaussian std relative to the std of the router logits")

    def validate(self) -> None:
        if not 1 <= self.num_virtual_tokens <= 512:
            raise InvalidInputError(f"num_virtual_tokens must be between 1 and 512, got {self.num_virtual_tokens}")
        if self.num_experts < 1:
            raise InvalidInputError(f"num_experts must be at least 1, got {self.num_experts}")
        if not 1 <= self.top_k <= self.num_experts:
            raise InvalidInputError(f"top_k must be between 1 and num_experts={self.num_experts}, got {self.top_k}")
        if self.layers is not None and (not self.layers or len(set(self.layers)) != len(self.layers) or min(self.layers) < 0):
            raise InvalidInputError(f"layers must be distinct non-negative layer indices, got {self.layers}")
        if self.noise < 0:
            raise InvalidInputError(f"noise must be non-negative, got {self.noise}")
