"""`transfer --strategy pemt` (default) and `--strategy average`: frozen sources mixed by a gate, plus a new target expert.

- `pemt`: the sources are mixed by a learned per-layer gate read from the target's task prompt (correlated
  with the sources' prompts), plus a new target expert (`--method`, default a bottleneck adapter), trained
  with the task sparsity loss. Lineage: each source, weight = its mean gate on the dev set.
- `average`: the same mixture with the gate fixed to uniform weights.

Both store a `mixture` expert whose config names its sources; rebuilding it reads them from the registry.
"""

from __future__ import annotations

from typing import ClassVar

from transferkit.backbone import Backbone
from transferkit.composition.mixture import SourceMixture, gate_entropy
from transferkit.composition.options import DEFAULT_TARGET_METHOD, TransferJob
from transferkit.composition.plugins import Lineage, Prepared, Strategy, StrategyContext, check_composition_config, predict_dev
from transferkit.composition.selection import composable_methods
from transferkit.errors import InvalidInputError
from transferkit.experts import load_method_expert
from transferkit.methods import ExpertModule, MethodConfig, get_method, method_of_module
from transferkit.modeling import TaskModel
from transferkit.registry import ExpertReader, ExpertRecord
from transferkit.task_prompt import TaskPrompt

MIXTURE_METHOD = "mixture"
DEFAULT_ZERO_EXPERT = True
ZERO_EXPERT_PRIOR = 0.98  # the zero expert's share before the gate learns (chosen on RTE, CB and CoLA dev; docs/transfer.md)
DEFAULT_SOURCE_PROMPT_SCALE = "fixed"  # PEMT's T + sum_j (...) S_j; "learned" scales the sources' term from 0

# A stored mixture's config: field -> accepted JSON types; the optional fields were added later.
_CONFIG_FIELDS: dict[str, tuple[type, ...]] = {
    "strategy": (str,), "sources": (list,), "route_top_k": (int, type(None)), "learn_gate": (bool,),
    "sparsity_weight": (int, float), "target_method": (str,), "target_config": (dict,),
}
_OPTIONAL_FIELDS: dict[str, tuple[type, ...]] = {
    "gate_input": (str,), "zero_expert": (bool,), "zero_expert_prior": (float,), "gate_init": (str,),
    "source_prompt_scale": (str,),
}


def build_mixture(
    sources: list[ExpertModule], backbone: Backbone, route_top_k: int | None, learn_gate: bool, gate_input: str = "states",
    zero_expert: bool = False, zero_prior: float | None = None,
) -> SourceMixture:
    kinds = {type(source) for source in sources}
    if len(kinds) != 1:
        raise InvalidInputError("sources mix different methods; pass --sources of one method (all lora or all adapter)")
    return SourceMixture(
        method_of_module(sources[0]).stack(sources), len(sources), backbone.hidden_size, route_top_k, learn_gate,
        gate_input=gate_input, zero_expert=zero_expert, zero_prior=zero_prior,
    )


def measure_gates(model: TaskModel, ctx: StrategyContext) -> dict[str, list[float]]:
    """Mean routed gate weight per source and layer over the dev set (eval mode, best parameters)."""
    mixture = model.composition
    if not isinstance(mixture, SourceMixture):
        raise TypeError("measure_gates needs a model with a source mixture")
    mixture.start_recording()
    predict_dev(model, ctx)
    return mixture.stop_recording()


class PemtStrategy(Strategy):
    name = "pemt"
    summary = "sources mixed by a learned per-layer gate, plus a new target expert (PEMT)"
    stored_methods = (MIXTURE_METHOD,)
    learn_gate: ClassVar[bool] = True

    def validate(self, job: TransferJob) -> None:
        if job.task_prompt_length < 1:
            raise InvalidInputError("pemt's gate reads the task prompt; --task-prompt-length must be at least 1")
        if job.gate_init != "uniform" and job.gate_input != "states":
            raise InvalidInputError("--gate-init arrow starts pemt's learned gate (with --gate-input states); drop it for other strategies")

    def accepts(self, job: TransferJob) -> frozenset[str]:
        return composable_methods()

    def recorded_method(self, job: TransferJob, method_name: str) -> str | None:
        return job.method or DEFAULT_TARGET_METHOD

    def auxiliary_weight(self, job: TransferJob) -> float:
        return job.sparsity_weight

    def zero_expert(self, job: TransferJob) -> bool:
        return DEFAULT_ZERO_EXPERT if job.zero_expert is None else job.zero_expert

    def source_prompt_scale(self, job: TransferJob) -> str:
        return job.source_prompt_scale or DEFAULT_SOURCE_PROMPT_SCALE

    def prepare(self, ctx: StrategyContext, config: MethodConfig) -> Prepared:
        job, backbone = ctx.job, ctx.backbone
        zero_expert = self.zero_expert(job)
        composition = build_mixture(
            ctx.modules(), backbone, job.route_top_k, learn_gate=self.learn_gate, gate_input=job.gate_input,
            zero_expert=zero_expert, zero_prior=ZERO_EXPERT_PRIOR if zero_expert else None,
        )
        target_method = get_method(job.method or DEFAULT_TARGET_METHOD)
        prompt_scale = self.source_prompt_scale(job)
        prompt = ctx.own_prompt(ctx.source_prompts(), learn_source_scale=True) if prompt_scale == "learned" else ctx.prompt
        model = TaskModel(backbone, target_method.build(config, backbone), ctx.task.num_labels, ctx.training.precision,
                          prompt, composition)
        method_config = {
            "strategy": self.name,
            "sources": ctx.source_ids,
            "route_top_k": job.route_top_k,
            "learn_gate": self.learn_gate,
            "gate_input": job.gate_input,
            "zero_expert": zero_expert,
            **({"zero_expert_prior": ZERO_EXPERT_PRIOR} if zero_expert else {}),
            **({"gate_init": job.gate_init} if job.gate_init != "uniform" else {}),
            **({"source_prompt_scale": prompt_scale} if prompt_scale != "fixed" else {}),
            "sparsity_weight": job.sparsity_weight,
            "target_method": target_method.name,
            "target_config": config.to_dict(),
        }

        def finalize(trained: TaskModel) -> tuple[Lineage, dict]:
            if not ctx.ranking:
                return [], {}
            gates = measure_gates(trained, ctx)
            mean = [sum(layer[j] for layer in gates.values()) / len(gates) for j in range(len(ctx.ranking))]
            weights: dict = {
                "per_layer": gates,
                "mean": {name: round(w, 6) for name, w in zip(ctx.source_names, mean)},
                "sources": ctx.source_names,
                "entropy": gate_entropy(gates),
            }
            shares = trained.composition.zero_shares
            if shares:
                weights["zero_expert"] = {"per_layer": shares, "mean": round(sum(shares.values()) / len(shares), 6)}
            own: dict = {"gate_weights": weights}
            if trained.task_prompt is not None and trained.task_prompt.source_scale is not None:
                own["source_prompt_scale"] = round(trained.task_prompt.source_scale.item(), 6)
            return [(sid, "source", round(w, 6)) for sid, w in zip(ctx.source_ids, mean)], own

        lr = ctx.lr if ctx.lr is not None else config.recommended_lr
        return Prepared(model, MIXTURE_METHOD, method_config, lr, finalize)

    def rebuild(self, reader: ExpertReader, expert: ExpertRecord, backbone: Backbone, num_outputs: int,
                prompt: TaskPrompt | None) -> TaskModel:
        """A stored pemt/average expert: its sources come from the registry (each verified)."""
        config = expert.config
        check_composition_config(MIXTURE_METHOD, config, expert.name, _CONFIG_FIELDS, _OPTIONAL_FIELDS, ("pemt", "average"))
        sources = [load_method_expert(reader, reader.get_expert(source_id), backbone)[0] for source_id in config["sources"]]
        mixture = build_mixture(
            sources, backbone, config["route_top_k"], config["learn_gate"], config.get("gate_input", "states"),
            config.get("zero_expert", False), config.get("zero_expert_prior"),
        )
        target_method = get_method(config["target_method"])
        target = target_method.build(target_method.config_class.from_dict(config["target_config"]), backbone)
        return TaskModel(backbone, target, num_outputs, task_prompt=prompt, composition=mixture)


class AverageStrategy(PemtStrategy):
    name = "average"
    summary = "the pemt mixture with the gate fixed to uniform weights"
    stored_methods = ()  # stored as mixture experts: PemtStrategy rebuilds them
    learn_gate = False

    def validate(self, job: TransferJob) -> None:
        self.refuse_gate_options(job)

    def auxiliary_weight(self, job: TransferJob) -> float:
        return 0.0

    def zero_expert(self, job: TransferJob) -> bool:
        return False

    def source_prompt_scale(self, job: TransferJob) -> str:
        return "fixed"


PEMT = PemtStrategy()
AVERAGE = AverageStrategy()
