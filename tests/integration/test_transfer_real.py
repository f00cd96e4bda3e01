"""Transfer on the real MiniLM with two real source experts (small budgets), through the API and the CLI."""

from __future__ import annotations

import json

import pytest
import torch

from transferkit.backbone import load_backbone
from transferkit.composition.transfer import TransferJob, transfer
from transferkit.registry import open_registry
from transferkit.training.loop import TrainingConfig
from transferkit.rebuild import load_expert_model
from transferkit.workflows import SourceJob, train_source

from cli_helpers import assert_one_line_error, run_cli, run_cli_in_process

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def registry_url(tmp_path_factory):
    return f"sqlite:///{tmp_path_factory.mktemp('transfer')}/t.db"


@pytest.fixture(scope="module")
def sources(registry_url, shared_data):
    registry = open_registry(registry_url)
    experts = []
    for task in ("mnli", "sst2"):
        job = SourceJob(
            task=task, data_dir=shared_data, max_train_examples=480, show_progress=False,
            training=TrainingConfig(max_steps=15, batch_size=32, eval_every=15, seed=1),
        )
        experts.append(train_source(registry, job))
    return experts


@pytest.fixture(scope="module")
def transferred(registry_url, sources, shared_data):
    registry = open_registry(registry_url)
    job = TransferJob(
        target="superglue/cb", data_dir=shared_data, show_progress=False, sparsity_weight=0.1,
        training=TrainingConfig(max_steps=12, batch_size=16, eval_every=12, seed=3),
    )
    return transfer(registry, job)


def test_pemt_expert_stored_with_sources_gates_lineage_cost(transferred, sources, registry_url):
    registry = open_registry(registry_url)
    expert = transferred.expert
    assert expert.method == "mixture" and expert.config["strategy"] == "pemt"
    # MNLI's description is closer to CB's than SST-2's: it ranks first.
    assert [r.expert.task_name for r in transferred.ranking] == ["glue/mnli", "glue/sst2"]
    gates = expert.extra["gate_weights"]
    assert set(gates["mean"]) == {s.name for s in sources}
    assert sum(gates["mean"].values()) + gates["zero_expert"]["mean"] == pytest.approx(1.0, abs=1e-4)
    assert len(gates["per_layer"]) == 6
    parents = registry.lineage_edges(expert.id)["parents"]
    assert {p.parent_id for p in parents} == {s.id for s in sources}
    assert all(p.role == "source" for p in parents)
    assert {p.parent_id: p.weight for p in parents} == pytest.approx(
        {s.id: gates["mean"][s.name] for s in sources}, abs=1e-5
    )
    cost = registry.get_run(expert.run_id).cost
    assert cost["wall_seconds"] > 0 and cost["steps"] == 12 and 11 * 16 < cost["examples"] <= 12 * 16
    assert set(expert.metrics["test"]) == {"accuracy", "macro_f1"}


def test_pemt_uses_what_the_sources_know(transferred, sources):
    expert = transferred.expert
    # MNLI's labels are CB's by name: the head starts from MNLI's rows; SST-2's labels map to nothing.
    head = expert.extra["head_init"]
    assert head["used"] and [m["source"] for m in head["mappings"]] == [sources[0].name]
    assert head["mappings"][0]["rows"] == {"entailment": ["entailment"], "contradiction": ["contradiction"], "neutral": ["neutral"]}
    # Both tasks were trained here, so both carry a data embedding and the ranking shows both similarities.
    for ranked in expert.extra["ranking"]:
        assert ranked["description_similarity"] is not None and ranked["data_similarity"] is not None
        assert ranked["similarity"] == pytest.approx((ranked["description_similarity"] + ranked["data_similarity"]) / 2, abs=1e-5)
    zero = expert.extra["gate_weights"]["zero_expert"]
    assert 0 < zero["mean"] < 1 and set(zero["per_layer"]) == set(expert.extra["gate_weights"]["per_layer"])
    assert expert.extra["schedule"]["reason"].startswith("--max-steps 12 as given")
    assert expert.extra["stop_reason"].startswith("completed all 12 steps")
    outputs = expert.extra["test_outputs"]
    accuracy = sum(p == y for p, y in zip(outputs["predictions"], outputs["labels"])) / len(outputs["labels"])
    assert accuracy == pytest.approx(expert.metrics["test"]["accuracy"])


def test_head_init_copies_the_mapped_source_rows(registry_url, sources, shared_data):
    from transferkit.composition.selection import RankedSource
    from transferkit.composition.transfer import initialise_head
    from transferkit.methods import get_method
    from transferkit.modeling import TaskModel
    from transferkit.tasks import resolve_task
    from transferkit.experts import load_source_parts

    registry, backbone = open_registry(registry_url), load_backbone(None)
    parts = [load_source_parts(registry, source, backbone) for source in sources]
    rte = resolve_task("rte")
    model = TaskModel(backbone, get_method("adapter").build(get_method("adapter").config_class(), backbone), rte.num_labels)
    record = initialise_head(model, rte, [RankedSource(s, 0.5) for s in sources], parts)
    model.detach()
    weight, bias = parts[0].head  # MNLI: entailment, neutral, contradiction
    assert record["used"] and record["mappings"][0]["how"]["not_entailment"] == "negation of entailment"
    assert torch.equal(model.head.linear.weight.data[0], weight[0])
    assert torch.allclose(model.head.linear.weight.data[1], (weight[1] + weight[2]) / 2)
    assert torch.allclose(model.head.linear.bias.data, torch.stack([bias[0], (bias[1] + bias[2]) / 2]))


def test_gate_entropy_falls_as_the_sparsity_weight_rises(registry_url, sources, shared_data):
    """The delta-space sparsity loss moves the gate: on real CB with real sources, a larger weight concentrates it."""
    registry = open_registry(registry_url)
    entropies = {}
    for weight in (0.0, 5.0):
        job = TransferJob(
            target="superglue/cb", data_dir=shared_data, show_progress=False, sparsity_weight=weight, name=f"cb-lambda-{weight:g}",
            training=TrainingConfig(max_steps=12, batch_size=16, eval_every=12, seed=3),
        )
        entropies[weight] = transfer(registry, job).expert.extra["gate_weights"]["entropy"]
    assert entropies[5.0] < 0.5 * entropies[0.0], entropies


def test_source_tasks_without_a_data_embedding_get_one_from_their_own_data(registry_url, sources, shared_data):
    """A registry from before data embeddings (or an imported bundle's task) ranks by data too after one transfer."""
    from dataclasses import replace

    registry = open_registry(registry_url)
    registry.upsert_task(replace(registry.get_task("glue/sst2"), data_embedding=None))
    job = TransferJob(
        target="glue/rte", strategy="average", data_dir=shared_data, show_progress=False, max_train_examples=64,
        name="rte-backfill", training=TrainingConfig(max_steps=2, batch_size=16, eval_every=2, seed=1),
    )
    ranking = transfer(registry, job).expert.extra["ranking"]
    assert {r["task"] for r in ranking} == {"glue/mnli", "glue/sst2"}
    assert all(r["data_similarity"] is not None for r in ranking)
    assert all(r["similarity"] == pytest.approx((r["description_similarity"] + r["data_similarity"]) / 2, abs=1e-5) for r in ranking)
    assert registry.get_task("glue/sst2").data_embedding is not None


def test_stored_mixture_reloads_from_the_registry(transferred, registry_url, shared_data):
    registry = open_registry(registry_url)
    model = load_expert_model(registry, transferred.expert, load_backbone(None))
    assert model.composition is not None and model.composition.num_sources == 2
    model.detach()


def test_baselines_record_lineage_the_same_way(registry_url, sources, shared_data):
    registry = open_registry(registry_url)
    training = dict(max_steps=4, batch_size=16, eval_every=4, seed=1)
    spot = transfer(registry, TransferJob(target="cb", strategy="spot", data_dir=shared_data, show_progress=False,
                                          training=TrainingConfig(**training))).expert
    assert spot.method == "lora"
    [edge] = registry.lineage_edges(spot.id)["parents"]
    assert edge.role == "init" and edge.parent_id == sources[0].id
    average = transfer(registry, TransferJob(target="cb", strategy="average", data_dir=shared_data, show_progress=False,
                                             training=TrainingConfig(**training))).expert
    assert average.extra["gate_weights"]["mean"] == {s.name: 0.5 for s in sources}
    scratch = transfer(registry, TransferJob(target="cb", strategy="scratch", data_dir=shared_data, show_progress=False,
                                             training=TrainingConfig(**training))).expert
    assert scratch.method == "adapter" and registry.lineage_edges(scratch.id)["parents"] == []


def test_cli_transfer_and_inspect(registry_url, sources, shared_data, tmp_path):
    result = run_cli(
        "--registry", registry_url, "--data-dir", str(shared_data), "transfer", "--target", "cb",
        "--sources", f"{sources[0].name},{sources[1].id}", "--top-k", "2", "--route-top-k", "1",
        "--max-steps", "3", "--batch-size", "8", "--json", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    details = json.loads(result.stdout)
    assert details["expert"]["config"]["route_top_k"] == 1
    assert len(details["lineage"]["parents"]) == 2
    shown = run_cli("--registry", registry_url, "inspect", details["expert"]["id"], cwd=tmp_path)
    assert shown.returncode == 0 and "gate" in shown.stdout and sources[0].name in shown.stdout


def test_cli_transfer_with_a_learned_source_prompt_scale(registry_url, sources, shared_data, tmp_path):
    result = run_cli(
        "--registry", registry_url, "--data-dir", str(shared_data), "transfer", "--target", "cb",
        "--source-prompt-scale", "learned", "--max-steps", "4", "--batch-size", "8", "--json", cwd=tmp_path,
    )
    assert result.returncode == 0, result.stderr
    expert = json.loads(result.stdout)["expert"]
    assert expert["config"]["source_prompt_scale"] == "learned" and expert["extra"]["source_prompt_scale"] != 0.0
    shown = run_cli("--registry", registry_url, "inspect", expert["id"], cwd=tmp_path)
    assert shown.returncode == 0 and "source prompt scale" in shown.stdout


def test_cli_transfer_bad_inputs(registry_url, sources, shared_data, tiny_model_dir, tmp_path):
    foreign = train_source(
        open_registry(registry_url),
        SourceJob(task="rte", model=str(tiny_model_dir), data_dir=shared_data, max_train_examples=32, show_progress=False,
                  name="tiny-rte", training=TrainingConfig(max_steps=1, batch_size=8)),
    )
    before = run_cli("--registry", registry_url, "list", "--json", "--limit", "200", cwd=tmp_path).stdout
    base = ("--registry", registry_url, "--data-dir", str(shared_data), "transfer", "--max-steps", "2")
    cases = [
        (("--target", "nope"), "nope"),
        (("--target", "cb", "--sources", "no-such-expert"), "no-such-expert"),
        (("--target", "cb", "--sources", f"{sources[0].name},{foreign.name}"), "backbone"),
        (("--target", "cb", "--top-k", "0"), "--top-k"),
        (("--target", "cb", "--route-top-k", "5"), "route-top-k"),
        (("--target", "cb", "--strategy", "magic"), "magic"),
        (("--target", "cb", "--strategy", "scratch", "--sources", sources[0].name), "scratch"),
        (("--target", "cb", "--strategy", "average", "--source-prompt-scale", "learned"), "applies to pemt only"),
        (("--target", "cb", "--source-prompt-scale", "maybe"), "--source-prompt-scale must be one of fixed, learned"),
    ]
    for args, fragment in cases:  # the console script's main() in this process: no new interpreter importing torch per case
        assert_one_line_error(run_cli_in_process(*base, *args, cwd=tmp_path), fragment)
    assert run_cli("--registry", registry_url, "list", "--json", "--limit", "200", cwd=tmp_path).stdout == before


def test_cli_attempt_composes_real_prompt_experts(shared_data, tmp_path):
    """ATTEMPT through the CLI: two real prompt experts (RTE, MRPC: real data whose dev and test splits are small,
    where MNLI's and SST-2's would take most of the test to evaluate) are the sources for CB."""
    registry = f"sqlite:///{tmp_path}/attempt.db"
    common = ("--registry", registry, "--data-dir", str(shared_data))
    budget = ("--max-steps", "6", "--batch-size", "16", "--max-length", "64", "--seed", "1", "--quiet")
    for task in ("rte", "mrpc"):  # the sources in this process (the same main()); the transfer as a real process below
        trained = run_cli_in_process(*common, "train-source", task, "--method", "prompt", "-O", "num_virtual_tokens=6",
                                     "--max-train-examples", "96", *budget, cwd=tmp_path)
        assert trained.returncode == 0, trained.stderr[-2000:]
    result = run_cli(*common, "transfer", "--target", "cb", "--strategy", "attempt", *budget, "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-2000:]
    details = json.loads(result.stdout)
    expert = details["expert"]
    assert expert["method"] == "attempt" and [r["task"] for r in expert["extra"]["ranking"]] == ["glue/rte", "glue/mrpc"]
    attention = expert["extra"]["gate_weights"]
    assert sum(attention["mean"].values()) + attention["target"] == pytest.approx(1.0, abs=1e-4)
    assert {p["role"] for p in details["lineage"]["parents"]} == {"source"} and len(details["lineage"]["parents"]) == 2
    assert set(expert["metrics"]["test"]) == {"accuracy", "macro_f1"}
    shown = run_cli("--registry", registry, "inspect", expert["name"], cwd=tmp_path)
    assert shown.returncode == 0 and "attention on the target prompt" in shown.stdout
