"""Runs the unchanged `transferkit` CLI in this process, with test hooks set by environment variables.

Signal tests need the process to be at a known optimizer step when the signal comes. With
TK_TEST_PAUSE_AT=<step>, right after that optimizer step this process writes its pid to
`<TK_TEST_MARKER>.<rank>` and waits until it has received a stop signal (the test sends one from
outside) or the file TK_TEST_GO exists, then carries on; the signal handling under test is
transferkit's own. TK_TEST_LOCK_SECONDS shortens the registry's lock wait, and
`<TK_TEST_EXIT>.<rank>` receives the exit code (torchrun does not report its workers' codes).
Several commands separated by `::` run one after the other in the same process(es), the pause
applying to the last: a torchrun test trains its uninterrupted reference and its victim in one launch.
Usage: python signal_job.py <transferkit arguments...> [:: <transferkit arguments...>]...
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import transferkit.registry.engines as engines
from transferkit.cli.app import main
from transferkit.training import interrupt
from transferkit.training.cost import CostMeter

RANK = os.environ.get("RANK", "0")


def _stop_requested() -> bool:
    return interrupt._active is not None and interrupt._active.signal_number is not None


def _pause_after(step: int) -> None:
    original = CostMeter.add_batch
    marker, go = Path(os.environ["TK_TEST_MARKER"] + f".{RANK}"), os.environ.get("TK_TEST_GO")

    def add_batch(self: CostMeter, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        if self.steps != step:
            return
        marker.write_text(str(os.getpid()))
        deadline = time.monotonic() + 300  # a safety net against a test that never signals, not a timing
        while not (_stop_requested() or (go and os.path.exists(go))) and time.monotonic() < deadline:
            time.sleep(0.005)

    CostMeter.add_batch = add_batch  # type: ignore[method-assign]


def _commands(arguments: list[str]) -> list[list[str]]:
    commands: list[list[str]] = [[]]
    for argument in arguments:
        if argument == "::":
            commands.append([])
        else:
            commands[-1].append(argument)
    return commands


if __name__ == "__main__":
    if "TK_TEST_LOCK_SECONDS" in os.environ:
        seconds = float(os.environ["TK_TEST_LOCK_SECONDS"])
        engines.SQLITE_BUSY_TIMEOUT_MS, engines.WRITE_RETRY_SECONDS = int(seconds * 500), seconds / 2
    commands = _commands(sys.argv[1:])
    code = "an exception escaped main()"
    try:
        for index, command in enumerate(commands):
            last = index == len(commands) - 1
            if last and "TK_TEST_PAUSE_AT" in os.environ:
                _pause_after(int(os.environ["TK_TEST_PAUSE_AT"]))
            sys.argv = ["transferkit", *command]
            try:
                main()
            except SystemExit as exit_:
                code = str(exit_.code)
                if last or exit_.code:
                    raise
    finally:
        if "TK_TEST_EXIT" in os.environ:
            Path(os.environ["TK_TEST_EXIT"] + f".{RANK}").write_text(code)
