"""Adding a method and a strategy touches only their own modules: a toy of each, written into a temporary package
that the test imports, registers itself and trains one step on the tiny random BERT through the ordinary jobs."""

from __future__ import annotations

import importlib
import textwrap

import pytest

from transferkit.backbone import load_backbone
from transferkit.composition import strategies
from transferkit.composition.transfer import TransferJob, transfer
from transferkit.methods import METHODS
from transferkit.rebuild import load_expert_model
from transferkit.registry import open_registry
from transferkit.training.loop import TrainingConfig
from transferkit.workflows import SourceJob, train_source

# A method: its config, its module, and the registration call. Nothing else in transferkit is edited.
TOY_METHOD = '''
from dataclasses import dataclass

import torch
from torch import nn

from transferkit.methods.base import ExpertModule, MethodConfig, MethodType, option
from transferkit.methods.registration import register_method


@dataclass
class ToyConfig(MethodConfig):
    """A learned bias added to every input embedding."""

    scale: float = option(1.0, "multiplier of the learned bias")


class ToyExpert(ExpertModule):
    def __init__(self, config, backbone):
        super().__init__(config, backbone)
        self.bias = nn.Parameter(torch.zeros(backbone.hidden_size))

    def prepare_inputs(self, embeddings, attention_mask):
        return embeddings + self.config.scale * self.bias.to(embeddings.dtype), attention_mask, 0

    def export_tensors(self):
        return {"bias": self.bias.detach().clone()}

    def import_tensors(self, tensors):
        self._check_tensor_names(tensors, {"bias": tuple(self.bias.shape)})
        with torch.no_grad():
            self.bias.copy_(tensors["bias"])


METHOD = register_method(MethodType("toy", ToyConfig, ToyExpert, "a learned input bias (test)"))
'''

# A strategy: which sources it takes, how it builds the model, what lineage it records, how it is rebuilt.
TOY_STRATEGY = '''
from transferkit.composition.plugins import Prepared, Strategy
from transferkit.composition.strategies import register_strategy
from transferkit.experts import load_method_expert
from transferkit.modeling import TaskModel

from toyext.method import METHOD


class CopyFirst(Strategy):
    """Trains a copy of the best-ranked toy source further, and stores it as a kind of its own."""

    name = "copyfirst"
    summary = "copy the best toy source (test)"
    config_class = METHOD.config_class
    source_methods = frozenset({"toy"})
    stored_methods = ("copyfirst",)
    max_sources = 1

    def prepare(self, ctx, config):
        module = ctx.loaded[0].module
        for parameter in module.parameters():
            parameter.requires_grad_(True)
        model = TaskModel(ctx.backbone, module, ctx.task.num_labels, ctx.training.precision, ctx.prompt)
        stored = {"source": ctx.source_ids[0], "config": ctx.ranking[0].expert.config}
        lineage = lambda trained: ([(ctx.source_ids[0], "copied-from", 1.0)], {"copied": ctx.source_names[0]})
        return Prepared(model, "copyfirst", stored, ctx.lr or 1e-2, lineage)

    def rebuild(self, reader, expert, backbone, num_outputs, prompt):
        module, _ = load_method_expert(reader, reader.get_expert(expert.config["source"]), backbone)
        return TaskModel(backbone, module, num_outputs, task_prompt=prompt)


register_strategy(CopyFirst())
'''


@pytest.fixture
def toy_package(tmp_path, monkeypatch):
    """The toy method and strategy as a package outside transferkit; their registrations are undone afterwards."""
    package = tmp_path / "toyext"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "method.py").write_text(textwrap.dedent(TOY_METHOD))
    (package / "strategy.py").write_text(textwrap.dedent(TOY_STRATEGY))
    monkeypatch.syspath_prepend(str(tmp_path))
    methods, registered, rebuilders = dict(METHODS), dict(strategies._STRATEGIES), dict(strategies._REBUILDERS)
    importlib.import_module("toyext.strategy")  # imports toyext.method, which registers the method
    yield
    for live, saved in ((METHODS, methods), (strategies._STRATEGIES, registered), (strategies._REBUILDERS, rebuilders)):
        live.clear()
        live.update(saved)
    for name in ("toyext.strategy", "toyext.method", "toyext"):
        monkeypatch.delitem(__import__("sys").modules, name, raising=False)


def test_a_toy_method_and_strategy_train_through_the_ordinary_jobs(toy_package, tmp_path, tiny_model_dir, shared_data):
    registry = open_registry(f"sqlite:///{tmp_path}/r.db")
    try:
        common = dict(model=str(tiny_model_dir), data_dir=shared_data, max_train_examples=16, show_progress=False)
        source = train_source(registry, SourceJob(
            task="sst2", method="toy", method_options=["scale=0.5"], training=TrainingConfig(max_steps=1, batch_size=8, seed=1),
            **common,
        ))
        assert source.method == "toy" and source.config == {"scale": 0.5}
        outcome = transfer(registry, TransferJob(
            target="rte", strategy="copyfirst", training=TrainingConfig(max_steps=1, batch_size=8, seed=2), **common,
        ))
        expert = outcome.expert
        assert expert.method == "copyfirst" and expert.config["source"] == source.id
        assert [r.expert.id for r in outcome.ranking] == [source.id]
        assert expert.extra["copied"] == source.name and expert.extra["strategy"] == "copyfirst"
        [edge] = registry.lineage_edges(expert.id)["parents"]
        assert (edge.parent_id, edge.role, edge.weight) == (source.id, "copied-from", 1.0)
        # Both stored experts rebuild from the registry through their registrations alone.
        backbone = load_backbone(str(tiny_model_dir))
        for stored in (source, expert):
            model = load_expert_model(registry, stored, backbone)
            assert type(model.expert).__name__ == "ToyExpert"
            model.detach()
    finally:
        registry.close()
