"""PEMT's gated mixture of frozen source experts.

In every backbone layer that a source expert adapts, a gate reads the target's
task representation (mean hidden state at the task-prompt positions entering the
layer) and gives softmax weights over the J sources:

    g_l = softmax(mean_{p in prompt} h_l[p] . W_l / tau),   W_l zero-initialised (uniform start)

With `gate_input="task"` the gate reads the task prompt itself instead,
g_l = softmax(mean_p T[p] . W_l / tau): a task-level gate, the same for every
input, so the trained mixture can be merged into one static expert
(`transferkit merge`). PEMT's default reads the layer's prompt-position states,
which in a bidirectional encoder also attend to the input.

With route_top_k = k < J only the k largest weights per example are kept and
renormalised, and only those experts are computed (gathered from stacked
tensors), so the cost of a step does not grow with the number of sources.
Dense routing evaluates every expert in one einsum over the stacked weights.
Either way the experts' changes stay factored (delta_j = U_j c_j + u_j, with c_j
the LoRA rank or adapter bottleneck code), so memory grows with J x r per token,
never with J x hidden size.
Each adapted module outputs  y = base + sum_j g_j delta_j.

With `zero_expert` the gate has one more column, an expert whose change is zero:
its share scales the sources' change down, so a target unlike every source can
use none of them (a softmax over sources alone always spends all its mass on them).
Its logit carries a fixed offset so that, while the gate is still at zero, it holds
`zero_prior` of the mass (ZERO_EXPERT_PRIOR = 0.98 for new mixtures): the mixture
starts close to the target alone, and sources earn their share. With a uniform start
(1/(J+1)) or 0.5, CoLA, unlike every source, ended below scratch on dev; at 0.98
(with the sparsity loss off) CoLA's dev MCC matched scratch while RTE and CB kept
their gain over it (docs/transfer.md, "How the zero expert's prior and λ were
chosen"). Old mixtures without the field rebuild uniform.

Task sparsity loss, in delta space (per example rather than with PEMT's batch-mean
gate, so it also applies to top-k routing):

    L_sparse = mean over adapted modules and examples of  sum_j gt_j (1 - cos(m, delta_j)),
    m = sum_j g_j delta_j,   gt_j = g_j / sum_k g_k  (the sources' shares; the zero expert is left out)

with cos the cosine similarity per token, averaged over tokens. PEMT's code compares the
layer's output with base + delta_j instead, but a source's change is tiny next to the
frozen output, so that cosine is about 1 - 1e-4 for every source and the loss cannot move
the gate. In delta space it is zero when all of the sources' share sits on one expert
(then m is parallel to that expert's change) and pulls mass towards the experts whose
change agrees with the mixed change: raising its weight concentrates the gate (measured
on real data: docs/transfer.md, "How it works"). With `learn_gate=False` the
weights stay uniform (the `average` baseline).
"""

from __future__ import annotations

import math
import re

import torch
from torch import nn

from transferkit.backbone import Backbone
from transferkit.errors import InvalidInputError
from transferkit.methods import ExpertStack
from transferkit.modeling import Composition

GATE_INPUTS = ("states", "task")
_LAYER_PATTERN = re.compile(r"^((?:.*?\.)?(?:layer|layers|h|block|blocks))\.(\d+)(?:\.|$)")


def gate_entropy(per_layer: dict[str, list[float]]) -> float:
    """Mean over layers of the entropy (nats) of the sources' shares of the gate (the zero expert's share left out,
    as in the sparsity loss): 0 when each layer uses one source, log J when it spreads evenly over J."""
    entropies = []
    for weights in per_layer.values():
        total = sum(weights)
        shares = [w / total for w in weights if w > 0] if total > 0 else []
        entropies.append(-sum(p * math.log(p) for p in shares))
    return round(sum(entropies) / len(entropies), 6) if entropies else 0.0


def layer_of(module_name: str) -> str:
    """The transformer block a module belongs to, e.g. encoder.layer.3 for encoder.layer.3.attention.self.query
    (a bare decoder: layers.3 for layers.3.self_attn.q_proj)."""
    match = _LAYER_PATTERN.match(module_name)
    if not match:
        raise InvalidInputError(f"cannot tell which transformer layer module {module_name!r} belongs to")
    return f"{match.group(1)}.{match.group(2)}"


class SourceMixture(Composition):
    def __init__(
        self,
        stack: ExpertStack,
        num_sources: int,
        hidden_size: int,
        route_top_k: int | None = None,
        learn_gate: bool = True,
        temperature: float = 1.0,
        gate_input: str = "states",
        zero_expert: bool = False,
        zero_prior: float | None = None,
    ) -> None:
        super().__init__()
        if route_top_k is not None and not 1 <= route_top_k <= num_sources:
            raise InvalidInputError(f"--route-top-k must be between 1 and the number of sources ({num_sources}), got {route_top_k}")
        if gate_input not in GATE_INPUTS:
            raise InvalidInputError(f"--gate-input must be one of {', '.join(GATE_INPUTS)}, got {gate_input!r}")
        if zero_expert and not learn_gate:
            raise InvalidInputError("a zero expert needs a learned gate (pemt); the uniform average has none")
        if zero_prior is not None and not (zero_expert and 0.0 < zero_prior < 1.0):
            raise InvalidInputError(f"the zero expert's prior share must be in (0, 1) and needs a zero expert, got {zero_prior}")
        self.zero_expert = zero_expert
        self.zero_prior = zero_prior
        # softmax([0]*J + [o]) puts exp(o) / (J + exp(o)) = zero_prior on the zero expert
        self._zero_offset = math.log(num_sources * zero_prior / (1.0 - zero_prior)) if zero_prior is not None else 0.0
        self.gate_input = gate_input
        self._task_state: torch.Tensor | None = None
        self.stack = stack
        self.num_sources = num_sources
        self.top_k = route_top_k or num_sources
        self.temperature = temperature
        self.learn_gate = learn_gate
        self.module_layer = {name: layer_of(name) for name in stack.module_names}
        self.layers = sorted(set(self.module_layer.values()), key=lambda n: (len(n), n))
        self.gates = nn.ParameterDict(
            {layer.replace(".", "/"): nn.Parameter(torch.zeros(hidden_size, num_sources + zero_expert)) for layer in self.layers}
            if learn_gate
            else {}
        )
        self.prompt_length = 0
        self._handles: list = []
        self._routing: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        self._auxiliary: list[torch.Tensor] = []
        self._gate_sums: dict[str, torch.Tensor] | None = None
        self._gate_count = 0
        self.zero_shares: dict[str, float] = {}  # per layer, the mean gate on the zero expert at the last recording

    # --- hooks -------------------------------------------------------------
    def attach(self, backbone: Backbone, prompt_length: int) -> None:
        if self.learn_gate and prompt_length == 0:
            raise InvalidInputError("a learned gate reads the task prompt; use a task prompt length of at least 1")
        self.detach()
        self.prompt_length = prompt_length
        modules = dict(backbone.model.named_modules())
        for layer in self.layers:
            self._handles.append(modules[layer].register_forward_pre_hook(self._gate_hook(layer), with_kwargs=True))
        for name in self.stack.module_names:
            self._handles.append(modules[name].register_forward_hook(self._mix_hook(name)))

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()

    def _gate_hook(self, layer: str):
        def hook(module: nn.Module, args: tuple, kwargs: dict):
            hidden = args[0] if args else kwargs["hidden_states"]
            self._routing[layer] = self.route(layer, hidden)

        return hook

    def _mix_hook(self, name: str):
        layer = self.module_layer[name]

        def hook(module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor:
            weights, index = self._routing[layer]
            dense = self.top_k >= self.num_sources  # every expert for every example: no gather
            deltas = self.stack.deltas(name, args[0], output, None if dense else index)
            change = deltas.mix(weights)
            if self.training and torch.is_grad_enabled():
                # Over the sources' share only: the zero expert's share is left to the task loss.
                shares = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-12)
                self._auxiliary.append((shares * deltas.disagreement(change)).sum(-1).mean())
            return output + change.to(output.dtype)

        return hook

    # --- routing -------------------------------------------------------------
    def observe_task_prompt(self, prompt: torch.Tensor) -> None:
        self._task_state = prompt.float().mean(dim=0)

    @property
    def input_independent(self) -> bool:
        """Whether the routed weights are the same for every input (uniform, or a task-level gate)."""
        return not self.learn_gate or self.gate_input == "task"

    def gate_probabilities(self, layer: str, hidden: torch.Tensor) -> torch.Tensor:
        """(B, J) softmax weights over all sources for this layer, (B, J + 1) with the zero expert last."""
        batch = hidden.shape[0]
        if not self.learn_gate:
            return hidden.new_full((batch, self.num_sources), 1.0 / self.num_sources, dtype=torch.float32)
        if self.gate_input == "task":
            if self._task_state is None:
                raise InvalidInputError("a task-level gate needs the task prompt; run the mixture inside a TaskModel with one")
            task_state = self._task_state.unsqueeze(0).expand(batch, -1)
        else:
            task_state = hidden[:, : self.prompt_length].float().mean(dim=1)
        logits = task_state @ self.gates[layer.replace(".", "/")] / self.temperature
        if self._zero_offset:
            logits = torch.cat([logits[:, :-1], logits[:, -1:] + self._zero_offset], dim=-1)
        return torch.softmax(logits, dim=-1)

    def route(self, layer: str, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(weights (B, k) of the chosen sources, their indices (B, k)).

        The weights sum to the sources' share: 1, or 1 minus the zero expert's gate. Top-k routing chooses
        among the sources and renormalises the chosen ones to that share.
        """
        probabilities = self.gate_probabilities(layer, hidden)
        sources = probabilities[:, : self.num_sources]
        if self.top_k < self.num_sources:
            weights, index = sources.topk(self.top_k, dim=-1)
            weights = weights * (sources.sum(dim=-1, keepdim=True) / weights.sum(dim=-1, keepdim=True))
        else:
            weights = sources
            index = torch.arange(self.num_sources, device=hidden.device).expand(hidden.shape[0], -1)
        if self._gate_sums is not None:
            routed = torch.zeros_like(sources).scatter(1, index, weights)
            self._gate_sums[layer] = self._gate_sums.get(layer, 0) + routed.detach().sum(0).cpu()
            if layer == self.layers[0]:
                self._gate_count += hidden.shape[0]
        return weights, index

    # --- statistics and storage -------------------------------------------
    def start_recording(self) -> None:
        """Accumulate routed gate weights (after top-k) over the following forward passes."""
        self._gate_sums, self._gate_count = {}, 0

    def stop_recording(self) -> dict[str, list[float]]:
        """Mean routed weight per source, per layer, since `start_recording`."""
        sums, count = self._gate_sums or {}, max(self._gate_count, 1)
        self._gate_sums = None
        per_layer = {layer: [round(float(v) / count, 6) for v in sums[layer]] for layer in self.layers if layer in sums}
        self.zero_shares = {layer: round(1.0 - sum(weights), 6) for layer, weights in per_layer.items()} if self.zero_expert else {}
        return per_layer

    def auxiliary_loss(self) -> torch.Tensor | None:
        if not self._auxiliary:
            return None
        loss = torch.stack(self._auxiliary).mean()
        self._auxiliary.clear()
        return loss

    def export_tensors(self) -> dict[str, torch.Tensor]:
        return {f"gate.{layer}": self.gates[layer.replace(".", "/")].detach().clone() for layer in self.layers} if self.learn_gate else {}

    def import_tensors(self, tensors: dict[str, torch.Tensor]) -> None:
        expected = {f"gate.{layer}" for layer in self.layers} if self.learn_gate else set()
        if set(tensors) != expected:
            raise InvalidInputError(f"stored gate tensors {sorted(tensors)[:3]} do not match the mixture's layers")
        with torch.no_grad():
            for layer in self.layers if self.learn_gate else []:
                self.gates[layer.replace(".", "/")].copy_(tensors[f"gate.{layer}"])
