"""Stopping a training job cleanly on SIGTERM, SIGINT (Ctrl-C) and SIGUSR1.

Batch schedulers (Slurm, Kubernetes) and spot/preemptible machines end a job with SIGTERM and a short
grace period (Slurm can be asked for SIGUSR1 ahead of its time limit); people press Ctrl-C. While a
job trains, `stop_requests()` replaces what these signals do with a handler that only records the
request. The training loop looks at it after each optimizer step, writes a checkpoint through its
`Checkpointer` and raises `TrainingInterrupted`; the workflow records the run as `interrupted` and the
CLI prints one line and exits with 128 + the signal number (143, 130, 138).

A second signal means "now": the handler raises `ImmediateStop` (a BaseException, so no
`except Exception` swallows it and click does not turn it into a silent exit 130) wherever the
program is. Every file transferkit writes is written beside its final name and renamed into place,
and every registry change is one transaction, so stopping anywhere corrupts nothing and the previous
checkpoint stays the one to resume from. A copy of the first signal within `DUPLICATE_WINDOW` seconds
is not a second request: launchers forward the terminal's Ctrl-C to workers that got it already
(torchrun), and Slurm signals every process of a step while torchrun forwards it too. After the second
request the previous handlers are back, so a third signal takes the default action even if Python is
stuck in a long native call.

Under torchrun the processes meet in collective operations every step, so they must all stop at the
same one: `StopRequest.agreed` all-reduces the signal number (max) after each step, and a signal seen
by any process stops every process there; only the main process writes the checkpoint.
"""

from __future__ import annotations

import shlex
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from transferkit.errors import TrainingInterrupted

# SIGUSR1 does not exist on Windows.
HANDLED_SIGNALS = tuple(getattr(signal, name) for name in ("SIGTERM", "SIGINT", "SIGUSR1") if hasattr(signal, name))
DUPLICATE_WINDOW = 1.0  # seconds: a repeat of the first signal this soon is a launcher forwarding it, not the user


class ImmediateStop(BaseException):
    """A second stop signal: leave at once (like KeyboardInterrupt, no `except Exception` catches it)."""

    def __init__(self, signal_number: int) -> None:
        super().__init__(f"stopped at once on a second {signal_name(signal_number)}")
        self.signal_number = signal_number
        self.exit_code = 128 + signal_number


@dataclass
class StopRequest:
    """The first stop signal this process received while a job ran (None: keep going)."""

    signal_number: int | None = None
    received_at: float | None = None  # time.monotonic() of the first signal

    def agreed(self, world_size: int = 1, device: Any = None) -> int | None:
        """The signal to stop on, the same in every process of a multi-process job (collective: all must call it)."""
        if world_size <= 1:
            return self.signal_number
        import torch
        import torch.distributed as dist

        flag = torch.tensor([self.signal_number or 0], dtype=torch.int64, device=device)
        dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return int(flag.item()) or None


_active: StopRequest | None = None


@contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """Record SIGTERM / SIGINT / SIGUSR1 instead of dying for the duration of the block; restore the handlers after.

    Nested blocks (a `compare` grid around its cells' trainings) share the outermost request. Outside the
    main thread Python cannot install signal handlers: the request then never fires and the defaults stay.
    """
    global _active
    if _active is not None:
        yield _active
        return
    request = StopRequest()
    if threading.current_thread() is not threading.main_thread():
        yield request
        return
    previous: dict[int, Any] = {}

    def restore() -> None:
        for number, handler in previous.items():
            # None: the handler was not installed from Python and cannot be put back; the default is the closest.
            signal.signal(number, signal.SIG_DFL if handler is None else handler)

    def handle(number: int, _frame: object) -> None:
        now = time.monotonic()
        if request.signal_number is None:
            request.signal_number, request.received_at = number, now
        elif now - (request.received_at or now) >= DUPLICATE_WINDOW:
            restore()
            raise ImmediateStop(number)

    for number in HANDLED_SIGNALS:
        previous[number] = signal.signal(number, handle)
    _active = request
    try:
        yield request
    finally:
        _active = None
        restore()


def signal_name(number: int) -> str:
    try:
        return signal.Signals(number).name
    except ValueError:
        return f"signal {number}"


def stopped_at(signal_number: int, step: int, checkpoint_step: int | None) -> TrainingInterrupted:
    """The interruption of a loop that stopped after optimizer step `step` (its checkpoint at `checkpoint_step`)."""
    saved = "checkpoint saved" if checkpoint_step == step else (
        f"its checkpoint at step {checkpoint_step} is kept" if checkpoint_step is not None else "no checkpoint was written"
    )
    return TrainingInterrupted(f"interrupted at step {step} ({signal_name(signal_number)}); {saved}", signal_number)


def how_to_resume(command: list[str], spell_out: bool = False) -> str:
    """What continues a run recorded with `command` (a CLI command line, a `compare` cell, or a Python job).

    `spell_out`: include the command line itself (listings, where the user no longer has it at hand).
    """
    if len(command) >= 2 and command[0] == "transferkit" and command[1] == "compare":
        return "run the same `transferkit compare` command again to continue"
    if command and command[0] == "transferkit":
        if not spell_out:
            return "resume with the same command plus --resume"
        return "resume with: " + shlex.join(command if "--resume" in command else [*command, "--resume"])
    return "run the same job again with resume=True to continue it"
