"""Training-free merges of LoRA experts, as their papers define them, on each module's weight change.

For every module the sources adapt, source j changes the frozen weight by
ΔW_j = s_j B_j A_j (s_j = alpha / r). With weights w_j:

- `linear` (task arithmetic): ΔW = Σ_j w_j ΔW_j. Exact as one LoRA of stacked factors
  (A = [A_1; A_2; ...], B = [w_1 s_1 B_1, w_2 s_2 B_2, ...]), no SVD (`ExpertStack.merge`).
- `ties` (Yadav et al., NeurIPS 2023): (1) trim: keep each ΔW_j's `density` fraction of entries
  with the largest magnitude, zero the rest; (2) elect sign: per entry, the sign of Σ_j w_j ΔW̃_j
  (+ where it is 0); (3) disjoint merge: per entry, the mean of w_j ΔW̃_j over the sources whose
  trimmed value is non-zero and has the elected sign (0 where none has).
- `dare_linear` / `dare_ties` (Yu et al., ICML 2024): drop each entry of each ΔW_j independently with
  probability 1 − density and divide the kept ones by density (so the expectation is ΔW_j), from a
  seeded generator; then merge linearly, or with TIES's sign election and disjoint merge (no trim).

Trimming is per module (each source's ΔW for that module), as PEFT's `add_weighted_adapter` does, not
over the whole model as in the TIES paper. PEFT elects the sign from the unweighted trimmed values; here
it is elected from the weighted ones, so a source given weight 0 has no vote (with equal weights, as in
the paper, the two agree). The result of ties/dare is a dense matrix of full rank in general: it is
refactored into a LoRA of rank `rank` by truncated SVD (B = U_r S_r^½, A = S_r^½ V_rᵀ, scaling 1), and
the relative Frobenius error of that truncation is reported per module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from transferkit.backbone import Backbone
from transferkit.errors import InvalidInputError
from transferkit.methods.lora import LoraConfig, LoraExpert

COMBINES = ("linear", "ties", "dare_linear", "dare_ties")
SIGN_ELECTING = ("ties", "dare_ties")
DROPPING = ("dare_linear", "dare_ties")


def trim(delta: torch.Tensor, density: float) -> torch.Tensor:
    """TIES's trim: keep the round(density x n) entries of largest magnitude (at least one), zero the rest."""
    keep = max(1, round(density * delta.numel()))
    if keep >= delta.numel():
        return delta.clone()
    flat = delta.reshape(-1)
    kept = torch.zeros_like(flat)
    index = flat.abs().topk(keep).indices
    kept[index] = flat[index]
    return kept.reshape(delta.shape)


def drop_and_rescale(delta: torch.Tensor, density: float, generator: torch.Generator) -> torch.Tensor:
    """DARE: keep each entry with probability `density` and divide it by `density`; drop the others."""
    if density >= 1.0:
        return delta.clone()
    mask = torch.rand(delta.shape, generator=generator, dtype=torch.float64) < density
    return torch.where(mask, delta / density, torch.zeros_like(delta))


def elect_sign(weighted: torch.Tensor) -> torch.Tensor:
    """TIES's elected sign per entry of (J, ...) weighted changes: the sign of their sum, +1 where it is 0."""
    return torch.where(weighted.sum(dim=0) >= 0, 1.0, -1.0).to(weighted.dtype)


def disjoint_mean(weighted: torch.Tensor, sign: torch.Tensor) -> torch.Tensor:
    """TIES's disjoint merge: per entry, the mean over the sources whose non-zero value has the elected sign."""
    agrees = torch.sign(weighted) == sign.unsqueeze(0)  # zeros never agree: sign(0) = 0
    count = agrees.sum(dim=0).clamp_min(1)
    return (weighted * agrees).sum(dim=0) / count


def combine_deltas(
    deltas: torch.Tensor, weights: torch.Tensor, combine: str, density: float = 1.0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The merged change of one module from the sources' (J, out, in) changes and (J,) weights."""
    if combine not in COMBINES:
        raise InvalidInputError(f"unknown combine {combine!r}; choose one of {', '.join(COMBINES)}")
    if combine == "ties":
        deltas = torch.stack([trim(delta, density) for delta in deltas])
    elif combine in DROPPING:
        if generator is None:
            raise InvalidInputError("DARE needs a seeded generator")
        deltas = torch.stack([drop_and_rescale(delta, density, generator) for delta in deltas])
    weighted = deltas * weights.to(deltas.dtype).reshape(-1, *([1] * (deltas.dim() - 1)))
    if combine in SIGN_ELECTING:
        return disjoint_mean(weighted, elect_sign(weighted))
    return weighted.sum(dim=0)


def refactor(delta: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(A (rank, in), B (out, rank), relative Frobenius error) with B A the best rank-`rank` approximation of `delta`."""
    u, s, vh = torch.linalg.svd(delta.double(), full_matrices=False)
    root = s[:rank].sqrt()
    b, a = u[:, :rank] * root, root[:, None] * vh[:rank]
    norm = float(s.norm())
    error = float(s[rank:].norm()) / norm if norm > 0 else 0.0
    if a.shape[0] < rank:  # a matrix smaller than the rank: pad with zero directions (exact)
        a = torch.cat([a, a.new_zeros(rank - a.shape[0], a.shape[1])])
        b = torch.cat([b, b.new_zeros(b.shape[0], rank - b.shape[1])], dim=1)
    return a.float(), b.float(), error


def lora_deltas(experts: list[LoraExpert], name: str, shape: tuple[int, int]) -> torch.Tensor:
    """(J, out, in) scaled changes s_j B_j A_j of one module, zeros for a source that does not adapt it, in float64."""
    deltas = torch.zeros(len(experts), *shape, dtype=torch.float64)
    for j, expert in enumerate(experts):
        if name in expert.module_names:
            pair = expert.pairs[name.replace(".", "/")]
            deltas[j] = expert.scaling * (pair.lora_B.detach().double() @ pair.lora_A.detach().double())
    return deltas


def module_shapes(experts: list[LoraExpert]) -> dict[str, tuple[int, int]]:
    """(out, in) of every module any source adapts."""
    shapes = {}
    for expert in experts:
        for name in expert.module_names:
            pair = expert.pairs[name.replace(".", "/")]
            shapes[name] = (pair.lora_B.shape[0], pair.lora_A.shape[1])
    return dict(sorted(shapes.items()))


@dataclass(frozen=True)
class MergeReport:
    """How faithful the refactored LoRA is: per module, ||ΔW_merged - B A||_F / ||ΔW_merged||_F."""

    relative_error: dict[str, float]

    def to_dict(self) -> dict:
        errors = list(self.relative_error.values())
        return {
            "relative_error": {name: round(error, 6) for name, error in self.relative_error.items()},
            "max_relative_error": round(max(errors), 6) if errors else 0.0,
            "mean_relative_error": round(sum(errors) / len(errors), 6) if errors else 0.0,
        }


def merge_lora_entrywise(
    experts: list[LoraExpert], weights: list[float], combine: str, density: float, rank: int, seed: int | None,
    backbone: Backbone,
) -> tuple[LoraExpert, MergeReport]:
    """TIES or DARE over the sources' ΔW of every module, refactored into one LoRA of rank `rank` (scaling 1).

    DARE's masks come from one generator seeded with `seed`, drawn module by module (sorted names), source by
    source, so the same recipe always gives the same expert.
    """
    if combine == "linear":
        raise InvalidInputError("linear merges exactly by stacking factors; use ExpertStack.merge")
    shapes = module_shapes(experts)
    generator = torch.Generator().manual_seed(int(seed)) if combine in DROPPING and seed is not None else None
    merged = LoraExpert(LoraConfig(r=rank, alpha=float(rank), dropout=0.0, target_modules=list(shapes)), backbone)
    errors = {}
    with torch.no_grad():
        for name, shape in shapes.items():
            combined = combine_deltas(lora_deltas(experts, name, shape), torch.tensor(weights, dtype=torch.float64), combine, density, generator)
            a, b, errors[name] = refactor(combined, rank)
            pair = merged.pairs[name.replace(".", "/")]
            pair.lora_A.copy_(a)
            pair.lora_B.copy_(b)
    return merged, MergeReport(errors)
