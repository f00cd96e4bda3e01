"""A stop signal under a 2-process torchrun (DDP, gloo, CPU): every rank stops at the same step, only the main
process writes, each exits 143, and `--resume` under torchrun ends bit-identical to an uninterrupted torchrun run.

The signal goes to rank 1 only, mid-step: rank 0 never receives one and must still stop at that step (the
ranks all-reduce the stop request after every step), or it would wait in the next step's collectives forever.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch
from signal_helpers import JOB, STOP_DEADLINE, job_env, pause_hooks, wait_until_paused

from transferkit.registry import open_registry
from transferkit.training.checkpoint import list_checkpoints, read_checkpoint

STEP = 5


def _torchrun(args: list[str], folder: Path, hooks: dict[str, str]) -> subprocess.Popen:
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", str(JOB), *args]
    return subprocess.Popen(command, cwd=folder, env=job_env(folder, **hooks), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)


def _exit_codes(prefix: str) -> list[str]:
    return [Path(f"{prefix}.{rank}").read_text() for rank in (0, 1)]


def test_torchrun_ranks_stop_together_and_resume_bitwise(tmp_path, tiny_model_dir, shared_data):
    url = f"sqlite:///{tmp_path}/reg.db"

    def args(name: str) -> list[str]:
        return ["--registry", url, "--data-dir", str(shared_data), "train-source", "glue/rte", "--method", "lora",
                "--model", str(tiny_model_dir), "--max-train-examples", "71", "--max-steps", "12", "--batch-size", "16",
                "--eval-every", "6", "--max-length", "48", "--checkpoint-every", "4", "--seed", "6", "--name", name, "--quiet"]

    def run(commands: list[list[str]], **hooks: str) -> tuple[subprocess.Popen, dict[str, str]]:
        hooks = {"TK_TEST_EXIT": str(tmp_path / f"exit-{uuid.uuid4().hex[:6]}"), **hooks}
        joined = [argument for command in commands for argument in [*command, "::"]][:-1]
        return _torchrun(joined, tmp_path, hooks), hooks

    # One launch: the uninterrupted reference, then the same training paused after STEP in each rank.
    go = tmp_path / "go"
    victim, hooks = run([args("reference"), args("victim")], **pause_hooks(tmp_path, STEP, TK_TEST_GO=str(go)))
    wait_until_paused(victim, hooks, rank=0)
    rank1 = wait_until_paused(victim, hooks, rank=1)
    sent = time.monotonic()
    os.kill(rank1, signal.SIGTERM)
    go.write_text("")  # rank 0 goes on without a signal of its own
    _, stderr = victim.communicate(timeout=120)
    assert time.monotonic() - sent < STOP_DEADLINE
    assert _exit_codes(hooks["TK_TEST_EXIT"]) == ["143", "143"], stderr[-3000:]
    message = f"interrupted at step {STEP} (SIGTERM); checkpoint saved; resume with the same command plus --resume"
    assert stderr.count(message) == 2  # each rank's one line
    # Neither rank printed a traceback; what follows is torchrun's own report of workers that exited non-zero.
    assert "Traceback" not in stderr[: stderr.index("exitcode: 143")]

    store = open_registry(url)
    [run_record] = [r for r in store.list_runs() if r.hyperparams["requested_name"] == "victim"]
    assert (run_record.status, run_record.error) == ("interrupted", message)
    folder = store.checkpoint_root / run_record.id
    assert [c.step for c in list_checkpoints(folder)] == [STEP]  # one writer: exactly one complete checkpoint
    assert read_checkpoint(list_checkpoints(folder)[0].path)[1]["loop"]["step"] == STEP
    assert not list(folder.glob(".*"))
    store.close()

    resumed, hooks = run([[*args("victim"), "--resume"]])
    _, stderr = resumed.communicate(timeout=900)
    assert _exit_codes(hooks["TK_TEST_EXIT"]) == ["0", "0"], stderr[-3000:]
    store = open_registry(url)
    original, victim_expert = store.get_expert("reference"), store.get_expert("victim")
    expected, actual = store.load_expert_tensors(original)[0], store.load_expert_tensors(victim_expert)[0]
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    assert victim_expert.extra["loss_history"] == original.extra["loss_history"]
    assert victim_expert.metrics == original.metrics
    run_record = store.get_run(victim_expert.run_id)
    assert run_record.status == "finished" and run_record.cost["segments"] == 2 and run_record.cost["processes"] == 2
    assert len(store.list_runs()) == 2
    store.close()


@pytest.fixture(autouse=True)
def _no_stray_rendezvous(monkeypatch):
    """torchrun --standalone picks a free port itself; a MASTER_PORT from the environment would pin it."""
    for name in ("MASTER_ADDR", "MASTER_PORT", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
