"""Running the installed `transferkit` console script in a subprocess, as a user would, or its `main()` in this process."""

from __future__ import annotations

import contextlib
import io
import os
import subprocess
import sys
from pathlib import Path

EXECUTABLE = str(Path(sys.executable).parent / "transferkit")


def run_cli(*args: str, cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env_extra or {})}
    return subprocess.run([EXECUTABLE, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


def run_cli_in_process(*args: str, cwd: Path, env_extra: dict | None = None, stdin: str | None = None) -> subprocess.CompletedProcess:
    """The console script's own `main()` run in this process, with `run_cli`'s arguments, environment and working folder.

    The same code as the installed script minus the seconds a new interpreter spends importing torch and
    transformers, for tests that check a command's output rather than how the process starts; `stdin`, when given,
    is what the command reads on standard input. Returns what `run_cli` returns.
    """
    import pytest

    from transferkit.cli.app import main

    stdout, stderr = io.StringIO(), io.StringIO()
    code: int | str | None = 0
    env = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", **(env_extra or {})}
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        patch.chdir(cwd)
        for key, value in env.items():
            patch.setenv(key, value)
        patch.setattr(sys, "argv", ["transferkit", *args])
        if stdin is not None:
            patch.setattr(sys, "stdin", io.StringIO(stdin))
        try:
            main()
        except SystemExit as exit_:
            code = exit_.code
    if code is None:
        code = 0
    elif not isinstance(code, int):  # as the interpreter does with `sys.exit("message")`
        stderr.write(f"{code}\n")
        code = 1
    return subprocess.CompletedProcess(["transferkit", *args], code, stdout.getvalue(), stderr.getvalue())


def assert_one_line_error(result: subprocess.CompletedProcess, *fragments: str) -> None:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
