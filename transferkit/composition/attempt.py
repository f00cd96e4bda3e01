"""ATTEMPT (Asai et al., 2022): per-example attention over frozen source prompts plus a new target prompt.

For an input with real-token embeddings X, the attention module summarises the
input as x = max-pool over its tokens and maps it to h = LayerNorm(W_up SiLU(W_down x)).
Each prompt P_j (the t frozen source prompts and the trainable target prompt) is
summarised as k_j = max-pool over its tokens. The weights

    a = softmax(k . h / T)   over the t + 1 prompts, for each example,

give the prompt prepended to that example: P_target + sum_j a_j P_j.
Trained: the target prompt and the attention module (plus, as for every
transferkit expert, the head and the task-description prompt). The sources are
referenced by lineage, never copied into the new expert's artifact.

Temperature: ATTEMPT used T = d * e for T5, whose embeddings are large. Here the
default is T = sqrt(d): with BERT-scale embeddings (norm about 1) and a
layer-normed h (norm sqrt(d)), d * e would pin the attention to uniform.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from transferkit.backbone import Backbone
from transferkit.composition.options import TransferJob
from transferkit.composition.plugins import Lineage, Prepared, Strategy, StrategyContext, check_composition_config, predict_dev
from transferkit.errors import InvalidInputError
from transferkit.experts import load_method_expert
from transferkit.methods.base import ExpertModule, MethodConfig, option
from transferkit.methods.prompt.config import PromptConfig
from transferkit.methods.prompt.model import initial_prompt
from transferkit.modeling import TaskModel
from transferkit.registry import ExpertReader, ExpertRecord
from transferkit.task_prompt import TaskPrompt

ATTEMPT_METHOD = "attempt"


@dataclass
class AttemptConfig(MethodConfig):
    """ATTEMPT's target prompt and attention module (`-O KEY=VALUE` with `transfer --strategy attempt`)."""

    recommended_lr: ClassVar[float] = 3e-2

    attention_hidden: int = option(64, "width r of the attention module's down/up projection (d -> r -> d)")
    temperature: float | None = option(None, "softmax temperature T of the attention (default sqrt(hidden size))")

    def validate(self) -> None:
        if self.attention_hidden < 1:
            raise InvalidInputError(f"attention_hidden must be positive, got {self.attention_hidden}")
        if self.temperature is not None and not self.temperature > 0:
            raise InvalidInputError(f"temperature must be positive, got {self.temperature}")


class AttemptExpert(ExpertModule):
    """The target side of ATTEMPT: prepends an instance-specific mixture of the source and target prompts."""

    def __init__(self, config: AttemptConfig, backbone: Backbone, source_prompts: list[torch.Tensor]) -> None:
        super().__init__(config, backbone)
        lengths = {tuple(p.shape) for p in source_prompts}
        if not source_prompts or len(lengths) != 1:
            raise InvalidInputError(
                "attempt needs source prompts of one shape; pass --sources that are prompt experts with the same "
                f"num_virtual_tokens (got shapes {sorted(lengths)})"
            )
        length, hidden = next(iter(lengths))
        if hidden != backbone.hidden_size:
            raise InvalidInputError(f"source prompts have width {hidden}, the backbone {backbone.hidden_size}")
        self.register_buffer("sources", torch.stack([p.detach().float() for p in source_prompts]), persistent=False)
        self.target = nn.Parameter(initial_prompt(PromptConfig(num_virtual_tokens=length), backbone))
        self.down = nn.Linear(hidden, config.attention_hidden)
        self.up = nn.Linear(config.attention_hidden, hidden)
        self.norm = nn.LayerNorm(hidden)
        self.temperature = config.temperature or math.sqrt(hidden)
        self._attention_sum: torch.Tensor | None = None
        self._attention_count = 0

    @property
    def num_sources(self) -> int:
        return self.sources.shape[0]

    def prompts(self) -> torch.Tensor:
        """(t + 1, m, d): the frozen source prompts, then the target prompt."""
        return torch.cat([self.sources, self.target.unsqueeze(0)], dim=0)

    def attention(self, embeddings: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, t + 1) softmax weights over the prompts, one row per example."""
        padding = ~attention_mask.bool().unsqueeze(-1)
        pooled = embeddings.float().masked_fill(padding, float("-inf")).max(dim=1).values
        state = self.norm(self.up(nn.functional.silu(self.down(pooled))))
        keys = self.prompts().max(dim=1).values
        return torch.softmax(state @ keys.t() / self.temperature, dim=-1)

    def prepare_inputs(self, embeddings: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, int]:
        weights = self.attention(embeddings, attention_mask)
        if self._attention_sum is not None:
            self._attention_sum += weights.detach().sum(0).cpu()
            self._attention_count += weights.shape[0]
        prompt = self.target + torch.einsum("bj,jmd->bmd", weights, self.prompts())
        ones = attention_mask.new_ones(prompt.shape[0], prompt.shape[1])
        return torch.cat([prompt.to(embeddings.dtype), embeddings], dim=1), torch.cat([ones, attention_mask], dim=1), prompt.shape[1]

    def start_recording(self) -> None:
        """Accumulate the attention weights of the following forward passes."""
        self._attention_sum, self._attention_count = torch.zeros(self.num_sources + 1), 0

    def stop_recording(self) -> list[float]:
        """Mean attention weight per prompt (sources, then the target) since `start_recording`."""
        total, count = self._attention_sum, max(self._attention_count, 1)
        self._attention_sum = None
        return [round(float(v) / count, 6) for v in (total if total is not None else torch.zeros(self.num_sources + 1))]

    def export_tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"target": self.target.detach().clone()}
        for part in ("down", "up", "norm"):
            tensors.update({f"{part}.{k}": v.detach().clone() for k, v in getattr(self, part).state_dict().items()})
        return tensors

    def import_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        expected = {name: tuple(t.shape) for name, t in self.export_tensors().items()}
        self._check_tensor_names(tensors, expected)
        with torch.no_grad():
            self.target.copy_(tensors["target"])
            for part in ("down", "up", "norm"):
                module = getattr(self, part)
                module.load_state_dict({k: tensors[f"{part}.{k}"] for k in module.state_dict()})


def build_attempt(sources: list[ExpertModule], config: AttemptConfig, backbone: Backbone) -> AttemptExpert:
    prompts = []
    for source in sources:
        prompt = source.lent_prompt()
        if prompt is None:
            raise InvalidInputError("attempt's sources must be prompt experts; pass --sources trained with --method prompt")
        prompts.append(prompt)
    return AttemptExpert(config, backbone, prompts)


def measure_attention(model: TaskModel, ctx: StrategyContext) -> list[float]:
    """ATTEMPT's mean attention weight per source prompt, then the target prompt, over the dev set."""
    if not isinstance(model.expert, AttemptExpert):
        raise TypeError("measure_attention needs an ATTEMPT model")
    model.expert.start_recording()
    predict_dev(model, ctx)
    return model.expert.stop_recording()


# A stored attempt expert's config: field -> accepted JSON types.
_CONFIG_FIELDS: dict[str, tuple[type, ...]] = {"strategy": (str,), "sources": (list,), "target_config": (dict,)}


class AttemptStrategy(Strategy):
    """`transfer --strategy attempt`: ATTEMPT's per-example attention over frozen source prompts plus a new target
    prompt. Lineage: each source, weight = its mean attention on the dev set."""

    name = "attempt"
    summary = "ATTEMPT: per-example attention over frozen source prompts plus a new target prompt"
    config_class = AttemptConfig
    source_methods = frozenset({"prompt"})
    stored_methods = (ATTEMPT_METHOD,)

    def validate(self, job: TransferJob) -> None:
        if job.method is not None:
            raise InvalidInputError(
                "attempt trains its own target prompt; drop --method (tune it with -O attention_hidden=N or -O temperature=T)"
            )
        self.refuse_gate_options(job)

    def prepare(self, ctx: StrategyContext, config: MethodConfig) -> Prepared:
        if not isinstance(config, AttemptConfig):
            raise TypeError("attempt needs an AttemptConfig")
        expert = build_attempt(ctx.modules(), config, ctx.backbone)
        # The description prompt is not correlated with the sources here: ATTEMPT's attention does the mixing.
        model = TaskModel(ctx.backbone, expert, ctx.task.num_labels, ctx.training.precision, ctx.own_prompt())
        lr = ctx.lr if ctx.lr is not None else AttemptConfig.recommended_lr
        method_config = {"strategy": self.name, "sources": ctx.source_ids, "target_config": config.to_dict()}

        def finalize(trained: TaskModel) -> tuple[Lineage, dict]:
            if not ctx.ranking:
                return [], {}
            attention = measure_attention(trained, ctx)
            weights = {"mean": dict(zip(ctx.source_names, attention)), "target": attention[-1], "sources": ctx.source_names}
            return [(sid, "source", w) for sid, w in zip(ctx.source_ids, attention)], {"gate_weights": weights}

        return Prepared(model, ATTEMPT_METHOD, method_config, lr, finalize)

    def rebuild(self, reader: ExpertReader, expert: ExpertRecord, backbone: Backbone, num_outputs: int,
                prompt: TaskPrompt | None) -> TaskModel:
        """A stored attempt expert: its source prompts come from the registry (each verified)."""
        config = expert.config
        check_composition_config(ATTEMPT_METHOD, config, expert.name, _CONFIG_FIELDS, {}, ("attempt",))
        sources = [load_method_expert(reader, reader.get_expert(source_id), backbone)[0] for source_id in config["sources"]]
        attempt = build_attempt(sources, AttemptConfig.from_dict(config["target_config"]), backbone)
        return TaskModel(backbone, attempt, num_outputs, task_prompt=prompt)


ATTEMPT = AttemptStrategy()
