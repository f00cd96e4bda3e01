"""`reproduce` rebuilds train-source and transfer jobs (compare cells included) from the run's job record.

Runs on the tiny random BERT with real task files, so every job trains for real in seconds.
"""

from __future__ import annotations

import pytest

from transferkit.composition.compare import Grid, GridBudget, run_grid
from transferkit.composition.transfer import TransferJob, transfer
from transferkit.errors import IncompatibleBackboneError, InvalidInputError
from transferkit.reproduce import JOB_FIELD_DEFAULTS, JOB_FIELDS, rebuild_job, reproduce
from transferkit.training.loop import TrainingConfig
from transferkit.workflows import SourceJob, train_source


@pytest.fixture
def sources(registry, tiny_model_dir, shared_data):
    return [
        train_source(registry, SourceJob(
            task=task, model=str(tiny_model_dir), data_dir=shared_data, max_train_examples=32, show_progress=False,
            method_options=["r=2"], training=TrainingConfig(max_steps=2, batch_size=8, eval_batch_size=256, seed=5),
        ))
        for task in ("sst2", "rte")
    ]


def tiny_transfer(tiny_model_dir, shared_data, strategy: str, sources=None) -> TransferJob:
    return TransferJob(
        target="cb", strategy=strategy, sources=sources, top_k=2, model=str(tiny_model_dir), data_dir=shared_data,
        max_train_examples=24, show_progress=False, training=TrainingConfig(max_steps=3, batch_size=8, seed=3, prompt_lr=5e-3),
    )


def test_source_job_record_has_every_field_and_rebuilds(registry, sources, shared_data):
    run = registry.get_run(sources[0].run_id)
    job = run.hyperparams["job"]
    assert set(job) == set(JOB_FIELDS["train-source"])
    assert job["task"] == "glue/sst2" and job["method_options"] == ["r=2"] and job["lr"] is None
    rebuilt = rebuild_job(run, sources[0], data_dir=shared_data, name="x", command=["c"], show_progress=False)
    assert isinstance(rebuilt, SourceJob) and rebuilt.task == "glue/sst2" and rebuilt.model == job["model"]
    assert rebuilt.training == TrainingConfig(**job["training"]) and rebuilt.training.seed == 5
    assert rebuilt.extra_lineage == [(sources[0].id, "reproduces", None)]


@pytest.mark.parametrize("strategy", ["pemt", "spot", "scratch"])
def test_transfer_reproduces_exactly_with_the_same_sources(registry, sources, tiny_model_dir, shared_data, strategy):
    # Sources picked by the registry (no --sources): the record holds the ids that were actually used.
    original = transfer(registry, tiny_transfer(tiny_model_dir, shared_data, strategy)).expert
    run = registry.get_run(original.run_id)
    job = run.hyperparams["job"]
    assert set(job) == set(JOB_FIELDS["transfer"]) | set(JOB_FIELD_DEFAULTS["transfer"]) and job["target"] == "superglue/cb"
    assert job["method"] == ("lora" if strategy == "spot" else "adapter")  # spot records the method it continued
    parents = {e.parent_id for e in registry.lineage_edges(original.id)["parents"]}
    assert set(job["sources"]) == parents and len(parents) == {"pemt": 2, "spot": 1, "scratch": 0}[strategy]
    rebuilt = rebuild_job(run, original, data_dir=shared_data, name="x", command=["c"], show_progress=False)
    assert isinstance(rebuilt, TransferJob) and rebuilt.sources == (job["sources"] or None)
    assert (rebuilt.strategy, rebuilt.top_k, rebuilt.training.prompt_lr) == (strategy, 2, 5e-3)

    result = reproduce(registry, original.name, data_dir=shared_data, show_progress=False, command=["test"])
    assert result.expert.name == f"{original.name}-repro" and result.data_matches
    assert result.metrics and result.max_difference == 0.0 and result.same_weights
    edges = registry.lineage_edges(result.expert.id)["parents"]
    assert {(e.parent_id, e.role) for e in edges} == {(original.id, "reproduces")} | {
        (e.parent_id, e.role) for e in registry.lineage_edges(original.id)["parents"]
    }
    # A reproduction records its own job too, so it can be reproduced in turn; the name stays unique.
    again = reproduce(registry, result.expert.id, data_dir=shared_data, show_progress=False, command=["test"])
    assert again.expert.name == f"{original.name}-repro-repro" and again.same_weights


def test_compare_cell_reproduces(registry, sources, tiny_model_dir, shared_data):
    grid = Grid(name="g", targets=["cb"], strategies=["average"], seeds=[2], top_k=2,
                budget=GridBudget(max_steps=2, batch_size=8, eval_every=2))
    run_grid(registry, grid, shared_data, str(tiny_model_dir), show_progress=False)
    cell = registry.get_expert("g-cb-average-s2")
    result = reproduce(registry, cell.name, data_dir=shared_data, show_progress=False, command=["test"])
    assert result.same_weights and result.max_difference == 0.0 and result.expert.name == "g-cb-average-s2-repro"


def copy_with_job(registry, expert, name: str, kind: str, job: dict):
    """A stored copy of `expert` whose run recorded `job`."""
    run = registry.start_run(kind, ["x"], {"job": job}, 1, {}, {}, {})
    return registry.register_expert(
        run_id=run.id, name=name, task_name=expert.task_name, method=expert.method, config=expert.config,
        backbone=expert.backbone, backbone_id=expert.backbone_id, trainable_params=1, metrics={},
        tensors=registry.load_expert_tensors(expert)[0], tensor_metadata={"format": "transferkit.expert/1"},
    )


def test_refusals_come_before_any_work(registry, sources, shared_data):
    first = sources[0]
    # The recorded model is now the packaged MiniLM, whose weights differ from the tiny BERT the expert is bound to.
    job = {**registry.get_run(first.run_id).hyperparams["job"], "model": None}
    swapped = copy_with_job(registry, first, "swapped", "train-source", job)
    incomplete = copy_with_job(registry, first, "partial", "transfer", {"target": "cb"})
    before = registry.count_experts()
    with pytest.raises(IncompatibleBackboneError, match=f"{first.backbone_id}.*restore that model"):
        reproduce(registry, swapped.id, data_dir=shared_data, show_progress=False, command=["test"])
    with pytest.raises(InvalidInputError, match="incomplete job record.*strategy, sources"):
        reproduce(registry, incomplete.name, data_dir=shared_data, show_progress=False, command=["test"])
    assert registry.count_experts() == before


def test_learned_source_prompt_scale_is_recorded_and_reproduces(registry, sources, tiny_model_dir, shared_data):
    job = tiny_transfer(tiny_model_dir, shared_data, "pemt")
    job.source_prompt_scale = "learned"
    original = transfer(registry, job).expert
    recorded = registry.get_run(original.run_id).hyperparams["job"]
    assert recorded["source_prompt_scale"] == "learned" and original.config["source_prompt_scale"] == "learned"
    assert original.extra["source_prompt_scale"] != 0.0  # three steps move the scale off its start at 0
    result = reproduce(registry, original.name, data_dir=shared_data, show_progress=False, command=["test"])
    assert result.same_weights and result.max_difference == 0.0
    assert result.expert.extra["source_prompt_scale"] == original.extra["source_prompt_scale"]
    # The default records PEMT's full weight, so a run recorded before the option rebuilds the same way.
    default = transfer(registry, tiny_transfer(tiny_model_dir, shared_data, "pemt")).expert
    assert registry.get_run(default.run_id).hyperparams["job"]["source_prompt_scale"] == "fixed"
    assert JOB_FIELD_DEFAULTS["transfer"]["source_prompt_scale"] == "fixed"
    assert "source_prompt_scale" not in default.config and "source_prompt_scale" not in default.extra


@pytest.mark.parametrize("strategy", ["average", "scratch", "spot"])
def test_learned_source_prompt_scale_is_refused_outside_pemt(registry, sources, tiny_model_dir, shared_data, strategy):
    job = tiny_transfer(tiny_model_dir, shared_data, strategy)
    job.source_prompt_scale = "learned"
    before = registry.count_experts()
    with pytest.raises(InvalidInputError, match="--source-prompt-scale learned applies to pemt only"):
        transfer(registry, job)
    job.source_prompt_scale = "sometimes"
    with pytest.raises(InvalidInputError, match="--source-prompt-scale must be one of fixed, learned"):
        transfer(registry, job)
    assert registry.count_experts() == before


def test_a_grid_refuses_cells_stored_with_another_source_prompt_scale(registry, sources, tiny_model_dir, shared_data):
    budget = GridBudget(max_steps=2, batch_size=8, eval_every=2)
    run_grid(registry, Grid(name="ps", targets=["cb"], strategies=["pemt"], seeds=[1], top_k=2, budget=budget),
             shared_data, str(tiny_model_dir), show_progress=False)
    learned = Grid(name="ps", targets=["cb"], strategies=["pemt"], seeds=[1], top_k=2, budget=budget, source_prompt_scale="learned")
    with pytest.raises(InvalidInputError, match="stored with --source-prompt-scale 'fixed', not 'learned'"):
        run_grid(registry, learned, shared_data, str(tiny_model_dir), show_progress=False)
    with pytest.raises(InvalidInputError, match="add pemt to --strategies"):
        Grid(name="x", targets=["cb"], strategies=["scratch"], seeds=[1], source_prompt_scale="learned").validate(registry)
