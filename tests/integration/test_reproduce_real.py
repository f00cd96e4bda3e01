"""`transferkit reproduce` on the real MiniLM and real data: a source run and a pemt transfer come back bit-identical."""

from __future__ import annotations

import json

import pytest
from cli_helpers import run_cli

from transferkit.composition.transfer import TransferJob, transfer
from transferkit.lineage import parse_mermaid
from transferkit.registry import open_registry
from transferkit.training.loop import TrainingConfig
from transferkit.workflows import SourceJob, train_source

pytestmark = pytest.mark.real

# CPU training is deterministic for a fixed seed and thread count; both runs share this machine and environment.
TOLERANCE = 1e-6


def check_reproduction(report: dict, registry_url: str) -> None:
    assert report["metrics"] and {row["split"] for row in report["metrics"]} == {"dev", "test"}
    assert report["max_abs_difference"] <= TOLERANCE
    assert all(abs(row["difference"]) <= TOLERANCE for row in report["metrics"])
    assert report["same_weights"] is True
    assert report["data"]["matches"] is True and report["data"]["recorded"] == report["data"]["now"]
    registry = open_registry(registry_url)
    parents = registry.lineage_edges(report["reproduction"]["id"])["parents"]
    assert (report["original"]["id"], "reproduces") in {(e.parent_id, e.role) for e in parents}
    assert report["reproduction"]["name"] == report["original"]["name"] + "-repro"
    registry.close()


def test_cli_source_run_reproduces(tmp_path, shared_data):
    registry = f"sqlite:///{tmp_path}/r.db"
    base = ("--registry", registry, "--data-dir", str(shared_data))
    trained = run_cli(
        *base, "train-source", "glue/rte", "--method", "lora", "--max-steps", "4", "--batch-size", "8",
        "--eval-every", "4", "--max-train-examples", "64", "--seed", "7", "--json", "-q", cwd=tmp_path,
    )
    assert trained.returncode == 0, trained.stderr
    original = json.loads(trained.stdout)["expert"]
    reproduced = run_cli(*base, "reproduce", original["name"], "--json", "-q", cwd=tmp_path)
    assert reproduced.returncode == 0, reproduced.stderr
    report = json.loads(reproduced.stdout)
    check_reproduction(report, registry)
    # The reproduction's lineage shows the original, with the same data and backbone fingerprints.
    chart = run_cli("--registry", registry, "lineage", report["reproduction"]["id"], "--format", "mermaid", cwd=tmp_path)
    labels, edges = parse_mermaid(chart.stdout)
    assert [(e.parent_id, e.role) for e in edges] == [(original["id"], "reproduces")]
    assert report["data"]["now"][:12] in labels[original["id"]] and original["backbone_id"] in labels[original["id"]]
    table = run_cli(*base, "reproduce", original["id"], "-q", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "data fingerprint matches" in table.stdout and "bit-identical" in table.stdout


def test_pemt_transfer_reproduces(tmp_path, shared_data):
    registry_url = f"sqlite:///{tmp_path}/t.db"
    registry = open_registry(registry_url)
    budget = dict(max_steps=3, batch_size=8, eval_every=3, seed=1)
    sources = [
        train_source(registry, SourceJob(task=task, data_dir=shared_data, max_train_examples=48, show_progress=False,
                                         training=TrainingConfig(**budget)))
        for task in ("cb", "mrpc")
    ]
    original = transfer(registry, TransferJob(
        target="rte", data_dir=shared_data, max_train_examples=48, show_progress=False,
        training=TrainingConfig(max_steps=4, batch_size=8, eval_every=4, seed=2),
    )).expert
    assert set(original.config["sources"]) == {s.id for s in sources}
    registry.close()
    result = run_cli("--registry", registry_url, "--data-dir", str(shared_data), "reproduce", original.name, "--json", "-q",
                     cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    check_reproduction(report, registry_url)
    registry = open_registry(registry_url)
    copy = registry.get_expert(report["reproduction"]["id"])
    assert copy.config == original.config and copy.extra["gate_weights"] == original.extra["gate_weights"]
    registry.close()
