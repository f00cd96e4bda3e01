"""Backbone + expert + task head, as one model that maps token ids to logits.

Encoders: the head reads mean-pooled hidden states of the real (non-virtual)
tokens: the embedded MiniLM was trained with mean pooling, and a CLS-pooler
head loses about 11 points on SST-2 before any tuning (REFERENCE.md §5).

Causal LMs: the head reads the final hidden state of the last real token (the
only position that has seen the whole input; as transformers'
`LlamaForSequenceClassification` does, not a verbalizer over the vocabulary).
It is found from the attention mask, so left and right padding give the same
position; transferkit's own batches are right-padded, so the real tokens sit
at consecutive positions right after the prompts. Everything virtual (task prompt, soft
prompt) is prepended, i.e. *before* the text, where every real token can attend
to it.
"""

from __future__ import annotations

import abc
import contextlib
from typing import Literal

import torch
from torch import nn

from transferkit.backbone import Backbone
from transferkit.errors import InvalidInputError
from transferkit.methods import ExpertModule
from transferkit.task_prompt import TaskPrompt

Precision = Literal["fp32", "bf16"]
EXPERT_PREFIX = "expert."
HEAD_PREFIX = "head."
TASK_PROMPT_PREFIX = "task_prompt."
COMPOSITION_PREFIX = "composition."


def mean_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    weights = mask.to(hidden.dtype).unsqueeze(-1)
    return (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1.0)


def last_token_pool(hidden: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Hidden state at each row's last position whose mask is 1 (right or left padding alike)."""
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask.bool(), positions, -1).max(dim=1).values.clamp_min(0)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), last]


class TaskHead(nn.Module):
    """Dropout + linear layer over the pooled representation; one output for regression."""

    def __init__(self, hidden_size: int, num_outputs: int, dropout: float = 0.1) -> None:
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.linear = nn.Linear(hidden_size, num_outputs)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        return self.linear(self.dropout(pooled))


def autocast_context(device: torch.device, precision: Precision) -> contextlib.AbstractContextManager:
    """bf16 autocast for the frozen backbone's matmuls; trainable parameters stay fp32."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


class Composition(nn.Module, abc.ABC):
    """Frozen source experts mixed into the backbone (implemented in `transferkit.composition`)."""

    @abc.abstractmethod
    def attach(self, backbone: Backbone, prompt_length: int) -> None:
        """Install hooks; `prompt_length` leading positions hold the task prompt."""

    @abc.abstractmethod
    def detach(self) -> None:
        """Remove the hooks."""

    @abc.abstractmethod
    def auxiliary_loss(self) -> torch.Tensor | None:
        """Loss term collected during the last forward pass, if any."""

    def observe_task_prompt(self, prompt: torch.Tensor) -> None:
        """Called with the (P, d) task prompt before every backbone pass; a task-level gate reads it."""

    @abc.abstractmethod
    def export_tensors(self) -> dict[str, torch.Tensor]:
        """Trained tensors to store (the frozen sources are referenced by lineage, not copied)."""

    @abc.abstractmethod
    def import_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        """Load tensors written by `export_tensors`."""


class TaskModel(nn.Module):
    """Frozen backbone with trainable expert, task prompt, optional source composition and head.

    Input layout: [task prompt][method's virtual tokens][real tokens]. Only the
    trainable parts are submodules, so `state_dict()` never contains the backbone.
    """

    def __init__(
        self,
        backbone: Backbone,
        expert: ExpertModule,
        num_outputs: int,
        precision: Precision = "fp32",
        task_prompt: TaskPrompt | None = None,
        composition: Composition | None = None,
    ) -> None:
        super().__init__()
        self.backbone = backbone  # plain attribute, not a submodule: its weights are never trained or saved
        self.expert = expert
        self.task_prompt = task_prompt
        self.composition = composition
        self.head = TaskHead(backbone.hidden_size, num_outputs)
        # Weights held in bf16 (load_backbone(..., precision="bf16")) only run under bf16 autocast.
        bf16_weights = next(backbone.model.parameters()).dtype == torch.bfloat16
        self.precision: Precision = "bf16" if bf16_weights else precision
        self.attach()

    def attach(self) -> None:
        """Hook the composition and the expert into the shared backbone (done on construction)."""
        if self.composition is not None:
            self.composition.attach(self.backbone, self.task_prompt.length if self.task_prompt is not None else 0)
        self.expert.attach(self.backbone)

    def detach(self) -> None:
        """Remove every hook from the shared backbone."""
        self.expert.detach()
        if self.composition is not None:
            self.composition.detach()

    def to(self, device: torch.device | str) -> TaskModel:  # type: ignore[override]
        self.backbone.model.to(device)
        return super().to(device)

    @property
    def device(self) -> torch.device:
        return self.head.linear.weight.device

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        embeddings = self.backbone.input_embeddings()(input_ids)
        embeddings, full_mask, virtual = self.expert.prepare_inputs(embeddings, attention_mask)
        if self.task_prompt is not None:
            task_prompt = self.task_prompt()
            if self.composition is not None:
                self.composition.observe_task_prompt(task_prompt)
            prompt = task_prompt.to(embeddings.dtype).unsqueeze(0).expand(embeddings.shape[0], -1, -1)
            embeddings = torch.cat([prompt, embeddings], dim=1)
            full_mask = torch.cat([full_mask.new_ones(full_mask.shape[0], prompt.shape[1]), full_mask], dim=1)
            virtual += prompt.shape[1]
        kwargs = {"inputs_embeds": embeddings, "attention_mask": full_mask}
        if token_type_ids is not None:
            kwargs["token_type_ids"] = torch.cat([token_type_ids.new_zeros(token_type_ids.shape[0], virtual), token_type_ids], dim=1)
        if self.backbone.causal:
            kwargs["use_cache"] = False  # one forward pass per batch: a key/value cache would only cost memory
        with autocast_context(self.device, self.precision):
            hidden = self.backbone.model(**kwargs).last_hidden_state
        if self.backbone.causal:
            return last_token_pool(hidden[:, virtual:].float(), attention_mask)
        return mean_pool(hidden[:, virtual:].float(), attention_mask)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.pooled(input_ids, attention_mask, token_type_ids))

    def trainable_parameter_count(self) -> int:
        """Parameters of the stored expert (collapsed form) plus the head."""
        return sum(t.numel() for t in self.export_tensors().values())

    def parts(self) -> dict[str, nn.Module]:
        """Stored parts by tensor-name prefix."""
        parts: dict[str, nn.Module] = {EXPERT_PREFIX: self.expert, HEAD_PREFIX: self.head}
        if self.task_prompt is not None:
            parts[TASK_PROMPT_PREFIX] = self.task_prompt
        if self.composition is not None:
            parts[COMPOSITION_PREFIX] = self.composition
        return parts

    def export_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {}
        for prefix, part in self.parts().items():
            exported = part.export_tensors() if hasattr(part, "export_tensors") else part.state_dict()
            tensors.update({prefix + k: v.detach().clone().contiguous().cpu() for k, v in exported.items()})
        return tensors

    def import_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        known = tuple(self.parts())
        unexpected = sorted(k for k in tensors if not k.startswith(known))
        if unexpected:
            raise InvalidInputError(f"stored expert has tensors this model does not use: {unexpected[:3]}")
        for prefix, part in self.parts().items():
            subset = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
            if prefix in (HEAD_PREFIX, TASK_PROMPT_PREFIX):
                _load_exact(part, subset)
            else:
                part.import_tensors(subset)


def _load_exact(module: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
    """Copy tensors into `module`'s trainable parameters, refusing any name or shape mismatch."""
    expected = {k: tuple(v.shape) for k, v in module.named_parameters() if v.requires_grad}
    if set(tensors) != set(expected) or any(tuple(tensors[k].shape) != expected[k] for k in expected):
        found = {k: tuple(v.shape) for k, v in tensors.items()}
        raise InvalidInputError(f"stored tensors {found} do not match the expected {expected}")
    with torch.no_grad():
        for name, parameter in module.named_parameters():
            if name in tensors:
                parameter.copy_(tensors[name])
