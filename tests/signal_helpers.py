"""Starting real `transferkit` processes paused at a chosen optimizer step, and stopping them with a signal."""

from __future__ import annotations

import contextlib
import io
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

JOB = Path(__file__).with_name("signal_job.py")
STOP_DEADLINE = 10.0  # seconds from the signal to the process's exit that the issue allows


def job_env(folder: Path, **extra: str) -> dict[str, str]:
    """The environment of a job: offline, one thread, caches under `folder` (module fixtures run outside conftest's)."""
    return {
        **os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
        "TRANSFERKIT_CACHE_DIR": str(folder / "token-cache"), "XDG_DATA_HOME": str(folder / "data"), **extra,
    }


def pause_hooks(folder: Path, step: int, **hooks: str) -> dict[str, str]:
    """signal_job.py settings that pause after `step`, with a marker file of their own."""
    return {"TK_TEST_PAUSE_AT": str(step), "TK_TEST_MARKER": str(folder / f"paused-{uuid.uuid4().hex[:8]}"), **hooks}


def launch(args: list[str], folder: Path, hooks: dict[str, str] | None = None) -> subprocess.Popen:
    """`transferkit <args>` through signal_job.py as a new process, with the given test hooks."""
    process = subprocess.Popen([sys.executable, str(JOB), *args], cwd=folder, env=job_env(folder, **(hooks or {})),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    process.hooks = hooks or {}  # type: ignore[attr-defined]
    return process


def wait_until_paused(process: subprocess.Popen, hooks: dict[str, str] | None = None, rank: int = 0) -> int:
    """Block until the process (or rank `rank` of it) is paused as `hooks` say; returns the pid that paused."""
    hooks = hooks if hooks is not None else process.hooks  # type: ignore[attr-defined]
    marker, step = Path(hooks["TK_TEST_MARKER"] + f".{rank}"), hooks["TK_TEST_PAUSE_AT"]
    deadline = time.monotonic() + 600  # a safety net against a hung process, not a timing assertion
    while time.monotonic() < deadline:
        if marker.exists() and marker.read_text():
            return int(marker.read_text())
        if process.poll() is not None:
            pytest.fail(f"the job ended (exit {process.returncode}) before step {step}: {process.stderr.read()[-3000:]}")
        time.sleep(0.01)
    process.kill()
    pytest.fail(f"the job never reached step {step}")


@dataclass
class Stopped:
    code: int
    seconds: float  # from the signal to the exit
    stdout: str
    lines: list[str]  # non-empty stderr lines


def stop(process: subprocess.Popen, number: int, pid: int | None = None) -> Stopped:
    """Send signal `number` (to `pid`, default the process) and wait for the process to exit."""
    sent = time.monotonic()
    os.kill(pid or process.pid, number)
    try:
        stdout, stderr = process.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        process.kill()
        pytest.fail(f"the job did not exit after {signal.Signals(number).name}")
    return Stopped(process.returncode, time.monotonic() - sent, stdout, [line for line in stderr.splitlines() if line.strip()])


def finish(process: subprocess.Popen) -> subprocess.CompletedProcess:
    stdout, stderr = process.communicate(timeout=600)
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)


def cli_in_process(args: list[str], folder: Path, **env: str) -> subprocess.CompletedProcess:
    """`transferkit <args>` run by this process (the same `main()`), on one thread like the jobs.

    Used for the uninterrupted references and the final resumes, where a new process would only add seconds of
    imports: the interrupted runs are real processes, and one thread makes CPU results the same in both.
    """
    from transferkit.cli.app import main

    stdout, stderr = io.StringIO(), io.StringIO()
    threads, argv = torch.get_num_threads(), sys.argv
    code: int | str | None = 0
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        for key, value in job_env(folder, **env).items():
            if key.startswith(("TRANSFERKIT_", "XDG_", "HF_")):
                patch.setenv(key, value)
        torch.set_num_threads(1)
        sys.argv = ["transferkit", *args]
        try:
            main()
        except SystemExit as exit_:
            code = exit_.code
        finally:
            sys.argv = argv
            torch.set_num_threads(threads)
    return subprocess.CompletedProcess(["transferkit", *args], code, stdout.getvalue(), stderr.getvalue())
