"""SIGKILL a real `transferkit train-source` process mid-run, twice, resume it, and compare with an uninterrupted run.

Tiny random BERT (fast) on the real RTE files. The kill comes as soon as a new checkpoint exists
(polled, not slept for), so each resume really starts from a checkpoint of a process that died.
The killed runs are real processes; the uninterrupted reference and the final resume run the same CLI
`main()` in this process on one thread (as test_signals.py does), which gives the same CPU results
without a new interpreter importing torch for each.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from cli_helpers import EXECUTABLE
from signal_helpers import cli_in_process

from transferkit.registry import open_registry

STEPS, EVERY = 240, 20
# One thread: a tiny model gains nothing from more, and on a busy 2-core machine thread oversubscription
# makes every step tens of times slower.
ENV = {"OMP_NUM_THREADS": "1"}
KILL_AFTER = (40, 140)  # kill once a checkpoint at or past this step exists


def _args(registry: str, data: Path, model: Path, name: str) -> list[str]:
    return [
        "--registry", registry, "--data-dir", str(data), "train-source", "glue/rte", "--method", "lora", "-O", "dropout=0.1",
        "--model", str(model), "--max-steps", str(STEPS), "--batch-size", "8", "--eval-every", "80", "--max-length", "64",
        "--checkpoint-every", str(EVERY), "--seed", "5", "--name", name, "--quiet", "--json",
    ]


def _kill_at_checkpoint(process: subprocess.Popen, folder: Path, min_step: int) -> int:
    """SIGKILL `process` as soon as a checkpoint at `min_step` or later exists; returns that checkpoint's step."""
    deadline = time.monotonic() + 600  # a safety net against a hung process, not a timing assertion
    while time.monotonic() < deadline:
        steps = [int(path.name.removeprefix("step-")) for path in folder.glob("*/step-*")]
        if steps and max(steps) >= min_step:
            process.send_signal(signal.SIGKILL)
            process.wait()
            return max(steps)
        if process.poll() is not None:
            pytest.fail(f"training ended (exit {process.returncode}) before reaching step {min_step}: {process.stderr.read()}")
        time.sleep(0.01)
    process.kill()
    pytest.fail("no checkpoint appeared")


def test_sigkilled_training_resumes_to_the_uninterrupted_result(tmp_path, tiny_model_dir, shared_data):
    registry = f"sqlite:///{tmp_path}/reg.db"
    checkpoints = tmp_path / "reg-checkpoints"
    reference = cli_in_process(_args(registry, shared_data, tiny_model_dir, "reference"), tmp_path)
    assert reference.returncode == 0, reference.stderr

    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **ENV}
    killed_at = []
    for attempt, min_step in enumerate(KILL_AFTER):
        extra = ["--resume"] if attempt else []
        process = subprocess.Popen([EXECUTABLE, *_args(registry, shared_data, tiny_model_dir, "victim"), *extra],
                                   cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        killed_at.append(_kill_at_checkpoint(process, checkpoints, min_step))
        assert process.returncode == -signal.SIGKILL
        store = open_registry(registry)
        runs = [r for r in store.list_runs(kind="train-source") if r.hyperparams["requested_name"] == "victim"]
        assert [(r.status, r.pid) for r in runs] == [("running", process.pid)]  # one run, left running by the dead process
        assert [e.name for e in store.list_experts()] == ["reference"]  # nothing half-stored
        store.close()
    assert killed_at[0] >= KILL_AFTER[0] and killed_at[1] > killed_at[0]

    resumed = cli_in_process([*_args(registry, shared_data, tiny_model_dir, "victim"), "--resume"], tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["expert"]["name"] == "victim"

    store = open_registry(registry)
    original, victim = store.get_expert("reference"), store.get_expert("victim")
    expected, actual = store.load_expert_tensors(original)[0], store.load_expert_tensors(victim)[0]
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)  # bitwise identical on CPU
    assert victim.extra["loss_history"] == original.extra["loss_history"]
    assert victim.metrics == original.metrics
    run = store.get_run(victim.run_id)
    assert run.status == "finished" and run.cost["segments"] == 3 and run.cost["steps"] == STEPS
    assert len(store.list_runs(kind="train-source")) == 2  # the reference and the one resumed run
    assert not (checkpoints / run.id).exists()  # removed once the expert was stored
    store.close()
