"""Cost meter: what a run consumed, measured, never estimated.

- wall seconds, and device-seconds: CPU core-seconds of this process on CPU
  (user + system time, so 2 busy cores for 10 s = 20), GPU-seconds on CUDA
  (wall seconds x devices used; GPU busy time is not observable portably).
- peak memory: CUDA peak allocated/reserved bytes, or the process peak RSS on CPU
  since the run started (Linux resets the mark per run; elsewhere it is the process's lifetime peak).
- energy: NVML's total-energy counter on NVIDIA GPUs (difference over the run),
  or, where that counter is unsupported, NVML power samples from a background
  thread integrated with the trapezoid rule (`energy_method` says which); Linux
  RAPL on CPUs whose counter is readable; otherwise null, with the reason recorded.
- FLOPs: the training loop counts one step's forward + backward with torch's
  FlopCounterMode; `train_flops` = those FLOPs per padded token x the padded tokens
  of every training step. Batches are dynamically padded, so per padded token is
  the honest way to extrapolate "by steps". Evaluation FLOPs are not counted.
  `flop_counter()` also counts the dense factorisations torch's counter skips
  (QR, SVD, linear solves) with the textbook LAPACK operation counts.
- multi-process runs: `merge_costs` sums devices, energy, FLOPs and work.
- resumed runs: a checkpoint carries the cost measured up to it (`snapshot`), and the
  resuming process adds its own (`resume_from`): wall, device-seconds, energy and work
  are summed over the segments, peak memory is the largest. Work done after the last
  checkpoint by a process that was killed is lost and not counted.
"""

from __future__ import annotations

import math
import platform
import resource
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

_RAPL_ROOT = Path("/sys/class/powercap")


def _batch_and_matrix(shape: tuple[int, ...]) -> tuple[int, int, int]:
    return math.prod(shape[:-2]), shape[-2], shape[-1]


def _qr_flops(a_shape: tuple[int, ...], mode: str = "reduced", *args, **kwargs) -> int:
    # Householder QR of m x n: 2mn^2 - 2n^3/3 for R (n = min side), the same again to form Q (Golub & Van Loan 5.2).
    batch, m, n = _batch_and_matrix(a_shape)
    m, n = max(m, n), min(m, n)
    r_only = 2 * m * n * n - 2 * n**3 // 3
    return batch * (r_only if mode == "r" else 2 * r_only)


def _svd_flops(a_shape: tuple[int, ...], *args, out_shape=None, **kwargs) -> int:
    # R-SVD of m x n (m >= n): 2mn^2 + 2n^3 for the singular values, 6mn^2 + 20n^3 with thin U and V (Golub & Van Loan 8.6).
    batch, m, n = _batch_and_matrix(a_shape)
    m, n = max(m, n), min(m, n)
    with_vectors = out_shape is None or any(size != 0 for size in out_shape[0])
    return batch * (6 * m * n * n + 20 * n**3 if with_vectors else 2 * m * n * n + 2 * n**3)


def _solve_flops(a_shape: tuple[int, ...], b_shape: tuple[int, ...], *args, **kwargs) -> int:
    # LU factorisation 2n^3/3, then two triangular solves per right-hand side (2n^2 each).
    batch, n, _ = _batch_and_matrix(a_shape)
    right_hand_sides = b_shape[-1] if len(b_shape) == len(a_shape) else 1
    return batch * (2 * n**3 // 3 + 2 * n * n * right_hand_sides)


_FACTORISATION_FLOPS = {
    torch.ops.aten.linalg_qr: _qr_flops,
    torch.ops.aten._linalg_svd: _svd_flops,
    torch.ops.aten._linalg_solve_ex: _solve_flops,
}


def flop_counter() -> FlopCounterMode:
    """torch's FLOP counter (matrix products, attention, convolutions) that also counts QR, SVD and linear solves."""
    return FlopCounterMode(display=False, custom_mapping=_FACTORISATION_FLOPS)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _reset_peak_rss() -> bool:
    """Start the process's peak-RSS mark afresh (Linux: writing 5 to clear_refs resets VmHWM).

    Without it the peak of a run in a long-lived process (a compare grid, a test session)
    would be the largest of every earlier run. False where the kernel does not allow it.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_rss_bytes(since_reset: bool) -> int:
    if since_reset:
        try:
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # reported in kB
        except (OSError, ValueError, IndexError):
            pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def _process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class _RaplReader:
    """Package energy counters of Linux RAPL, handling counter wrap-around."""

    def __init__(self) -> None:
        self.zones = [p for p in sorted(_RAPL_ROOT.glob("intel-rapl:[0-9]*")) if ":" in p.name and p.name.count(":") == 1]
        self.reason: str | None = None
        if not self.zones:
            self.reason = "no RAPL energy counter on this machine"
        else:
            try:
                self.start = [int((z / "energy_uj").read_text()) for z in self.zones]
                self.ranges = [int((z / "max_energy_range_uj").read_text()) for z in self.zones]
            except (OSError, ValueError) as error:
                self.reason = f"RAPL counter not readable ({type(error).__name__})"

    def joules_so_far(self) -> float | None:
        return self.joules()

    def joules(self) -> float | None:
        if self.reason:
            return None
        total = 0
        for zone, start, wrap in zip(self.zones, self.start, self.ranges):
            now = int((zone / "energy_uj").read_text())
            total += now - start if now >= start else now + wrap - start
        return total / 1e6


class _PowerSampler:
    """Integrates NVML power samples (milliwatts) with the trapezoid rule, from a background thread."""

    def __init__(self, read_watts: Callable[[], float], clock: Callable[[], float], interval: float) -> None:
        self.read_watts, self.clock, self.interval = read_watts, clock, interval
        self.joules = 0.0
        self._last = (clock(), read_watts())
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def sample(self) -> None:
        now, watts = self.clock(), self.read_watts()
        self.joules += (now - self._last[0]) * (watts + self._last[1]) / 2
        self._last = (now, watts)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True, name="transferkit-power-sampler")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def stop(self) -> float:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()  # close the last interval at the end of the run
        return self.joules


class _NvmlReader:
    """Energy of the CUDA devices in use: NVML's total-energy counter (millijoules), or integrated power samples."""

    def __init__(
        self, device_indices: list[int], clock: Callable[[], float] = time.monotonic, interval: float = 0.1, threaded: bool = True
    ) -> None:
        self.reason: str | None = None
        self.method: str | None = None
        self.samplers: list[_PowerSampler] = []
        try:
            import pynvml  # from nvidia-ml-py

            pynvml.nvmlInit()
            self.nvml = pynvml
            self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in device_indices]
        except Exception as error:  # noqa: BLE001 - NVML absent or broken: energy stays null with the reason
            self.reason = f"NVML unavailable ({type(error).__name__}: {str(error)[:80]})"
            return
        try:
            self.start = [pynvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self.handles]
            self.method = "nvml-total-energy"
        except pynvml.NVMLError_NotSupported:  # pre-Volta GPUs: integrate the power draw instead
            self.method = "nvml-power-samples"
            for handle in self.handles:
                sampler = _PowerSampler(lambda h=handle: pynvml.nvmlDeviceGetPowerUsage(h) / 1e3, clock, interval)
                if threaded:
                    sampler.start()
                self.samplers.append(sampler)
        except Exception as error:  # noqa: BLE001
            self.reason = f"NVML energy counter unavailable ({type(error).__name__}: {str(error)[:80]})"
            self.method = None

    def joules_so_far(self) -> float | None:
        """Energy up to now, without stopping the samplers."""
        if self.reason:
            return None
        if self.samplers:
            return sum(sampler.joules for sampler in self.samplers)
        return self.joules()

    def joules(self) -> float | None:
        if self.reason:
            return None
        if self.samplers:
            return sum(sampler.stop() for sampler in self.samplers)
        now = [self.nvml.nvmlDeviceGetTotalEnergyConsumption(h) for h in self.handles]
        return sum(n - s for n, s in zip(now, self.start)) / 1e3


# What a checkpoint carries into the resuming process: the meter's counters, and the measured totals so far.
_COUNTERS = ("examples", "tokens", "steps", "train_seconds", "padded_tokens", "flops_measured_step", "flops_measured_padded_tokens")
_CARRIED = ("wall_seconds", "device_seconds", "energy_joules", "peak_memory_bytes", "segments")


@dataclass
class CostMeter:
    """Start it before training, call `add_batch` per step, `finish` at the end."""

    device: torch.device
    examples: int = 0
    tokens: int = 0
    steps: int = 0
    train_seconds: float = 0.0
    padded_tokens: int = 0
    flops_measured_step: int | None = None
    flops_measured_padded_tokens: int | None = None
    _start_wall: float = field(default=0.0, repr=False)
    _start_cpu: float = field(default=0.0, repr=False)
    _energy: _RaplReader | _NvmlReader | None = field(default=None, repr=False)
    _peak_reset: bool = field(default=False, repr=False)
    # Measured by the processes that ran this training before it was resumed (see `resume_from`).
    _carried: dict = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        self._start_wall = time.perf_counter()
        self._start_cpu = _process_cpu_seconds()
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self._energy = _NvmlReader([self._cuda_index()])
        else:
            self._peak_reset = _reset_peak_rss()
            self._energy = _RaplReader()

    def _cuda_index(self) -> int:
        return self.device.index if self.device.index is not None else torch.cuda.current_device()

    def record_step_flops(self, flops: int, padded_tokens: int) -> None:
        """FLOPs counted on one training step (forward + backward) over `padded_tokens` padded tokens."""
        self.flops_measured_step = int(flops)
        self.flops_measured_padded_tokens = int(padded_tokens)

    def add_batch(self, examples: int, tokens: int, seconds: float, padded_tokens: int = 0) -> None:
        """Count one optimiser step and the time spent in it (evaluation time excluded)."""
        self.padded_tokens += padded_tokens
        self.examples += examples
        self.tokens += tokens
        self.steps += 1
        self.train_seconds += seconds

    def elapsed(self) -> float:
        return time.perf_counter() - self._start_wall

    def snapshot(self) -> dict:
        """Everything measured so far, this process and earlier segments together (stored in checkpoints)."""
        energy = self._energy.joules_so_far() if self._energy else None
        return {
            **{name: getattr(self, name) for name in _COUNTERS},
            "wall_seconds": self._carried.get("wall_seconds", 0.0) + self.elapsed(),
            "device_seconds": self._carried.get("device_seconds", 0.0) + self._device_seconds(self.elapsed()),
            "energy_joules": self._add_energy(energy),
            "peak_memory_bytes": max(self._carried.get("peak_memory_bytes", 0), self._peak_memory()),
            "segments": self._carried.get("segments", 0) + 1,
        }

    def resume_from(self, snapshot: dict) -> None:
        """Continue counting from a checkpoint's `snapshot`: totals include the earlier segments."""
        for name in _COUNTERS:
            setattr(self, name, snapshot[name])
        self._carried = {key: snapshot[key] for key in _CARRIED}

    def _device_seconds(self, wall: float) -> float:
        return wall if self.device.type == "cuda" else _process_cpu_seconds() - self._start_cpu

    def _peak_memory(self) -> int:
        return int(torch.cuda.max_memory_allocated(self.device)) if self.device.type == "cuda" else _peak_rss_bytes(self._peak_reset)

    def _add_energy(self, joules: float | None) -> float | None:
        """This segment's energy plus the earlier segments'; unknown if any segment's is unknown."""
        if joules is None or (self._carried and self._carried.get("energy_joules") is None):
            return None
        return joules + self._carried.get("energy_joules", 0.0)

    def _energy_note(self) -> str | None:
        if self._energy is not None and self._energy.reason:
            return self._energy.reason
        return "the energy of an earlier segment of this resumed run is unknown" if self._carried else None

    def finish(self) -> dict:
        wall = self.elapsed() + self._carried.get("wall_seconds", 0.0)
        energy = self._add_energy(self._energy.joules() if self._energy else None)
        cost: dict = {
            "wall_seconds": round(wall, 3),
            "device_kind": self.device.type,
            "device_count": 1,
            "examples": self.examples,
            "tokens": self.tokens,
            "steps": self.steps,
            "energy_joules": None if energy is None else round(energy, 3),
            "energy_note": self._energy_note() if energy is None else None,
            "energy_method": getattr(self._energy, "method", "rapl") if energy is not None else None,
        }
        if self.device.type == "cuda":
            cost.update(
                device_name=torch.cuda.get_device_name(self.device),
                device_indices=[self._cuda_index()],
                device_seconds=round(wall, 3),
                device_seconds_kind="gpu-seconds",
                gpu_hours=round(wall / 3600, 6),
                peak_memory_bytes=max(self._carried.get("peak_memory_bytes", 0), self._peak_memory()),
                peak_memory_reserved_bytes=int(torch.cuda.max_memory_reserved(self.device)),
                peak_memory_kind="cuda-allocated",
            )
        else:
            cost.update(
                device_name=cpu_name(),
                device_seconds=round(self._device_seconds(wall) + self._carried.get("device_seconds", 0.0), 3),
                device_seconds_kind="cpu-core-seconds",
                gpu_hours=0.0,
                peak_memory_bytes=max(self._carried.get("peak_memory_bytes", 0), self._peak_memory()),
                # "-lifetime": the kernel did not let the mark be reset, so earlier work in this process counts too.
                peak_memory_kind="process-peak-rss" if self._peak_reset else "process-peak-rss-lifetime",
                cpu_threads=torch.get_num_threads(),
            )
        if self._carried:
            cost["segments"] = self._carried["segments"] + 1  # processes that trained this run (1 + resumes)
        cost["train_seconds"] = round(self.train_seconds, 3)
        cost["train_examples_per_second"] = round(self.examples / self.train_seconds, 3) if self.train_seconds > 0 else None
        cost.update(self._flops())
        return cost

    def _flops(self) -> dict:
        """Measured FLOPs per padded token of the counted step x padded tokens of all training steps."""
        if not self.flops_measured_step or not self.flops_measured_padded_tokens:
            return {"flops_measured_step": self.flops_measured_step, "train_flops": None, "train_flops_per_second": None}
        flops = self.flops_measured_step / self.flops_measured_padded_tokens * self.padded_tokens
        return {
            "flops_measured_step": self.flops_measured_step,
            "flops_measured_padded_tokens": self.flops_measured_padded_tokens,
            "padded_tokens": self.padded_tokens,
            "train_flops": float(flops),
            "train_flops_per_second": flops / self.train_seconds if self.train_seconds > 0 else None,
        }


_SUMMED = ("device_seconds", "device_count", "energy_joules", "train_flops", "examples", "tokens", "padded_tokens", "gpu_hours")


def merge_costs(costs: list[dict]) -> dict:
    """One cost for a multi-process run: devices, energy, FLOPs and work summed; wall = max; peak memory max and sum."""
    if not costs:
        raise ValueError("merge_costs needs at least one process's cost")
    merged = dict(costs[0])
    for key in _SUMMED:
        values = [c.get(key) for c in costs]
        # energy of a process without a counter is unknown, so the total is too
        merged[key] = None if any(v is None for v in values) else sum(values)
    if merged.get("energy_joules") is None:
        merged["energy_note"] = next((c.get("energy_note") for c in costs if c.get("energy_note")), "energy unknown on some process")
    for key in ("wall_seconds", "train_seconds"):
        values = [c[key] for c in costs if c.get(key) is not None]
        merged[key] = max(values) if values else None
    for key in ("peak_memory_bytes", "peak_memory_reserved_bytes"):
        values = [c[key] for c in costs if c.get(key) is not None]
        if values:
            merged[key] = max(values)  # the largest single process: what one device had to hold
            merged[f"{key}_sum"] = sum(values)
    merged["device_indices"] = [i for c in costs for i in c.get("device_indices", [])]
    merged["processes"] = len(costs)
    # Rates follow the merged totals: all processes' work over the slowest process's training time.
    if merged.get("train_seconds"):
        merged["train_examples_per_second"] = merged["examples"] / merged["train_seconds"] if merged.get("examples") is not None else None
        if merged.get("train_flops"):
            merged["train_flops_per_second"] = merged["train_flops"] / merged["train_seconds"]
    return merged
