"""PEMT-style task-description prompts.

Every expert carries a short soft prompt initialised from the frozen token
embeddings of its task's one-sentence description and trained with it. For a
target task, the prompt is enriched by its correlation with the sources'
prompts (PEMT stage 2): prompt = T + sum_j dropout(softmax(T S_j^T)) S_j.
With `learn_source_scale` the sources' term is multiplied by a learned scalar s
that starts at 0 (prompt = T + s sum_j ...): four source prompts added at full
weight give the composed prompt about 5x the norm of a word embedding, and the
target's own prompt then learns about 10x slower (measured on CoLA,
docs/results.md), so the target starts from its own prompt and takes the sources'
as far as they help, as pemt's zero expert does for their weights.

Deviation from the paper, for CPU cost: the paper's prompt is as long as the
description (about 25 tokens, which would triple the sequence length of an
SST-2 sentence). Here the description's token embeddings are average-pooled
into at most `length` contiguous segments (default 8), keeping their order and
content; `--task-prompt-length 64` gives the paper's full-length prompt, and 0
disables the prompt.
"""

from __future__ import annotations

import torch
from torch import nn

from transferkit.backbone import Backbone

DEFAULT_TASK_PROMPT_LENGTH = 8


def description_prompt(description: str, backbone: Backbone, length: int) -> torch.Tensor:
    """(P, d) token embeddings of the description, average-pooled into at most `length` segments."""
    ids = backbone.tokenizer(description, add_special_tokens=False)["input_ids"]
    if not ids:
        ids = [backbone.tokenizer.unk_token_id or 0]
    embeddings = backbone.input_embeddings().weight.detach()[torch.tensor(ids)].float()
    if len(ids) <= length:
        return embeddings.clone()
    segments = torch.tensor_split(embeddings, length, dim=0)
    return torch.stack([segment.mean(dim=0) for segment in segments])


class TaskPrompt(nn.Module):
    """A trainable description prompt T, optionally correlated with frozen source prompts S_j (their term scaled by a
    learned scalar from 0 with `learn_source_scale`)."""

    def __init__(
        self, initial: torch.Tensor, source_prompts: list[torch.Tensor] | None = None, dropout: float = 0.1,
        learn_source_scale: bool = False,
    ) -> None:
        super().__init__()
        self.embedding = nn.Parameter(initial.clone())
        self.sources = nn.ParameterList([nn.Parameter(s.clone(), requires_grad=False) for s in source_prompts or []])
        self.dropout = nn.Dropout(dropout)
        self.source_scale = nn.Parameter(torch.zeros(())) if learn_source_scale and self.sources else None

    @property
    def length(self) -> int:
        return self.embedding.shape[0]

    def forward(self) -> torch.Tensor:
        prompt = self.embedding
        for source in self.sources:
            correlated = self.dropout(torch.softmax(self.embedding @ source.t(), dim=-1)) @ source
            prompt = prompt + (correlated if self.source_scale is None else self.source_scale * correlated)
        return prompt

    def export_tensors(self) -> dict[str, torch.Tensor]:
        """The collapsed prompt (correlation included, no dropout): what inference uses."""
        was_training = self.training
        self.eval()
        with torch.no_grad():
            prompt = self().detach().clone()
        self.train(was_training)
        return {"embedding": prompt}
