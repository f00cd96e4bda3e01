"""The cost meter: real CPU measurements on a tiny run, NVML arithmetic on a fake NVML, merging processes."""

from __future__ import annotations

import os
import sys
import types

import pytest
import torch
from test_training import TOY, toy_examples  # the same toy task as the loop tests

from transferkit.methods import get_method
from transferkit.modeling import TaskModel
from transferkit.training.cost import _NvmlReader, merge_costs
from transferkit.training.data import tokenize_examples
from transferkit.training.loop import TrainingConfig, train


def _run(tiny_backbone, steps: int) -> dict:
    tokenizer = tiny_backbone.tokenizer
    splits = [tokenize_examples(toy_examples(n, s), tokenizer, 32, regression=False, use_cache=False) for n, s in ((64, 1), (16, 2), (16, 3))]
    method = get_method("lora")
    model = TaskModel(tiny_backbone, method.build(method.config_class(), tiny_backbone), TOY.num_labels)
    config = TrainingConfig(max_steps=steps, batch_size=8, eval_every=steps, seed=3)
    cost = train(model, TOY, *splits, config, tokenizer.pad_token_id, show_progress=False).cost
    model.expert.detach()
    return cost


def test_cpu_run_cost_is_populated_and_plausible(tiny_backbone):
    short, long = _run(tiny_backbone, 8), _run(tiny_backbone, 16)
    for cost in (short, long):
        cores = os.cpu_count() or 1
        assert cost["wall_seconds"] >= cost["device_seconds"] / cores - 0.05
        assert cost["peak_memory_bytes"] > 0 and cost["device_seconds"] > 0
        assert cost["train_flops"] > 0 and cost["flops_measured_step"] > 0
        assert cost["train_flops_per_second"] == pytest.approx(cost["train_flops"] / cost["train_seconds"], rel=2e-2)  # train_seconds is rounded to ms
        if cost["energy_joules"] is None:
            assert cost["energy_note"] and cost["energy_method"] is None
        else:
            assert cost["energy_method"] == "rapl"
    assert 1.6 <= long["train_flops"] / short["train_flops"] <= 2.4
    # the measured step is the first one, the same batch in both runs
    assert long["flops_measured_step"] == short["flops_measured_step"]


class _NotSupported(Exception):
    pass


def fake_nvml(energy_mj: list[list[int]] | None, power_mw: list[float]) -> types.ModuleType:
    """Device 0's total-energy counter yields `energy_mj[0]` in order (None: unsupported); power readings likewise."""
    module = types.ModuleType("pynvml")
    module.NVMLError_NotSupported = _NotSupported
    module.nvmlInit = lambda: None
    module.nvmlDeviceGetHandleByIndex = lambda index: index
    counters = {i: iter(values) for i, values in enumerate(energy_mj or [])}
    powers = iter(power_mw)

    def energy(handle):
        if energy_mj is None:
            raise _NotSupported("not supported")
        return next(counters[handle])

    module.nvmlDeviceGetTotalEnergyConsumption = energy
    module.nvmlDeviceGetPowerUsage = lambda handle: next(powers)
    return module


def test_nvml_total_energy_counter(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml([[1_000, 4_500], [20_000, 21_000]], []))
    reader = _NvmlReader([0, 1])
    assert reader.method == "nvml-total-energy" and reader.reason is None
    assert reader.joules() == pytest.approx(3.5 + 1.0)


def test_nvml_power_sampling_fallback(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", fake_nvml(None, [100_000, 200_000, 200_000, 50_000]))
    ticks = iter([0.0, 1.0, 3.0, 4.0])
    reader = _NvmlReader([0], clock=lambda: next(ticks), threaded=False)
    assert reader.method == "nvml-power-samples"
    reader.samplers[0].sample()  # t=1: 200 W
    reader.samplers[0].sample()  # t=3: 200 W
    # trapezoids: (100+200)/2*1 + 200*2 + (200+50)/2*1 = 150 + 400 + 125
    assert reader.joules() == pytest.approx(675.0)


def test_nvml_missing_gives_a_reason(monkeypatch):
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import fails
    reader = _NvmlReader([0])
    assert reader.joules() is None and "NVML unavailable" in reader.reason


def test_merge_costs_sums_devices_and_takes_max_wall():
    a = {"wall_seconds": 10.0, "train_seconds": 8.0, "device_kind": "cuda", "device_seconds": 10.0, "device_count": 1, "gpu_hours": 10 / 3600,
         "energy_joules": 100.0, "train_flops": 1e12, "examples": 64, "tokens": 900, "padded_tokens": 1024,
         "peak_memory_bytes": 500, "peak_memory_reserved_bytes": 600, "device_indices": [0], "train_examples_per_second": 8.0}
    b = {**a, "wall_seconds": 12.0, "train_seconds": 9.0, "device_seconds": 12.0, "gpu_hours": 12 / 3600, "energy_joules": 50.0,
         "peak_memory_bytes": 700, "peak_memory_reserved_bytes": 650, "device_indices": [1]}
    merged = merge_costs([a, b])
    assert merged["device_seconds"] == 22.0 and merged["device_count"] == 2 and merged["gpu_hours"] == pytest.approx(22 / 3600)
    assert merged["energy_joules"] == 150.0 and merged["train_flops"] == 2e12 and merged["examples"] == 128
    assert merged["wall_seconds"] == 12.0 and merged["peak_memory_bytes"] == 700 and merged["peak_memory_bytes_sum"] == 1200
    assert merged["peak_memory_reserved_bytes_sum"] == 1250 and merged["device_indices"] == [0, 1] and merged["processes"] == 2
    assert merged["train_flops_per_second"] == pytest.approx(2e12 / 9.0)
    assert merged["train_examples_per_second"] == pytest.approx(128 / 9.0)  # all ranks' examples, not rank 0's rate
    unknown = merge_costs([a, {**b, "energy_joules": None, "energy_note": "no counter"}])
    assert unknown["energy_joules"] is None and unknown["energy_note"] == "no counter"


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (real NVML path)")
def test_real_nvml_on_gpu():
    from transferkit.training.cost import CostMeter

    meter = CostMeter(torch.device("cuda", 0))
    x = torch.randn(2048, 2048, device="cuda")
    for _ in range(200):
        x = torch.tanh(x @ x)
    torch.cuda.synchronize()
    cost = meter.finish()
    assert cost["device_kind"] == "cuda" and cost["device_seconds"] > 0 and cost["peak_memory_bytes"] > 0
    assert (cost["energy_joules"] is None) == bool(cost["energy_note"])
    if cost["energy_joules"] is not None:
        assert cost["energy_joules"] > 0 and cost["energy_method"] in ("nvml-total-energy", "nvml-power-samples")


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="per-run peak RSS reset is a Linux feature")
def test_cpu_peak_memory_is_the_runs_own_not_the_process_lifetime(tiny_backbone):
    import numpy as np

    from transferkit.training.cost import _peak_rss_bytes

    before = np.ones(400 * 2**20 // 8)  # 400 MiB touched before the run starts, then freed
    del before
    peak_so_far = _peak_rss_bytes(since_reset=True)
    cost = _run(tiny_backbone, 2)
    assert cost["peak_memory_kind"] == "process-peak-rss"
    assert 0 < cost["peak_memory_bytes"] < peak_so_far - 300 * 2**20


def test_the_flop_counter_also_counts_factorisations_by_their_textbook_counts():
    from transferkit.training.cost import flop_counter

    tall = torch.randn(3, 40, 6, dtype=torch.float64)  # a batch of 3: every count is x 3
    cases = [
        (lambda: torch.linalg.qr(tall), 3 * 2 * (2 * 40 * 36 - 2 * 216 // 3)),  # R, then the thin Q
        (lambda: torch.linalg.qr(tall, mode="r"), 3 * (2 * 40 * 36 - 2 * 216 // 3)),
        (lambda: torch.linalg.svd(tall[0].t(), full_matrices=False), 6 * 40 * 36 + 20 * 216),  # wide: the same as tall
        (lambda: torch.linalg.solve(torch.eye(6, dtype=torch.float64) * 2, torch.ones(6, 4, dtype=torch.float64)),
         2 * 216 // 3 + 2 * 36 * 4),
        (lambda: tall[0].t() @ tall[0], 2 * 6 * 40 * 6),  # torch's own formulas still apply
    ]
    for work, expected in cases:
        with flop_counter() as counter:
            work()
        assert counter.get_total_flops() == expected
