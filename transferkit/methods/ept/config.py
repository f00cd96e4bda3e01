"""Configuration of EPT (short prompt + low-rank embedding update + prompt fusion + multi-space projection)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

from transferkit.errors import InvalidInputError
from transferkit.methods.base import MethodConfig, option


@dataclass
class EptConfig(MethodConfig):
    """EPT (Lan et al., AAAI 2025): a short soft prompt plus a low-rank update A·B of the first real tokens' embeddings
    (DePT decomposition), prompt fusion and a gated mixture of K projection subspaces.

    Defaults train about as many parameters as a 20-token `prompt` (on MiniLM: 8,194 vs 7,680) with a 10-token prompt.
    """

    recommended_lr: ClassVar[float] = 3e-2

    num_virtual_tokens: int = option(10, "length m of the short prompt prepended to every input")
    init: Literal["vocab", "random", "text"] = option("vocab", "prompt initialisation, as for the prompt method")
    init_text: str | None = option(None, "text whose token embeddings initialise the prompt (init=text)")
    lowrank_positions: int = option(128, "s: the first s real tokens get A·B added to their embeddings (default = --max-length)")
    rank: int = option(4, "r: rank of the embedding update A (s x r) · B (r x d)")
    lowrank_scale: float = option(0.1, "multiplier on A·B: keeps the update small relative to the frozen embeddings at the prompt's lr")
    num_spaces: int = option(2, "K: projection subspaces mixed by the softmax gate")
    space_rank: int = option(1, "rank of each subspace projection x + x·U_k·V_k")

    def validate(self) -> None:
        if not 1 <= self.num_virtual_tokens <= 512:
            raise InvalidInputError(f"num_virtual_tokens must be between 1 and 512, got {self.num_virtual_tokens}")
        if self.init == "text" and not self.init_text:
            raise InvalidInputError("init=text needs init_text=\"...\"")
        if self.lowrank_positions < 1 or self.rank < 1:
            raise InvalidInputError(f"lowrank_positions and rank must be positive, got {self.lowrank_positions} and {self.rank}")
        if self.lowrank_scale <= 0:
            raise InvalidInputError(f"lowrank_scale must be positive, got {self.lowrank_scale}")
        if self.num_spaces < 1 or self.space_rank < 1:
            raise InvalidInputError(f"num_spaces and space_rank must be positive, got {self.num_spaces} and {self.space_rank}")
