"""Is a `running` run still being worked on, or did its process die without closing it?

A run records the host and pid of the process that runs it and a heartbeat (refreshed with every
training checkpoint). A run is abandoned when its process is known to be gone (same host, and the
pid no longer exists, is a zombie, or now belongs to a process started after the run's last sign
of life) or, when that cannot be checked (another host, no pid recorded), when it has been silent
for longer than `max_silence`.
"""

from __future__ import annotations

import os
import socket
from datetime import datetime, timedelta, timezone

import psutil

from transferkit.registry.entities import RunRecord

# A running run silent for longer than this (no heartbeat) counts as abandoned when its process cannot be checked.
DEFAULT_MAX_SILENCE = timedelta(hours=24)
# A process created this much after the run's last sign of life is a different process reusing the pid.
_CLOCK_SLACK = timedelta(seconds=2)


def current_process() -> tuple[str, int]:
    """(host name, pid) of this process, as recorded on the runs it starts."""
    return socket.gethostname(), os.getpid()


def last_sign_of_life(run: RunRecord) -> datetime:
    return run.heartbeat_at or run.started_at


def abandonment(run: RunRecord, max_silence: timedelta, now: datetime | None = None) -> str | None:
    """Why a `running` run is abandoned, or None if it may still be alive (or is not running)."""
    if run.status != "running":
        return None
    now = now or datetime.now(timezone.utc)
    seen = last_sign_of_life(run)
    if run.pid is not None and run.host == current_process()[0]:
        if not _process_alive(run.pid, seen):
            return f"its process {run.pid} on {run.host} is gone"
        return None
    silence = now - seen
    if silence > max_silence:
        where = f"on {run.host}" if run.host else "on an unrecorded host"
        return f"no heartbeat {where} for {describe_duration(silence)}"
    return None


def _process_alive(pid: int, seen: datetime) -> bool:
    try:
        process = psutil.Process(pid)
        if process.status() == psutil.STATUS_ZOMBIE:
            return False
        created = datetime.fromtimestamp(process.create_time(), timezone.utc)
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return False
    except psutil.AccessDenied:  # someone else's process holds the pid: it exists, assume it is the run
        return True
    return created <= seen + _CLOCK_SLACK


def describe_duration(delta: timedelta) -> str:
    """A short human reading of a duration: `25 min`, `3.5 h`."""
    hours = delta.total_seconds() / 3600
    return f"{hours:.1f} h" if hours >= 1 else f"{delta.total_seconds() / 60:.0f} min"
