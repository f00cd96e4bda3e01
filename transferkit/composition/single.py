"""The strategies that train one expert of a stored method: `spot` and `scratch`.

- `spot`: the single most similar source's expert, copied and trained further (SPoT's initialisation
  transfer). Lineage: that source, role "init".
- `scratch`: the target expert alone (`--method`, default a bottleneck adapter), no sources.
"""

from __future__ import annotations

from transferkit.composition.options import DEFAULT_TARGET_METHOD, TransferJob
from transferkit.composition.plugins import Lineage, Prepared, Strategy, StrategyContext
from transferkit.composition.selection import composable_methods
from transferkit.errors import InvalidInputError
from transferkit.methods import METHODS, MethodConfig, get_method
from transferkit.modeling import TaskModel


class SpotStrategy(Strategy):
    name = "spot"
    summary = "the most similar source's expert, copied and trained further (SPoT)"
    max_sources = 1

    def validate(self, job: TransferJob) -> None:
        if job.method_options:
            raise InvalidInputError("spot continues training the source expert as configured; drop -O")
        self.refuse_gate_options(job)

    def accepts(self, job: TransferJob) -> frozenset[str]:
        if job.sources:
            return frozenset(METHODS)  # any single stored expert can be the starting point
        if job.method is not None:
            return frozenset({get_method(job.method).name})
        return composable_methods()

    def source_count(self, job: TransferJob) -> int | None:
        return job.top_k if job.sources else 1

    def recorded_method(self, job: TransferJob, method_name: str) -> str | None:
        return method_name  # the method of the source it continued

    def prepare(self, ctx: StrategyContext, config: MethodConfig) -> Prepared:
        ranked, module = ctx.ranking[0], ctx.loaded[0].module
        source = ranked.expert
        for parameter in module.parameters():
            parameter.requires_grad_(True)
        lr = ctx.lr if ctx.lr is not None else get_method(source.method).config_class.recommended_lr
        model = TaskModel(ctx.backbone, module, ctx.task.num_labels, ctx.training.precision, ctx.own_prompt())

        def finalize(trained: TaskModel) -> tuple[Lineage, dict]:
            return [(source.id, "init", ranked.similarity)], {}

        return Prepared(model, source.method, dict(source.config), lr, finalize)


class ScratchStrategy(Strategy):
    name = "scratch"
    summary = "the target expert alone, no sources"
    uses_sources = False

    def validate(self, job: TransferJob) -> None:
        if job.sources:
            raise InvalidInputError("--strategy scratch uses no sources; drop --sources")
        self.refuse_gate_options(job)

    def recorded_method(self, job: TransferJob, method_name: str) -> str | None:
        return job.method or DEFAULT_TARGET_METHOD

    def prepare(self, ctx: StrategyContext, config: MethodConfig) -> Prepared:
        method = get_method(ctx.job.method or DEFAULT_TARGET_METHOD)
        model = TaskModel(ctx.backbone, method.build(config, ctx.backbone), ctx.task.num_labels, ctx.training.precision,
                          ctx.own_prompt())
        lr = ctx.lr if ctx.lr is not None else config.recommended_lr
        return Prepared(model, method.name, config.to_dict(), lr, lambda trained: ([], {}))


SPOT = SpotStrategy()
SCRATCH = ScratchStrategy()
