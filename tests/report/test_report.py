"""`build_report` and `transferkit report` on a hand-filled registry: figures exist and are real PNGs, numbers match."""

from __future__ import annotations

import json
import re
import statistics
import struct
from pathlib import Path

import pytest
import torch
from cli_helpers import assert_one_line_error, run_cli
from transferkit.registry import TaskRecord, open_registry

from transferkit.report import build_report

SOURCES = {"glue/mnli": [1.0, 0.2, 0.0], "glue/sst2": [0.1, 1.0, 0.3]}
TARGETS = {"glue/rte": [0.9, 0.3, 0.1], "superglue/cb": [0.2, 0.4, 1.0]}
SCORES = {("glue/rte", "pemt"): [0.61, 0.58, 0.66], ("glue/rte", "scratch"): [0.52, 0.55, 0.50], ("superglue/cb", "pemt"): [0.71, 0.75, 0.69]}
METHOD_SCORES = {"prompt": [0.53, 0.55, 0.54], "lora": [0.58, 0.60, 0.62]}
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def add_expert(registry, name, task, command, *, wall=10.0, metrics=None, extra=None, lineage=()):
    run = registry.start_run("train", command, {}, 1, {}, {}, {})
    metrics = metrics or {
        "primary": "accuracy", "dev": {"accuracy": 0.5}, "test": {"accuracy": 0.5},
        "eval_history": [{"step": s, "dev": {"accuracy": 0.4 + s / 100}, "train_loss": 1 / s} for s in (10, 20, 30)],
    }
    extra = {"loss_history": [[s, 1.0 / s] for s in range(1, 31)], **(extra or {})}
    return registry.register_expert(
        run_id=run.id, name=name, task_name=task, method="lora", config={}, backbone={"name": "tiny"}, backbone_id="bb",
        trainable_params=4, metrics=metrics, tensors={"w": torch.zeros(2)}, tensor_metadata={"format": "transferkit.expert/1"},
        lineage=lineage, extra=extra, cost={"wall_seconds": wall, "device_kind": "cpu", "device_count": 1},
    )


@pytest.fixture
def filled(tmp_path) -> str:
    url = f"sqlite:///{tmp_path}/reg.db"
    registry = open_registry(url)
    for task, embedding in {**SOURCES, **TARGETS}.items():
        registry.upsert_task(TaskRecord(task, f"the {task} task", {"name": task}, embedding, "test"))
    sources = [add_expert(registry, f"{t.split('/')[-1]}-lora", t, ["transferkit", "train-source", t], wall=100.0) for t in SOURCES]
    names = [s.name for s in sources]
    for (target, strategy), scores in SCORES.items():
        for seed, score in enumerate(scores, start=1):
            cell = f"gx-{target.split('/')[-1]}-{strategy}-s{seed}"
            extra: dict = {"strategy": strategy}
            if target == "glue/rte":  # RTE's cells keep their test predictions (100 examples): intervals and paired differences
                right = round(100 * score)
                extra["test_outputs"] = {"predictions": [1] * right + [0] * (100 - right), "labels": [1] * 100}
            if strategy == "pemt":
                first = 0.3 + seed / 10
                extra["gate_weights"] = {
                    "per_layer": {f"encoder.layer.{i}": [first, 1 - first] for i in range(4)},
                    "mean": {names[0]: first, names[1]: 1 - first}, "sources": names,
                }
            add_expert(
                registry, cell, target, ["transferkit", "compare", "--grid=gx", f"cell={cell}"], wall=10.0 * seed,
                metrics={"primary": "accuracy", "dev": {"accuracy": score}, "test": {"accuracy": score},
                         "eval_history": [{"step": s, "dev": {"accuracy": score * s / 30}, "train_loss": 1 / s} for s in (10, 20, 30)]},
                extra=extra, lineage=[(s.id, "source", 0.5) for s in sources] if strategy != "scratch" else (),
            )
    # A `compare --methods` grid: one cell per (task, source method, seed).
    for method, scores in METHOD_SCORES.items():
        for seed, score in enumerate(scores, start=1):
            cell = f"mx-rte-{method}-s{seed}"
            add_expert(registry, cell, "glue/rte", ["transferkit", "compare", "--grid=mx", f"cell={cell}"],
                       metrics={"primary": "accuracy", "dev": {"accuracy": score}, "test": {"accuracy": score}})
    # Named like a cell but made by `transfer`: must not be counted in the grid.
    add_expert(registry, "gx-rte-pemt-s9", "glue/rte", ["transferkit", "transfer", "glue/rte"], extra={"strategy": "pemt"})
    registry.close()
    return url


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), path
    assert data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_report_figures_and_compare_numbers(filled, tmp_path):
    registry = open_registry(filled)
    result = build_report(registry, tmp_path / "out")
    registry.close()
    page = result.index.read_text()
    pngs = [path for path in result.files if path.suffix == ".png"]
    referenced = re.findall(r'<img src="([^"]+)"', page)
    assert sorted(referenced) == sorted(p.name for p in pngs)
    assert {"similarity.png", "compare-gx.png", "curves-loss.png", "curves-dev.png", "cost.png"} <= set(referenced)
    assert len([name for name in referenced if name.startswith("gates-")]) == 2  # one per pemt target
    for name in referenced:
        path = result.index.parent / name
        assert path.is_file() and path.stat().st_size > 5000, name
        width, height = png_size(path)
        assert width > 300 and height > 300, (name, width, height)
    assert "no data" not in page.lower()

    rows = {(r["target"], r["strategy"]): r for r in next(s for s in result.sections if s.key == "compare").data["gx"]}
    assert set(rows) == set(SCORES) and rows[("glue/rte", "pemt")]["seeds"] == 3
    # Cells with test predictions: mean [95% interval] and the paired difference to scratch, as `compare` computes them.
    for strategy in ("pemt", "scratch"):
        interval = rows[("glue/rte", strategy)]["interval"]
        assert interval["mean"] == pytest.approx(statistics.mean(SCORES[("glue/rte", strategy)]))
        assert interval["low"] < interval["mean"] < interval["high"]
        shown = f"<td class=num>{100 * interval['mean']:.1f} [{100 * interval['low']:.1f}, {100 * interval['high']:.1f}]</td>"
        assert f"<td>glue/rte</td><td>accuracy</td><td>{strategy}</td>{shown}" in page
    versus = rows[("glue/rte", "pemt")]["versus_scratch"]
    assert (versus["wins"], versus["losses"]) == (3, 0) and versus["low"] > 0
    assert f"{100 * versus['mean']:+.1f} [{100 * versus['low']:+.1f}, {100 * versus['high']:+.1f}] 3W/0L better" in page
    # Cells without them (CB): mean ± std over seeds, no comparison.
    mean, std = 100 * statistics.mean(SCORES[("superglue/cb", "pemt")]), 100 * statistics.stdev(SCORES[("superglue/cb", "pemt")])
    assert (f"<td>superglue/cb</td><td>accuracy</td><td>pemt</td><td class=num>{mean:.1f} ± {std:.1f} (std)</td><td class=num>-</td>"
            "<td class=num>3</td><td class=num>20.0</td>") in page
    method_rows = {r["strategy"]: r for r in next(s for s in result.sections if s.key == "compare").data["mx"]}
    assert set(method_rows) == set(METHOD_SCORES) and "compare-mx.png" in referenced
    assert method_rows["lora"]["mean"] == pytest.approx(0.60) and method_rows["prompt"]["seeds"] == 3
    # Source-expert curves: one line per task and method (seeds averaged), not one per expert.
    curves = next(s for s in result.sections if s.key == "curves").data["loss"]["source experts"]
    assert set(curves) == {"mnli lora", "sst2 lora", "rte lora"}

    similarity = next(s for s in result.sections if s.key == "similarity").data
    assert similarity["rows"] == sorted(TARGETS) and similarity["columns"] == sorted(SOURCES)
    gates = next(s for s in result.sections if s.key == "gates").data["glue/rte"]
    assert gates["mean"] == pytest.approx([0.5, 0.5]) and gates["std"][0] == pytest.approx(0.1)


def test_empty_registry_gives_no_data_notes(tmp_path):
    registry = open_registry(f"sqlite:///{tmp_path}/empty.db")
    result = build_report(registry, tmp_path / "out")
    registry.close()
    page = result.index.read_text()
    assert "<img" not in page
    assert page.count("No data") == 5
    assert result.files == [result.index]


def test_cli_report_json_and_bad_out(filled, tmp_path):
    out_dir = tmp_path / "site"
    result = run_cli("--registry", filled, "report", "--out", str(out_dir), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    assert summary["index"] == str(out_dir / "index.html")
    assert all(Path(f).is_file() for f in summary["files"]) and len(summary["files"]) == 9  # page + 8 figures

    existing = tmp_path / "a-file"
    existing.write_text("x")
    bad = run_cli("--registry", filled, "report", "--out", str(existing), cwd=tmp_path)
    assert_one_line_error(bad, "existing file")
