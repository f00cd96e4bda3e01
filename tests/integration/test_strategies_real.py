"""merge, lorahub and arrow on the real MiniLM and real data, at a tiny budget: each trains, stores, records its cost
and reloads to the same predictions."""

from __future__ import annotations

import pytest

from transferkit.backbone import load_backbone
from transferkit.composition.transfer import TransferJob, transfer
from transferkit.registry import open_registry
from transferkit.tasks import load_splits, resolve_task
from transferkit.training.data import tokenize_examples
from transferkit.training.loop import TrainingConfig, predict
from transferkit.rebuild import load_expert_model
from transferkit.workflows import SourceJob, train_source

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def setup(tmp_path_factory, shared_data):
    registry = open_registry(f"sqlite:///{tmp_path_factory.mktemp('strategies')}/s.db")
    # Tasks with small validation sets of short texts (COPA 100, WNLI 71), so the sources' own evaluation stays cheap.
    sources = [
        train_source(registry, SourceJob(
            task=task, data_dir=shared_data, max_train_examples=32, show_progress=False, method_options=["r=4"],
            training=TrainingConfig(max_steps=2, batch_size=16, eval_batch_size=128, seed=1),
        ))
        for task in ("copa", "wnli")
    ]
    yield registry, [s.id for s in sources]
    registry.close()


@pytest.mark.parametrize("strategy,options", [
    ("merge", ["combine=ties", "density=0.5"]),
    ("lorahub", ["examples=12", "budget=3"]),
    ("arrow", []),
])
def test_strategy_on_the_real_backbone(setup, shared_data, strategy, options):
    registry, source_ids = setup
    expert = transfer(registry, TransferJob(
        target="cb", strategy=strategy, sources=source_ids, method_options=options, data_dir=shared_data,
        max_train_examples=16, show_progress=False, training=TrainingConfig(max_steps=2, batch_size=8, eval_batch_size=128, seed=2),
    )).expert
    assert expert.config["strategy"] == strategy and set(expert.config["sources"]) == set(source_ids)
    assert set(expert.metrics["test"]) == {"accuracy", "macro_f1"}
    assert set(expert.extra["gate_weights"]["mean"]) == {registry.get_expert(i).name for i in source_ids}
    cost = registry.get_run(expert.run_id).cost
    assert cost["steps"] == 2 and cost["train_flops"] > 0 and cost["preparation"]["wall_seconds"] >= 0
    if strategy == "lorahub":  # 3 forward passes over 12 CB pairs through MiniLM: well over a GFLOP
        assert cost["preparation"]["flops"] > 1e9 and len(expert.config["search"]["evaluations"]) == 3
    if strategy == "merge":  # TIES' merged change does not fit the sources' summed rank exactly
        assert expert.config["recipe"]["rank"] == 8 and 0 < expert.extra["merge"]["faithfulness"]["max_relative_error"] < 1
    backbone = load_backbone()
    model = load_expert_model(registry, expert, backbone)
    task = resolve_task("cb")
    test = tokenize_examples(load_splits(task, shared_data, seed=2, max_train_examples=16).test, backbone.tokenizer, 128, False)
    try:
        assert predict(model, test, 128, backbone.tokenizer.pad_token_id, task).tolist() == expert.extra["test_outputs"]["predictions"]
    finally:
        model.detach()
