"""`transferkit lineage` through the console script and `reproduce`'s refusals through its `main()` in this process (a new
interpreter would import torch for each one-line refusal), on a registry filled via the Python API."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import assert_one_line_error, run_cli, run_cli_in_process

from transferkit.lineage import LineageGraph, parse_mermaid
from transferkit.registry import TaskRecord, open_registry

BACKBONE = {"name": "minilm", "weights_sha256": "ab" * 32, "backbone_id": "bert-abababababababab"}


def data_fingerprint(task: str, digit: str, source: str) -> dict:
    return {
        "task": task, "fingerprint": digit * 64, "sizes": {"train": 100, "dev": 10, "test": 20},
        "split_fingerprints": {"train": "a" * 64, "dev": "b" * 64, "test": "c" * 64},
        "protocol": {"name": "large", "seed": 1, "source": source},
    }


def add_expert(registry, name: str, task: str, digit: str, *, lineage=(), hyperparams=None, kind="train-source",
               backbone_id: str = BACKBONE["backbone_id"], source: str = "derived-subset"):
    run = registry.start_run(kind, ["transferkit", kind, task], hyperparams or {"lr": 0.1}, 1,
                             {"transferkit": "0.1.0", "git_commit": "c0ffee" * 6}, {"torch": "2.13.0"},
                             data_fingerprint(task, digit, source))
    return registry.register_expert(
        run_id=run.id, name=name, task_name=task, method="lora", config={"r": 8}, backbone=BACKBONE,
        backbone_id=backbone_id, trainable_params=4, metrics={"primary": "accuracy", "test": {"accuracy": 0.5}},
        tensors={"w": torch.zeros(2, 2)}, tensor_metadata={"format": "transferkit.expert/1"}, lineage=lineage,
        cost={"wall_seconds": 1.0},
    )


@pytest.fixture
def filled(tmp_path):
    """mnli-lora and sst2-lora (derived-subset / local data) -> cb-pemt (gate 0.7 / 0.3)."""
    url = f"sqlite:///{tmp_path}/reg.db"
    registry = open_registry(url)
    for task in ("glue/mnli", "glue/sst2", "superglue/cb"):
        registry.upsert_task(TaskRecord(task, f"the {task} task", {"name": task}, [1.0, 0.0], "test"))
    mnli = add_expert(registry, "mnli-lora", "glue/mnli", "1")
    sst2 = add_expert(registry, "sst2-lora", "glue/sst2", "2", source="local")
    target = add_expert(registry, "cb-pemt", "superglue/cb", "3", kind="transfer",
                        lineage=[(mnli.id, "source", 0.7), (sst2.id, "source", 0.3)])
    registry.close()
    return url, {"mnli": mnli, "sst2": sst2, "target": target}


def test_lineage_mermaid_shows_sources_with_data_and_backbone(filled, tmp_path):
    url, experts = filled
    result = run_cli("--registry", url, "lineage", "cb-pemt", "--format", "mermaid", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("flowchart LR")
    labels, edges = parse_mermaid(result.stdout)
    assert set(labels) == {e.id for e in experts.values()}
    assert {(e.parent_id, e.role, e.weight) for e in edges} == {
        (experts["mnli"].id, "source", 0.7), (experts["sst2"].id, "source", 0.3),
    }
    mnli = labels[experts["mnli"].id]
    assert "mnli-lora" in mnli and "glue/mnli" in mnli and "1" * 12 + " derived-subset" in mnli
    assert "backbone bert-abababababababab" in mnli and "git c0ffeec0ffee" in mnli
    assert "2" * 12 + " local" in labels[experts["sst2"].id]


def test_lineage_tree_dot_json_and_descendants(filled, tmp_path):
    url, experts = filled
    tree = run_cli("--registry", url, "lineage", experts["target"].id[:6], cwd=tmp_path)
    assert tree.returncode == 0, tree.stderr
    assert tree.stdout.splitlines()[0].startswith("cb-pemt") and "source (0.7)" in tree.stdout
    assert "data " + "1" * 64 + " (derived-subset)" in tree.stdout
    dot = run_cli("--registry", url, "lineage", "cb-pemt", "--format", "dot", cwd=tmp_path)
    assert dot.stdout.startswith("digraph lineage {") and f'"{experts["mnli"].id}" -> "{experts["target"].id}"' in dot.stdout
    as_json = run_cli("--registry", url, "lineage", "cb-pemt", "--json", cwd=tmp_path)
    graph = LineageGraph.from_json(as_json.stdout)
    assert graph.root == experts["target"].id and len(graph.edges) == 2
    assert graph.nodes[experts["mnli"].id].data["protocol"]["source"] == "derived-subset"
    assert graph.nodes[experts["mnli"].id].backbone["weights_sha256"] == "ab" * 32
    down = json.loads(run_cli("--registry", url, "lineage", "mnli-lora", "--descendants", "--json", cwd=tmp_path).stdout)
    assert [(e["parent_id"], e["child_id"]) for e in down["edges"]] == [(experts["mnli"].id, experts["target"].id)]


def test_lineage_errors_are_one_line(filled, tmp_path):
    url, _ = filled
    assert_one_line_error(run_cli("--registry", url, "lineage", "no-such-expert", cwd=tmp_path), "no-such-expert")
    assert_one_line_error(run_cli("--registry", url, "lineage", "cb-pemt", "--format", "png", cwd=tmp_path), "--format")
    assert_one_line_error(
        run_cli("--registry", url, "lineage", "cb-pemt", "--format", "dot", "--json", cwd=tmp_path), "--json"
    )


def test_reproduce_refuses_runs_without_a_job_record(filled, tmp_path):
    url, _ = filled
    before = run_cli("--registry", url, "list", "--json", cwd=tmp_path).stdout
    result = run_cli_in_process("--registry", url, "reproduce", "mnli-lora", cwd=tmp_path)
    assert_one_line_error(result, "mnli-lora", "before transferkit recorded jobs", "task, method, method_options")
    assert_one_line_error(run_cli_in_process("--registry", url, "reproduce", "nope-nope", cwd=tmp_path), "nope-nope")
    assert run_cli("--registry", url, "list", "--json", cwd=tmp_path).stdout == before


def test_reproduce_refuses_another_backbone_and_missing_sources(tmp_path, tiny_model_dir):
    from transferkit.backbone import load_backbone

    tiny_id = load_backbone(str(tiny_model_dir)).backbone_id
    url = f"sqlite:///{tmp_path}/reg.db"
    registry = open_registry(url)
    registry.upsert_task(TaskRecord("glue/rte", "rte", {"name": "glue/rte"}, [1.0], "test"))
    training = {"max_steps": 1, "seed": 1}
    job = {"task": "glue/rte", "method": "lora", "method_options": [], "model": str(tiny_model_dir), "lr": None,
           "training": training, "max_train_examples": 8, "task_prompt_length": 0}
    add_expert(registry, "foreign", "glue/rte", "4", hyperparams={"job": job}, backbone_id="bert-0000000000000000")
    transfer_job = {**job, "target": "glue/rte", "strategy": "pemt", "sources": ["deadbeef0000"], "top_k": None,
                    "route_top_k": None, "sparsity_weight": 0.1}
    del transfer_job["task"]
    add_expert(registry, "orphan", "glue/rte", "5", hyperparams={"job": transfer_job}, kind="transfer", backbone_id=tiny_id)
    registry.close()
    assert_one_line_error(
        run_cli_in_process("--registry", url, "reproduce", "foreign", cwd=tmp_path), "bert-0000000000000000", tiny_id
    )
    assert_one_line_error(run_cli_in_process("--registry", url, "reproduce", "orphan", cwd=tmp_path), "deadbeef0000",
                          "no longer exists")
