"""`train-source` and `transfer` under torchrun with 2 CPU processes (DDP, gloo) on a tiny model and real data,
against the same jobs in one process with the same global batch."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from transferkit.registry import open_registry

JOB = Path(__file__).with_name("ddp_job.py")


def _run(command: list[str], cwd: Path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    result = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-4000:]
    return result


@pytest.fixture(scope="module")
def registries(tiny_model_dir, shared_data, tmp_path_factory) -> dict[str, str]:
    folder = tmp_path_factory.mktemp("ddp")
    urls = {"single": f"sqlite:///{folder}/single.db", "ddp": f"sqlite:///{folder}/ddp.db"}
    args = [str(tiny_model_dir), str(shared_data)]
    _run([sys.executable, str(JOB), urls["single"], *args], folder)
    launched = _run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                     str(JOB), urls["ddp"], *args], folder)
    assert "Traceback" not in launched.stderr
    return urls


def test_two_processes_match_one_with_the_same_global_batch(registries):
    single, ddp = (open_registry(registries[kind]) for kind in ("single", "ddp"))
    for name in ("rte-source", "cb-pemt"):
        expected, got = single.get_expert(name), ddp.get_expert(name)
        reference, tensors = single.load_expert_tensors(expected)[0], ddp.load_expert_tensors(got)[0]
        assert reference.keys() == tensors.keys()
        for key in reference:
            assert torch.allclose(tensors[key], reference[key], rtol=1e-4, atol=1e-5), key
        assert got.metrics["dev"] == pytest.approx(expected.metrics["dev"], abs=1e-6)
        assert got.metrics["test"] == pytest.approx(expected.metrics["test"], abs=1e-6)
        losses = [loss for _, loss in got.extra["loss_history"]]
        assert losses == pytest.approx([loss for _, loss in expected.extra["loss_history"]], abs=1e-4)
    assert ddp.get_expert("cb-pemt").extra["gate_weights"]["mean"] == pytest.approx(
        single.get_expert("cb-pemt").extra["gate_weights"]["mean"], abs=1e-4
    )


def test_only_the_main_process_writes_and_cost_covers_both(registries):
    single, ddp = (open_registry(registries[kind]) for kind in ("single", "ddp"))
    experts = ddp.list_experts()
    assert sorted(e.name for e in experts) == ["cb-pemt", "rte-source"]
    runs = [pair[1] for pair in ddp.list_expert_runs()]
    assert len(runs) == 2 and all(run.status == "finished" for run in runs)
    with ddp.engine.connect() as connection:
        assert connection.exec_driver_sql("SELECT count(*) FROM runs").scalar() == 2
    for name in ("rte-source", "cb-pemt"):
        one = single.get_run(single.get_expert(name).run_id).cost
        two = ddp.get_run(ddp.get_expert(name).run_id).cost
        assert (one["processes"] if "processes" in one else 1, two["processes"]) == (1, 2)
        assert (one["device_count"], two["device_count"]) == (1, 2)
        assert two["examples"] == one["examples"] and two["tokens"] == one["tokens"]  # the global batches, split
        assert two["device_seconds"] > 0 and two["train_flops"] == pytest.approx(one["train_flops"], rel=0.1)
