"""merge, lorahub and arrow end to end on the tiny BERT with real task files: recipe, lineage, cost, reload,
reproduce; pemt's gate started from Arrow; bad recipes refused in one line with the registry unchanged."""

from __future__ import annotations

import pytest
import torch

from transferkit.backbone import load_backbone
from transferkit.composition.arrow import ArrowRouter, top_right_singular_vectors
from transferkit.composition.fixed import FixedExperts
from transferkit.composition.pemt import ZERO_EXPERT_PRIOR
from transferkit.composition.transfer import TransferJob, transfer
from transferkit.errors import InvalidInputError
from transferkit.methods.lora.stack import LoraStack
from transferkit.registry import open_registry
from transferkit.reproduce import reproduce
from transferkit.training.cost import flop_counter
from transferkit.training.data import tokenize_examples
from transferkit.training.loop import TrainingConfig, predict
from transferkit.tasks import load_splits, resolve_task
from transferkit.experts import load_method_expert
from transferkit.rebuild import load_expert_model
from transferkit.workflows import SourceJob, train_source

from cli_helpers import assert_one_line_error, run_cli


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    store = open_registry(f"sqlite:///{tmp_path_factory.mktemp('plugged')}/r.db")
    yield store
    store.close()


@pytest.fixture(scope="module")
def sources(registry, tiny_model_dir, shared_data):
    """Two LoRA sources of different ranks and one adapter source (2 steps each)."""
    def train(task, method, options, name):
        return train_source(registry, SourceJob(
            task=task, method=method, model=str(tiny_model_dir), data_dir=shared_data, max_train_examples=24,
            show_progress=False, method_options=options, name=name, training=TrainingConfig(max_steps=2, batch_size=8, seed=1),
        ))

    return {"sst2": train("sst2", "lora", ["r=2"], "sst2-lora"), "rte": train("rte", "lora", ["r=4"], "rte-lora"),
            "mrpc": train("mrpc", "adapter", [], "mrpc-adapter")}


def run(registry, tiny_model_dir, shared_data, strategy, sources, options=(), **job):
    return transfer(registry, TransferJob(
        target="cb", strategy=strategy, sources=sources, method_options=list(options), model=str(tiny_model_dir),
        data_dir=shared_data, max_train_examples=24, show_progress=False,
        training=TrainingConfig(max_steps=3, batch_size=8, seed=2), **job,
    )).expert


def assert_reloads_and_predicts_as_stored(registry, expert, tiny_model_dir, shared_data, reads_sources: bool, source_ids):
    backbone = load_backbone(str(tiny_model_dir))
    original_get, read = registry.get_expert, []
    registry.get_expert = lambda reference: read.append(reference) or original_get(reference)
    try:
        model = load_expert_model(registry, expert, backbone)
    finally:
        registry.get_expert = original_get
    assert bool(set(read) & set(source_ids)) == reads_sources
    task = resolve_task("cb")
    test = tokenize_examples(load_splits(task, shared_data, seed=2, max_train_examples=24).test, backbone.tokenizer, 128, False)
    try:
        assert predict(model, test, 64, backbone.tokenizer.pad_token_id, task).tolist() == expert.extra["test_outputs"]["predictions"]
    finally:
        model.detach()
    return model


def test_merge_stores_its_recipe_as_config_and_lineage_and_reproduces(registry, sources, tiny_model_dir, shared_data):
    given = [sources["rte"].name, sources["sst2"].name]
    expert = run(registry, tiny_model_dir, shared_data, "merge", given,
                 ["combine=dare_ties", "weights=0.8,0.3", "density=0.6", "seed=11", "rank=5"])
    assert expert.method == "merge"
    config = expert.config
    weights = dict(zip(config["sources"], config["recipe"]["weights"]))  # stored in ranking order, given in --sources order
    assert weights == {sources["rte"].id: 0.8, sources["sst2"].id: 0.3}
    assert config["recipe"] | {"weights": None} == {"combine": "dare_ties", "weights": None, "density": 0.6, "seed": 11, "rank": 5}
    assert config["source_method"] == "lora" and config["source_config"]["r"] == 5 and config["target_method"] == "adapter"
    edges = {e.parent_id: (e.role, e.weight) for e in registry.lineage_edges(expert.id)["parents"]}
    assert edges == {sid: ("merge-source", w) for sid, w in weights.items()}
    faithfulness = expert.extra["merge"]["faithfulness"]
    assert not faithfulness["exact"] and 0 <= faithfulness["max_relative_error"] < 1
    cost = registry.get_run(expert.run_id).cost
    assert cost["preparation"]["what"].startswith("dare_ties merge") and cost["wall_seconds"] >= cost["preparation"]["wall_seconds"]
    model = assert_reloads_and_predicts_as_stored(registry, expert, tiny_model_dir, shared_data, False, weights)
    assert isinstance(model.composition, FixedExperts)
    again = reproduce(registry, expert.id, data_dir=shared_data, show_progress=False)
    assert again.same_weights and again.expert.config == config


def test_merge_with_no_target_expert_trains_only_head_and_prompt(registry, sources, tiny_model_dir, shared_data):
    expert = run(registry, tiny_model_dir, shared_data, "merge", [sources["sst2"].id, sources["rte"].id],
                 ["combine=linear", "target=none"])
    assert expert.config["target_method"] == "none" and expert.config["recipe"]["weights"] == [0.5, 0.5]
    assert expert.config["source_config"]["r"] == 2 * 4  # exact: both sources stacked at the larger rank
    tensors, _ = registry.load_expert_tensors(expert)
    assert not any(name.startswith("expert.") for name in tensors)
    assert_reloads_and_predicts_as_stored(registry, expert, tiny_model_dir, shared_data, False, [])


def test_lorahub_records_the_weights_it_found_reproduces_and_shows_in_compare(registry, sources, tiny_model_dir, shared_data):
    from transferkit.composition.compare import Grid, collect
    from transferkit.composition.grids import grid_cells

    ids = [sources["sst2"].id, sources["rte"].id]
    grid = Grid(name="peers", targets=["cb"], strategies=["lorahub"], seeds=[2])  # stored as that grid's cell
    cell = grid.cell_name("superglue/cb", "lorahub", 2)
    expert = run(registry, tiny_model_dir, shared_data, "lorahub", ids, ["examples=8", "budget=5"],
                 name=cell, command=["transferkit", "compare", "--grid=peers", f"cell={cell}"])
    search = expert.config["search"]
    assert expert.config["strategy"] == "lorahub" and len(search["evaluations"]) == 5
    assert search["evaluations"][0]["weights"] == [0.0, 0.0]  # LoRAHub starts from no source
    assert expert.config["recipe"]["combine"] == "linear" and expert.config["recipe"]["weights"] == pytest.approx(search["weights"], abs=1e-6)
    assert all(-1.5 <= w <= 1.5 for w in search["weights"])
    for evaluation in search["evaluations"]:  # objective = held-out loss + 0.05 x mean |w|
        penalty = 0.05 * sum(abs(w) for w in evaluation["weights"]) / 2
        assert evaluation["objective"] == pytest.approx(evaluation["loss"] + penalty, abs=1e-5)
    cost = registry.get_run(expert.run_id).cost
    assert cost["preparation"]["evaluations"] == 5 and cost["preparation"]["flops"] > 0
    assert cost["train_flops"] > cost["preparation"]["flops"]
    assert_reloads_and_predicts_as_stored(registry, expert, tiny_model_dir, shared_data, False, ids)
    again = reproduce(registry, expert.id, data_dir=shared_data, show_progress=False)
    assert again.same_weights and again.expert.config["search"]["weights"] == search["weights"]
    # compare's row and the report's grid show it with its cost, the search's wall time and FLOPs included.
    [row] = collect(registry, grid)
    assert row["strategy"] == "lorahub" and row["experts"] == [expert.id] and row["top_gates"]
    assert row["wall_seconds"] == cost["wall_seconds"] and row["preparation_seconds"] == cost["preparation"]["wall_seconds"]
    assert row["train_flops"] == cost["train_flops"]
    assert set(grid_cells(registry)["peers"]) == {("superglue/cb", "lorahub")}
    Grid(name="all", targets=["cb"], strategies=["merge", "lorahub", "arrow"], seeds=[1]).validate(registry)


def test_arrow_stores_its_prototypes_and_routing_shares(registry, sources, tiny_model_dir, shared_data):
    ids = [sources["sst2"].id, sources["rte"].id]
    expert = run(registry, tiny_model_dir, shared_data, "arrow", ids, ["top_k=1", "target=lora"])
    assert expert.config["top_k"] == 1 and expert.config["target_method"] == "lora"
    edges = registry.lineage_edges(expert.id)["parents"]
    assert {e.parent_id for e in edges} == set(ids) and {e.role for e in edges} == {"source"}
    assert sum(e.weight for e in edges) == pytest.approx(1.0, abs=1e-4)  # top-1: each real token goes to one source
    model = assert_reloads_and_predicts_as_stored(registry, expert, tiny_model_dir, shared_data, True, ids)
    assert isinstance(model.composition, ArrowRouter)
    backbone = load_backbone(str(tiny_model_dir))
    stack = LoraStack([load_method_expert(registry, registry.get_expert(i), backbone)[0] for i in expert.config["sources"]])
    tensors, _ = registry.load_expert_tensors(expert)
    for name in stack.module_names:
        assert torch.allclose(tensors[f"composition.prototype.{name}"], top_right_singular_vectors(*stack.factors(name)))
    preparation = registry.get_run(expert.run_id).cost["preparation"]
    with flop_counter() as counter:  # the prototypes' QRs and SVDs are the preparation's work
        for name in stack.module_names:
            top_right_singular_vectors(*stack.factors(name))
    assert preparation["flops"] == counter.get_total_flops() > 0


def test_pemt_gate_can_start_from_arrow(registry, sources, tiny_model_dir, shared_data):
    expert = run(registry, tiny_model_dir, shared_data, "pemt", [sources["sst2"].id, sources["rte"].id], gate_init="arrow")
    record = expert.extra["gate_init"]
    assert expert.config["gate_init"] == "arrow" and record["mode"] == "arrow"
    uniform = (1 - ZERO_EXPERT_PRIOR) / 2  # each source's share had the gate started uniform
    for layer in record["layers"].values():  # query and value read the layer's input; the zero expert keeps its prior
        assert len(layer["modules"]) == 2 and layer["shares"][-1] == pytest.approx(ZERO_EXPERT_PRIOR, abs=1e-5)
        assert sum(layer["shares"]) == pytest.approx(1.0, abs=1e-5) and layer["shares"][0] != pytest.approx(uniform, abs=1e-5)


def _counts(registry):
    return registry.count_experts(), len(registry.list_runs()), len(registry.list_lineage_edges())


@pytest.mark.parametrize("strategy,options", [
    ("merge", ["combine=ties", "density=0.5"]), ("lorahub", ["examples=8", "budget=3"]), ("arrow", ["top_k=1"]),
])
def test_merged_searched_and_routed_experts_travel_in_bundles(registry, sources, tiny_model_dir, shared_data, tmp_path, strategy, options):
    from transferkit.interop import export_expert, import_path

    ids = [sources["sst2"].id, sources["rte"].id]
    expert = run(registry, tiny_model_dir, shared_data, strategy, ids, options)
    bundle = tmp_path / f"{strategy}.transferkit.tar.gz"
    export_expert(registry, expert, "bundle", bundle, with_sources=True)
    fresh = open_registry(f"sqlite:///{tmp_path}/fresh.db")
    try:
        added = import_path(fresh, bundle, model=str(tiny_model_dir), command=["t"])["added"]
        assert {e["id"] for e in added} == {expert.id, *ids}
        imported = fresh.get_expert(expert.id)
        assert imported.config == expert.config
        edges = fresh.lineage_edges(expert.id)["parents"]
        assert sorted((e.parent_id, e.role) for e in edges) == sorted((e.parent_id, e.role) for e in registry.lineage_edges(expert.id)["parents"])
        assert_reloads_and_predicts_as_stored(fresh, imported, tiny_model_dir, shared_data, strategy == "arrow", ids)
    finally:
        fresh.close()


@pytest.mark.parametrize("strategy,given,options,job,message", [
    ("merge", ["sst2", "mrpc"], [], {}, "sources mix different methods (adapter, lora)"),
    ("merge", ["mrpc"], ["combine=ties"], {}, "adapter sources (non-linear)"),
    ("merge", ["sst2", "rte"], ["rank=500"], {}, "-O rank 500 is more than module"),
    ("merge", ["sst2", "rte"], ["combine=linear", "rank=4"], {}, "linear is exact at the stacked rank"),
    ("merge", ["sst2", "rte"], ["density=0"], {}, "-O density must be in (0, 1], got 0.0"),
    ("merge", None, ["combine=linear", "weights=1,2"], {}, "pass --sources too"),
    ("lorahub", ["sst2"], ["optimizer=Nope"], {}, "not a nevergrad optimiser"),
    ("arrow", ["mrpc"], [], {}, "which this strategy cannot use; pass lora experts"),
    ("arrow", ["sst2", "rte"], ["top_k=3"], {}, "between 1 and the number of sources (2)"),
    ("merge", ["sst2"], [], {"method": "lora"}, "drop --method"),
    ("average", ["sst2"], [], {"gate_init": "arrow"}, "--gate-init arrow starts pemt's"),
])
def test_bad_recipes_are_refused_and_change_nothing(registry, sources, tiny_model_dir, shared_data, strategy, given, options, job, message):
    before = _counts(registry)
    with pytest.raises(InvalidInputError) as error:
        run(registry, tiny_model_dir, shared_data, strategy, [sources[k].id for k in given] if given else None, options, **job)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert _counts(registry) == before


def test_cli_refuses_bad_recipes_in_one_line(registry, sources, tiny_model_dir, shared_data, tmp_path):
    before = _counts(registry)
    common = ["--registry", str(registry.engine.url), "--data-dir", str(shared_data), "transfer", "--target", "cb",
              "--model", str(tiny_model_dir), "--max-train-examples", "16", "--strategy", "merge"]
    assert_one_line_error(run_cli(*common, "--sources", "sst2-lora,rte-lora", "-O", "combine=median", cwd=tmp_path),
                          "combine='median' must be one of linear, ties, dare_linear, dare_ties")
    assert_one_line_error(run_cli(*common, "--sources", "sst2-lora,mrpc-adapter", cwd=tmp_path), "sources mix different methods")
    assert _counts(registry) == before




def test_compare_passes_each_strategy_its_own_options_and_keeps_cells_honest(registry, sources, tiny_model_dir, shared_data):
    from transferkit.composition.compare import Grid, GridBudget, run_grid

    ids = [sources["sst2"].id, sources["rte"].id]
    budget = GridBudget(max_steps=2, batch_size=8)
    grid = Grid(name="opts", targets=["cb"], strategies=["merge", "pemt"], seeds=[1], budget=budget, sources=ids,
                gate_init="arrow", strategy_options={"merge": ["combine=ties", "density=0.5"]})
    run_grid(registry, grid, shared_data, str(tiny_model_dir), show_progress=False)
    merged, mixed = registry.get_expert("opts-cb-merge-s1"), registry.get_expert("opts-cb-pemt-s1")
    assert merged.config["recipe"]["combine"] == "ties" and merged.config["recipe"]["density"] == 0.5
    assert registry.get_run(mixed.run_id).hyperparams["job"]["gate_init"] == "arrow" and mixed.extra.get("gate_init")

    before = registry.count_experts()
    changed = Grid(name="opts", targets=["cb"], strategies=["merge"], seeds=[1], budget=budget, sources=ids,
                   strategy_options={"merge": ["combine=linear"]})
    with pytest.raises(InvalidInputError, match="opts-cb-merge-s1 is stored with -O"):
        run_grid(registry, changed, shared_data, str(tiny_model_dir), show_progress=False)
    for bad, message in [
        ({"strategy_options": {"arrow": ["top_k=1"]}}, "arrow, which is not in --strategies"),
        ({"strategy_options": {"merge": ["combine=magic"]}}, "combine"),
        ({"strategies": ["scratch"], "gate_init": "arrow"}, "add pemt"),
    ]:
        spec = {"name": "bad", "targets": ["cb"], "strategies": ["merge"], "seeds": [1], "budget": budget, "sources": ids, **bad}
        with pytest.raises(InvalidInputError, match=message):
            run_grid(registry, Grid(**spec), shared_data, str(tiny_model_dir), show_progress=False)
    assert registry.count_experts() == before


def test_cli_compare_refuses_a_malformed_strategy_option_in_one_line(registry, tiny_model_dir, shared_data, tmp_path):
    result = run_cli("--registry", str(registry.engine.url), "--data-dir", str(shared_data), "compare", "--targets", "cb",
                     "--strategies", "merge", "-O", "combine=ties", "--model", str(tiny_model_dir), cwd=tmp_path)
    assert_one_line_error(result, "STRATEGY:KEY=VALUE")
