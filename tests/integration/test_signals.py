"""SIGTERM, SIGINT and SIGUSR1 sent to real `train-source` and `transfer` processes at random optimizer steps.

Each stop must take under 10 s, exit with 128 + the signal, print one line saying how to resume, leave
the run `interrupted` with a checkpoint at exactly that step and nothing half-stored; `--resume` then
ends bit-identical to an uninterrupted run (tiny random BERT, real RTE files, CPU). The steps and
signals are drawn by hypothesis. A Ctrl-C typed into a real pseudo-terminal and a registry locked past its
timeout when the expert is stored complete the set (a second signal, which must stop at once, is tested in
test_signals_in_process.py).

The interrupted runs are real processes (signal_job.py: the CLI with a pause after a chosen step, so
the signal arrives at a known step). The uninterrupted references and the final resumes run the same
CLI `main()` in this process on one thread, which gives the same CPU results without seconds of imports.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import pty
import signal
import sqlite3
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from signal_helpers import (
    JOB,
    STOP_DEADLINE,
    cli_in_process,
    finish,
    job_env,
    launch,
    pause_hooks,
    stop,
    wait_until_paused,
)

from transferkit.registry import open_registry
from transferkit.training.checkpoint import list_checkpoints, read_checkpoint

STEPS, EVERY = 30, 8  # periodic checkpoints at 8, 16, 24: a stop lands on one of them or between them
SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1)
# Each example starts a real process (seconds of imports), so CI tries a few; raise it to explore more steps.
EXAMPLES = int(os.environ.get("TRANSFERKIT_SIGNAL_EXAMPLES", "2"))
EXPLORE = settings(max_examples=EXAMPLES, deadline=None, phases=[Phase.generate], suppress_health_check=list(HealthCheck))


@dataclasses.dataclass
class Registry:
    folder: Path
    url: str
    source_args: Callable[[str], list[str]]
    transfer_args: Callable[[str], list[str]]

    def open(self):
        return open_registry(self.url)


@pytest.fixture(scope="module")
def registry(tmp_path_factory, tiny_model_dir, shared_data) -> Registry:
    """One registry for the module: the uninterrupted references and every interrupted chain (each its own --name)."""
    folder = tmp_path_factory.mktemp("signals")
    url = f"sqlite:///{folder}/reg.db"

    def source_args(name: str) -> list[str]:
        return ["--registry", url, "--data-dir", str(shared_data), "train-source", "glue/rte", "--method", "lora",
                "-O", "dropout=0.1", "--model", str(tiny_model_dir), "--max-steps", str(STEPS), "--batch-size", "8",
                "--max-train-examples", "96", "--eval-every", "10", "--max-length", "48", "--checkpoint-every", str(EVERY),
                "--seed", "3", "--name", name, "--quiet", "--json"]

    def transfer_args(name: str) -> list[str]:
        return ["--registry", url, "--data-dir", str(shared_data), "transfer", "--target", "glue/rte", "--strategy", "pemt",
                "--sources", "src-mrpc,src-qnli", "--model", str(tiny_model_dir), "--max-steps", "20", "--batch-size", "8",
                "--max-train-examples", "64", "--eval-every", "10", "--max-length", "48", "--checkpoint-every", "6",
                "--seed", "4", "--name", name, "--quiet", "--json"]

    done = cli_in_process(source_args("source-reference"), folder)
    assert done.returncode == 0, done.stderr
    return Registry(folder, url, source_args, transfer_args)


def _expect_interrupted(registry: Registry, name: str, stopped, number: int, step: int) -> str:
    """The stop was quick and clean; returns the run id."""
    message = f"interrupted at step {step} ({signal.Signals(number).name}); checkpoint saved; resume with the same command plus --resume"
    assert stopped.code == 128 + number, stopped.lines
    assert stopped.seconds < STOP_DEADLINE
    assert stopped.lines == [message]  # one line, no traceback
    store = registry.open()
    [run] = [r for r in store.list_runs() if r.hyperparams.get("requested_name") == name]
    assert (run.status, run.error) == ("interrupted", message)
    folder = store.checkpoint_root / run.id
    assert [c.step for c in list_checkpoints(folder)] == [step]
    assert read_checkpoint(list_checkpoints(folder)[0].path)[1]["loop"]["step"] == step  # complete and verified
    assert not list(folder.glob(".*"))  # no temporary folder
    assert name not in [e.name for e in store.list_experts()]
    store.close()
    return run.id


def _expect_identical(registry: Registry, name: str, reference: str, segments: int) -> None:
    store = registry.open()
    original, resumed = store.get_expert(reference), store.get_expert(name)
    expected, actual = store.load_expert_tensors(original)[0], store.load_expert_tensors(resumed)[0]
    assert expected.keys() == actual.keys()
    assert all(torch.equal(expected[k], actual[k]) for k in expected)  # bitwise, on CPU
    assert resumed.extra["loss_history"] == original.extra["loss_history"] and resumed.metrics == original.metrics
    run = store.get_run(resumed.run_id)
    assert run.status == "finished" and run.cost["segments"] == segments
    assert not (store.checkpoint_root / run.id).exists()
    store.close()


@EXPLORE
@given(step=st.integers(1, STEPS - 1), number=st.sampled_from(SIGNALS))
def test_train_source_stops_on_a_signal_at_a_random_step_and_resumes_bitwise(registry, step, number):
    name = f"victim-{uuid.uuid4().hex[:6]}"
    process = launch(registry.source_args(name), registry.folder, pause_hooks(registry.folder, step))
    wait_until_paused(process)
    _expect_interrupted(registry, name, stop(process, number), number, step)
    resumed = cli_in_process([*registry.source_args(name), "--resume"], registry.folder)
    assert resumed.returncode == 0, resumed.stderr
    _expect_identical(registry, name, "source-reference", segments=2)


@pytest.fixture(scope="module")
def transfer_reference(registry, tiny_model_dir, shared_data) -> str:
    """Two tiny sources and an uninterrupted PEMT transfer from them."""
    for task, name in (("glue/mrpc", "src-mrpc"), ("glue/qnli", "src-qnli")):
        done = cli_in_process(["--registry", registry.url, "--data-dir", str(shared_data), "train-source", task, "--model",
                               str(tiny_model_dir), "--name", name, "--max-train-examples", "32", "--max-steps", "2",
                               "--batch-size", "8", "--max-length", "48", "--quiet"], registry.folder)
        assert done.returncode == 0, done.stderr
    done = cli_in_process(registry.transfer_args("transfer-reference"), registry.folder)
    assert done.returncode == 0, done.stderr
    return "transfer-reference"


@settings(EXPLORE, max_examples=max(1, EXAMPLES // 2))  # a transfer process also embeds the target's data: slower
@given(step=st.integers(1, 19), number=st.sampled_from(SIGNALS))
def test_transfer_stops_on_a_signal_at_a_random_step_and_resumes_bitwise(registry, transfer_reference, step, number):
    name = f"pemt-{uuid.uuid4().hex[:6]}"
    process = launch(registry.transfer_args(name), registry.folder, pause_hooks(registry.folder, step))
    wait_until_paused(process)
    _expect_interrupted(registry, name, stop(process, number), number, step)
    resumed = cli_in_process([*registry.transfer_args(name), "--resume"], registry.folder)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["expert"]["name"] == name
    _expect_identical(registry, name, transfer_reference, segments=2)
    store = registry.open()
    assert store.get_expert(name).extra["gate_weights"] == store.get_expert(transfer_reference).extra["gate_weights"]
    store.close()


def _in_terminal(args: list[str], folder: Path, **hooks: str) -> tuple[int, int]:
    """Start the job with a new pseudo-terminal as its controlling terminal; returns (pid, terminal fd)."""
    pid, terminal = pty.fork()
    if pid == 0:  # the child: its stdin/stdout/stderr are the terminal, and Ctrl-C there sends it SIGINT
        os.execve(sys.executable, [sys.executable, str(JOB), *args], job_env(folder, **hooks))
    return pid, terminal


def _type_ctrl_c(pid: int, terminal: int) -> tuple[int, float, str]:
    """Type Ctrl-C into the terminal; returns (exit code, seconds from the key to the exit, terminal output)."""
    os.write(terminal, b"\x03")
    typed = time.monotonic()
    output = b""
    while True:
        try:
            chunk = os.read(terminal, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        output += chunk
    _, status = os.waitpid(pid, 0)
    os.close(terminal)
    return os.waitstatus_to_exitcode(status), time.monotonic() - typed, output.decode(errors="replace")


def _terminal_lines(output: str) -> list[str]:
    """What the terminal shows, without the `^C` it echoes for the Ctrl-C."""
    return [line for line in output.replace("\r", "").replace("^C", "").splitlines() if line.strip()]


def test_ctrl_c_typed_in_a_terminal_stops_cleanly_and_resumes_bitwise(registry):
    name = f"tty-{uuid.uuid4().hex[:6]}"
    folder = registry.folder
    # Ctrl-C typed into the job's terminal at step 11: the terminal driver sends SIGINT; one line; exit 130.
    hooks = pause_hooks(folder, 11)
    pid, terminal = _in_terminal(registry.source_args(name), folder, **hooks)
    wait_until_paused(_Child(pid), hooks)
    code, seconds, output = _type_ctrl_c(pid, terminal)
    message = "interrupted at step 11 (SIGINT); checkpoint saved; resume with the same command plus --resume"
    assert (code, _terminal_lines(output)) == (130, [message])
    assert seconds < STOP_DEADLINE
    store = registry.open()
    [run] = [r for r in store.list_runs() if r.hyperparams.get("requested_name") == name]
    assert run.status == "interrupted" and run.error == message
    assert [c.step for c in list_checkpoints(store.checkpoint_root / run.id)] == [11]
    store.close()
    resumed = cli_in_process([*registry.source_args(name), "--resume"], folder)
    assert resumed.returncode == 0, resumed.stderr
    _expect_identical(registry, name, "source-reference", segments=2)


class _Child:
    """What wait_until_paused needs of a process started with pty.fork (its output is on the terminal)."""

    def __init__(self, pid: int) -> None:
        self.pid, self.returncode = pid, None
        self.stderr = io.StringIO("(its output went to the terminal)")

    def poll(self) -> int | None:
        if self.returncode is None:
            done, status = os.waitpid(self.pid, os.WNOHANG)
            self.returncode = os.waitstatus_to_exitcode(status) if done else None
        return self.returncode


def test_registry_locked_when_the_expert_is_stored_is_one_line_and_resumable(registry):
    name = f"locked-{uuid.uuid4().hex[:6]}"
    go = registry.folder / f"go-{name}"
    hooks = pause_hooks(registry.folder, 25, TK_TEST_GO=str(go), TK_TEST_LOCK_SECONDS="1")
    process = launch(registry.source_args(name), registry.folder, hooks)
    wait_until_paused(process)  # past the last periodic checkpoint (24): no heartbeat writes later
    holder = sqlite3.connect(registry.folder / "reg.db", isolation_level=None)
    holder.execute("BEGIN IMMEDIATE")  # another writer holds the registry past the (shortened) timeout
    try:
        go.write_text("")
        done = finish(process)
    finally:
        holder.rollback()
        holder.close()
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert done.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: the registry"), done.stderr
    assert "stayed locked by another writer" in lines[0] and "could not be marked failed" in lines[0]
    store = registry.open()
    [run] = [r for r in store.list_runs() if r.hyperparams.get("requested_name") == name]
    assert run.status == "running" and name not in [e.name for e in store.list_experts()]  # nothing stored
    assert [c.step for c in list_checkpoints(store.checkpoint_root / run.id)] == [24]
    store.close()
    resumed = cli_in_process([*registry.source_args(name), "--resume"], registry.folder)  # its process is gone
    assert resumed.returncode == 0, resumed.stderr
    _expect_identical(registry, name, "source-reference", segments=2)
