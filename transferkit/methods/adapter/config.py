"""Configuration of the bottleneck adapter."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from transferkit.errors import InvalidInputError
from transferkit.methods.base import MethodConfig, option


@dataclass
class AdapterConfig(MethodConfig):
    """Bottleneck adapter (Houlsby/Pfeiffer): down-project, non-linearity, up-project, added to each FFN output."""

    recommended_lr: ClassVar[float] = 2e-3

    reduction_factor: int = option(16, "hidden size divided by this gives the bottleneck width")
    bottleneck_size: int | None = option(None, "bottleneck width; overrides reduction_factor (merged mixtures use it)")
    activation: Literal["relu", "gelu", "tanh"] = option("relu", "non-linearity inside the bottleneck")
    target_modules: list[str] | None = option(
        None, "module-name suffixes of the FFN output projections; default: PEFT's feed-forward mapping (BERT: output.dense)"
    )

    def validate(self) -> None:
        if self.reduction_factor < 1:
            raise InvalidInputError(f"reduction_factor must be at least 1, got {self.reduction_factor}")
        if self.bottleneck_size is not None and self.bottleneck_size < 1:
            raise InvalidInputError(f"bottleneck_size must be at least 1, got {self.bottleneck_size}")
