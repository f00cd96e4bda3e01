"""The `transferkit` console script end to end, through subprocesses, on the real backbone and data.

The refused inputs and `methods` run the same `main()` in this process (each new interpreter would import torch
again); training, listing and inspecting go through the installed script."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cli_helpers import assert_one_line_error, run_cli, run_cli_in_process

pytestmark = pytest.mark.real

@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cli")


@pytest.fixture(scope="module")
def stored(workdir, shared_data):
    """One real expert trained through the CLI into a SQLite registry in `workdir`.

    CommitmentBank (real data, 28 dev and 28 test examples): SST-2's 1,872 evaluation sentences would take most of the
    run, and what is checked here is the command, not how well it learns (tests/integration covers that)."""
    registry = f"sqlite:///{workdir}/reg/x.db"
    result = run_cli(
        "--registry", registry, "--data-dir", str(shared_data), "train-source", "superglue/cb", "--method", "lora",
        "--max-steps", "10", "--batch-size", "8", "--eval-every", "10", "--max-train-examples", "400", "--json",
        cwd=workdir,
    )
    assert result.returncode == 0, result.stderr
    return registry, json.loads(result.stdout)


def test_train_source_json_has_everything(stored, workdir):
    registry, details = stored
    expert = details["expert"]
    assert expert["task_name"] == "superglue/cb" and expert["method"] == "lora"
    assert set(expert["metrics"]["dev"]) >= {"accuracy"} and set(expert["metrics"]["test"]) >= {"accuracy"}
    assert details["cost"]["examples"] == 80 and details["cost"]["device_kind"] == "cpu"
    assert details["run"]["hyperparams"]["max_steps"] == 10
    assert details["run"]["data_fingerprint"]["fingerprint"]
    # Artifacts live beside x.db inside the registry folder.
    artifacts = list((workdir / "reg").glob("x-artifacts/**/*.safetensors"))
    assert len(artifacts) == 1


def test_list_and_inspect_json(stored, workdir):
    registry, details = stored
    listed = run_cli("--registry", registry, "list", "--json", cwd=workdir)
    assert listed.returncode == 0, listed.stderr
    assert [e["id"] for e in json.loads(listed.stdout)] == [details["expert"]["id"]]
    shown = run_cli("inspect", details["expert"]["name"], "--registry", registry, "--json", cwd=workdir)
    assert shown.returncode == 0, shown.stderr
    inspected = json.loads(shown.stdout)
    assert inspected["artifact"]["verified"] is True
    assert inspected["expert"]["backbone"]["weights_sha256"] == details["expert"]["backbone"]["weights_sha256"]
    table = run_cli("--registry", registry, "inspect", details["expert"]["id"][:6], cwd=workdir)
    assert table.returncode == 0 and "cost" in table.stdout


def test_environment_variable_twins(stored, workdir):
    registry, details = stored
    listed = run_cli("list", "--json", cwd=workdir, env_extra={"TRANSFERKIT_REGISTRY": registry})
    assert json.loads(listed.stdout)[0]["id"] == details["expert"]["id"]


def test_tampered_artifact_makes_inspect_fail(stored, workdir):
    registry, details = stored
    blob = next((workdir / "reg").glob("x-artifacts/**/*.safetensors"))
    original = blob.read_bytes()
    blob.write_bytes(original[:100] + bytes([original[100] ^ 0xFF]) + original[101:])
    try:
        result = run_cli("--registry", registry, "inspect", details["expert"]["id"], cwd=workdir)
        assert_one_line_error(result, "sha256")
    finally:
        blob.write_bytes(original)


def test_bad_inputs_fail_cleanly(stored, workdir, shared_data):
    registry, _ = stored
    before = run_cli("--registry", registry, "list", "--json", cwd=workdir).stdout
    cases = [
        (("train-source", "glue/nope", "--data-dir", str(shared_data)), "nope"),
        (("train-source", "sst2", "--method", "lorax", "--data-dir", str(shared_data)), "lorax"),
        (("train-source", "sst2", "-O", "r=0", "--data-dir", str(shared_data)), "r"),
        (("train-source", "sst2", "--data-dir", str(workdir / "missing")), "data dir"),
        (("train-source", "superglue/boolq", "--data-dir", str(shared_data)), "boolq"),
        (("train-source", "sst2", "--model", "./no/such/model", "--data-dir", str(shared_data)), "no/such/model"),
        (("inspect", "no-such-expert"), "no-such-expert"),
    ]
    for args, fragment in cases:
        assert_one_line_error(run_cli_in_process("--registry", registry, *args, cwd=workdir), fragment)
    assert run_cli("--registry", registry, "list", "--json", cwd=workdir).stdout == before


def test_tasks_and_methods_listing(workdir):
    tasks = json.loads(run_cli("tasks", "--json", cwd=workdir).stdout)
    assert {"glue/rte", "superglue/rte", "glue/stsb", "superglue/multirc"} <= {t["name"] for t in tasks}
    methods = json.loads(run_cli_in_process("methods", "--json", cwd=workdir).stdout)  # builds every method on MiniLM
    counts = {m["name"]: m["trainable_params"] for m in methods["methods"]}
    assert counts["prompt"] == 20 * 384 and counts["lora"] == 6 * 2 * 2 * 8 * 384
