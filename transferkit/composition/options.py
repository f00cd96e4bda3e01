"""The options of a `transfer` job, as given by the user (checked by `transfer` and by the chosen strategy)."""

from __future__ import annotations

from dataclasses import dataclass, field

from transferkit.job_options import JobOptions
from transferkit.training.loop import TrainingConfig

HEAD_INITS = ("auto", "none")
GATE_INITS = ("uniform", "arrow")
SOURCE_PROMPT_SCALES = ("fixed", "learned")
DEFAULT_TARGET_METHOD = "adapter"

# Gates and the target prompt learn at this rate by default. At 1e-2 the zero-initialised gate
# committed to an arbitrary source within a few steps (which one varied by seed); at 2e-3 MNLI
# took the largest weight on CB in 3 of 3 seeds and CB accuracy rose (docs/results.md, "Transfer results").
TRANSFER_PROMPT_LR = 2e-3

# PEMT's task sparsity loss is off by default: on CoLA dev it cost MCC with the zero expert in the gate, and RTE and CB
# dev did not move (docs/transfer.md, "How the zero expert's prior and λ were chosen"). --sparsity-weight turns it on.
DEFAULT_SPARSITY_WEIGHT = 0.0


@dataclass(kw_only=True)
class TransferJob(JobOptions):
    """A `transfer` job."""

    target: str | None
    strategy: str = "pemt"
    sources: list[str] | None = None
    top_k: int | None = None
    route_top_k: int | None = None
    sparsity_weight: float = DEFAULT_SPARSITY_WEIGHT
    # pemt's gate reads the prompt-position states of each layer ("states", PEMT) or the task prompt alone
    # ("task": the same weights for every input, so the trained mixture can be merged into one expert).
    gate_input: str = "states"
    # pemt's gate also weighs an expert whose change is zero, so the mixture can use none of the sources.
    zero_expert: bool | None = None  # None: the strategy's default (pemt: transferkit.composition.pemt.DEFAULT_ZERO_EXPERT)
    # "auto": start the target's head from the sources' heads where their labels match (transferkit.composition.heads).
    head_init: str = "auto"
    # pemt's gate starts uniform, or at Arrow's routing of the task state (transferkit.composition.arrow.initialise_gate).
    gate_init: str = "uniform"
    # pemt's target prompt adds the sources' correlated prompts at full weight ("fixed", PEMT) or scaled by a learned
    # scalar that starts at 0 ("learned"; transferkit.task_prompt.TaskPrompt). None: pemt's default.
    source_prompt_scale: str | None = None
    # The target's own expert for pemt/average/scratch (default: adapter); for spot it restricts the sources
    # to that method; attempt trains its own target prompt and takes none.
    method: str | None = None
    training: TrainingConfig = field(default_factory=lambda: TrainingConfig(prompt_lr=TRANSFER_PROMPT_LR))
