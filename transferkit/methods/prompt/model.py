"""Soft prompt: virtual token embeddings prepended to the input."""

from __future__ import annotations

import torch
from torch import nn

from transferkit.backbone import Backbone
from transferkit.methods.base import ExpertModule
from transferkit.methods.prompt.config import PromptConfig


def initial_prompt(config: PromptConfig, backbone: Backbone, generator: torch.Generator | None = None) -> torch.Tensor:
    """Starting prompt values: vocabulary embeddings keep the prompt in the region the encoder was trained on."""
    embedding = backbone.input_embeddings().weight.detach()
    length = config.num_virtual_tokens
    if config.init == "random":
        return torch.randn(length, embedding.shape[1], generator=generator) * embedding.std().item()
    if config.init == "text":
        ids = backbone.tokenizer(config.init_text, add_special_tokens=False)["input_ids"]
        ids = (ids * (length // max(len(ids), 1) + 1))[:length]
        return embedding[torch.tensor(ids)].clone().float()
    # Skip the special/unused low ids of BERT-style vocabularies.
    low = min(1000, embedding.shape[0] // 2)
    ids = torch.randint(low, embedding.shape[0], (length,), generator=generator)
    return embedding[ids].clone().float()


class PromptExpert(ExpertModule):
    def __init__(self, config: PromptConfig, backbone: Backbone) -> None:
        super().__init__(config, backbone)
        self.prompt = nn.Parameter(initial_prompt(config, backbone))
        self.reparam = (
            nn.Sequential(
                nn.Linear(backbone.hidden_size, config.reparam_hidden),
                nn.Tanh(),
                nn.Linear(config.reparam_hidden, backbone.hidden_size),
            )
            if config.reparameterize
            else None
        )
        if self.reparam is not None:
            # Zero last layer: training starts exactly at the initial prompt.
            nn.init.zeros_(self.reparam[2].weight)
            nn.init.zeros_(self.reparam[2].bias)

    def effective_prompt(self) -> torch.Tensor:
        if self.reparam is None:
            return self.prompt
        return self.prompt + self.reparam(self.prompt)

    def prepare_inputs(self, embeddings: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        batch = embeddings.shape[0]
        prompt = self.effective_prompt().to(embeddings.dtype).unsqueeze(0).expand(batch, -1, -1)
        ones = attention_mask.new_ones(batch, prompt.shape[1])
        return torch.cat([prompt, embeddings], dim=1), torch.cat([ones, attention_mask], dim=1), prompt.shape[1]

    def export_tensors(self) -> dict[str, torch.Tensor]:
        return {"prompt": self.effective_prompt().detach().clone()}

    def lent_prompt(self) -> torch.Tensor:
        return self.export_tensors()["prompt"]

    def import_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        self._check_tensor_names(tensors, {"prompt": tuple(self.prompt.shape)})
        # A loaded prompt is already collapsed; the reparameterisation is training-only.
        self.reparam = None
        with torch.no_grad():
            self.prompt.copy_(tensors["prompt"])
