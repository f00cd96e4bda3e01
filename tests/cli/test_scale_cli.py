"""`transferkit search`, paginated `transferkit list` and `--artifacts` through the console script, on a SQLite
registry whose tasks carry real description embeddings (packaged MiniLM)."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import assert_one_line_error, run_cli

from transferkit.registry import open_registry
from transferkit.tasks import list_tasks
from transferkit.task_registry import ensure_task_record

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def registry(tmp_path_factory) -> str:
    """Every catalog task embedded, and a few stored experts with dev scores (tensors are placeholders)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('search')}/r.db"
    store = open_registry(url)
    for task in list_tasks():
        ensure_task_record(store, task)
    for name, task, dev in (("qqp-a", "glue/qqp", 0.7), ("qqp-b", "glue/qqp", 0.8), ("mrpc-a", "glue/mrpc", 0.6),
                            ("sst2-a", "glue/sst2", 0.9)):
        run = store.start_run("train-source", [], {}, None, {}, {}, {})
        store.register_expert(
            run_id=run.id, name=name, task_name=task, method="lora", config={}, backbone={}, backbone_id="bb",
            trainable_params=1, metrics={"primary": "accuracy", "dev": {"accuracy": dev}}, tensors={"w": torch.zeros(1)},
            tensor_metadata={}, cost={"wall_seconds": 1.0},
        )
    store.close()
    return url


def test_search_finds_the_task_and_its_best_experts(registry, tmp_path):
    result = run_cli("--registry", registry, "search", "detect whether two questions mean the same", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    found = json.loads(result.stdout)
    assert found["index"] == "numpy" and len(found["tasks"]) == 5
    top = found["tasks"][0]
    assert top["task"] == "glue/qqp" and top["experts_total"] == 2
    assert [e["name"] for e in top["experts"]] == ["qqp-b", "qqp-a"] and top["experts"][0]["dev"] == 0.8
    similarities = [t["similarity"] for t in found["tasks"]]
    assert similarities == sorted(similarities, reverse=True)
    table = run_cli("--registry", registry, "search", "is the movie review positive", "--limit", "1", cwd=tmp_path)
    assert table.returncode == 0 and "glue/sst2" in table.stdout and "sst2-a" in table.stdout
    assert_one_line_error(run_cli("--registry", registry, "search", "  ", cwd=tmp_path), "search text is empty")
    assert_one_line_error(run_cli("--registry", registry, "search", "x", "--limit", "0", cwd=tmp_path), "--limit")


def test_list_is_paginated(registry, tmp_path):
    newest_first = ["sst2-a", "mrpc-a", "qqp-b", "qqp-a"]
    page = run_cli("--registry", registry, "list", "--limit", "2", "--offset", "1", "--json", cwd=tmp_path)
    assert [e["name"] for e in json.loads(page.stdout)] == newest_first[1:3]
    table = run_cli("--registry", registry, "list", "--limit", "3", cwd=tmp_path)
    assert "experts (3 of 4)" in table.stdout and "qqp-a" not in table.stdout


def test_artifacts_option_and_environment_twin(registry, tmp_path):
    blobs = tmp_path / "shared-blobs"
    store = open_registry(registry, f"file://{blobs}")
    run = store.start_run("train-source", [], {}, None, {}, {}, {})
    store.register_expert(
        run_id=run.id, name="elsewhere", task_name="glue/rte", method="lora", config={}, backbone={}, backbone_id="bb",
        trainable_params=1, metrics={}, tensors={"w": torch.ones(1)}, tensor_metadata={},
    )
    store.close()
    assert list(blobs.rglob("*.safetensors"))
    for args, env in (((f"--artifacts", f"file://{blobs}"), {}), ((), {"TRANSFERKIT_ARTIFACTS": str(blobs)})):
        shown = run_cli("--registry", registry, *args, "inspect", "elsewhere", "--json", cwd=tmp_path, env_extra=env)
        assert shown.returncode == 0, shown.stderr
        assert json.loads(shown.stdout)["artifact"]["verified"] is True
    assert_one_line_error(run_cli("--registry", registry, "inspect", "elsewhere", cwd=tmp_path), "missing or unreadable")
