"""prefix, ept and mept through the real CLI on the packaged MiniLM and real SST-2 and RTE: trained, stored, listed, inspected.

Tiny budgets (6 steps x 8 examples): this checks the methods run end to end on the real
backbone and data, not how well they learn. The SST-2 and RTE jobs run as two parallel
streams with one registry each (SQLite is single-writer), to keep the file near a minute.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import pytest

from cli_helpers import run_cli

pytestmark = pytest.mark.real

METHODS = ("prefix", "ept", "mept")
TASKS = {"sst2": "glue/sst2", "rte": "glue/rte"}
BUDGET = ("--max-steps", "6", "--batch-size", "8", "--max-train-examples", "64", "--max-length", "64", "--seed", "1")


@pytest.fixture(scope="module")
def registries(tmp_path_factory, shared_data):
    """Per task, the registry URL after training each new method on it through `transferkit train-source`."""
    folder = tmp_path_factory.mktemp("methods-real")

    def stream(short: str) -> str:
        registry = f"sqlite:///{folder}/{short}.db"
        for method in METHODS:
            result = run_cli(
                "--registry", registry, "--data-dir", str(shared_data), "train-source", TASKS[short], "--method", method,
                *BUDGET, cwd=folder, env_extra={"OMP_NUM_THREADS": "1"},
            )
            assert result.returncode == 0, result.stderr[-2000:]
        return registry

    with ThreadPoolExecutor(max_workers=len(TASKS)) as pool:
        return dict(zip(TASKS, pool.map(stream, TASKS)))


@pytest.mark.parametrize("short", sorted(TASKS))
def test_each_method_is_stored_and_listed(registries, short, tmp_path):
    result = run_cli("--registry", registries[short], "list", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    experts = listed["experts"] if isinstance(listed, dict) else listed
    by_method = {e["method"]: e for e in experts}
    assert set(by_method) == set(METHODS)
    for method, expert in by_method.items():
        assert expert["name"] == f"{short}-{method}" and expert["task_name"] == TASKS[short]
        assert expert["trainable_params"] > 0 and expert["metrics"]["test"]["accuracy"] >= 0.0


@pytest.mark.parametrize("short", sorted(TASKS))
@pytest.mark.parametrize("method", METHODS)
def test_inspect_works(registries, short, method, tmp_path):
    result = run_cli("--registry", registries[short], "inspect", f"{short}-{method}", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    details = json.loads(result.stdout)
    assert details["artifact"]["verified"] and details["run"]["status"] == "finished"
    statistics = details["expert"]["extra"].get("method_statistics")
    if method != "mept":
        assert statistics is None
        return
    load = statistics["expert_load"]
    assert len(load) == 6 and all(len(counts) == 4 for counts in load.values())  # 6 MiniLM layers x 4 experts
    assert all(sum(counts) == 6 * 8 * 1 for counts in load.values())  # steps x batch x top_k per layer
    assert (statistics["activated_prompts"], statistics["total_prompts"]) == (12, 30)


def test_inspect_renders_mept_load(registries, tmp_path):
    result = run_cli("--registry", registries["rte"], "inspect", "rte-mept", cwd=tmp_path, env_extra={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "expert load layer5" in result.stdout
    assert "1 (+ shared) of 4 (+ shared) in 6 layers" in result.stdout


def test_methods_lists_new_methods_with_counts(tmp_path):
    result = run_cli("methods", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)["methods"]}
    # Stored parameters on MiniLM (d = 384, 6 layers): prefix 2 x 6 x 10 x 384; EPT 10 x 384 + 128 x 4 + 4 x 384;
    # MEPT 6 x (4 x 10 x 384 + 10 x 384 + 4 x 384).
    assert {name: rows[name]["trainable_params"] for name in METHODS} == {"prefix": 46080, "ept": 5888, "mept": 124416}
    assert not any(rows[name]["composable"] for name in METHODS)
