"""prefix, ept and mept through the real CLI on the packaged MiniLM and real RTE (and SST-2): trained, stored, listed, inspected.

Tiny budgets (6 steps x 8 examples): this checks the methods run end to end on the real
backbone and data, not how well they learn. Each task's three trainings are one real process
running the CLI's `main()` once per method (signal_job.py's `::`), so torch is imported once per
task; the read-only commands run `main()` in this process.

RTE (sentence pairs, 277 dev and test examples) runs by default. The SST-2 variant (single sentences)
repeats the same checks but evaluates 1,872 sentences per method; single-sentence inputs for these methods
are covered on the tiny BERT (tests/unit/test_methods_*.py), so it is marked `slow` (`make test-slow`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from cli_helpers import run_cli_in_process
from signal_helpers import JOB

pytestmark = pytest.mark.real

METHODS = ("prefix", "ept", "mept")
TASKS = {"sst2": "glue/sst2", "rte": "glue/rte"}
SHORTS = [pytest.param("rte", id="rte"), pytest.param("sst2", id="sst2", marks=pytest.mark.slow)]
BUDGET = ("--max-steps", "6", "--batch-size", "8", "--max-train-examples", "64", "--max-length", "64", "--seed", "1")


@pytest.fixture(scope="module")
def registries(tmp_path_factory, shared_data):
    """`registries(short)`: the task's registry URL after training each new method on it through `transferkit train-source`
    (trained on first use, so a deselected task is never trained)."""
    folder = tmp_path_factory.mktemp("methods-real")
    trained: dict[str, str] = {}

    def registry_for(short: str) -> str:
        if short in trained:
            return trained[short]
        registry = f"sqlite:///{folder}/{short}.db"
        commands = [["--registry", registry, "--data-dir", str(shared_data), "train-source", TASKS[short], "--method", method,
                     *BUDGET] for method in METHODS]
        result = subprocess.run(
            [sys.executable, str(JOB), *[argument for command in commands for argument in [*command, "::"]][:-1]],
            cwd=folder, env={**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"},
            capture_output=True, text=True, timeout=600 * len(METHODS),  # run_cli's safety net, per command
        )
        assert result.returncode == 0, result.stderr[-2000:]
        trained[short] = registry
        return registry

    return registry_for


@pytest.mark.parametrize("short", SHORTS)
def test_each_method_is_stored_and_listed(registries, short, tmp_path):
    result = run_cli_in_process("--registry", registries(short), "list", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    experts = listed["experts"] if isinstance(listed, dict) else listed
    by_method = {e["method"]: e for e in experts}
    assert set(by_method) == set(METHODS)
    for method, expert in by_method.items():
        assert expert["name"] == f"{short}-{method}" and expert["task_name"] == TASKS[short]
        assert expert["trainable_params"] > 0 and expert["metrics"]["test"]["accuracy"] >= 0.0


@pytest.mark.parametrize("short", SHORTS)
@pytest.mark.parametrize("method", METHODS)
def test_inspect_works(registries, short, method, tmp_path):
    result = run_cli_in_process("--registry", registries(short), "inspect", f"{short}-{method}", "--json", cwd=tmp_path)
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
    result = run_cli_in_process("--registry", registries("rte"), "inspect", "rte-mept", cwd=tmp_path, env_extra={"COLUMNS": "200"})
    assert result.returncode == 0, result.stderr
    assert "expert load layer5" in result.stdout
    assert "1 (+ shared) of 4 (+ shared) in 6 layers" in result.stdout


def test_methods_lists_new_methods_with_counts(tmp_path):
    result = run_cli_in_process("methods", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {row["name"]: row for row in json.loads(result.stdout)["methods"]}
    # Stored parameters on MiniLM (d = 384, 6 layers): prefix 2 x 6 x 10 x 384; EPT 10 x 384 + 128 x 4 + 4 x 384;
    # MEPT 6 x (4 x 10 x 384 + 10 x 384 + 4 x 384).
    assert {name: rows[name]["trainable_params"] for name in METHODS} == {"prefix": 46080, "ept": 5888, "mept": 124416}
    assert not any(rows[name]["composable"] for name in METHODS)
