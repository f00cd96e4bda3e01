"""Static, offline HTML report of a registry: task similarity, gate weights, compare grids, training curves, cost.

`build_report` writes `index.html` and matplotlib PNGs into one folder; the page uses inline
CSS and relative image paths only, so the folder can be copied or archived and opened offline.
The files are written into a staging folder and moved into place together, so a write that fails
(a full disk) leaves the folder as it was.
"""

from __future__ import annotations

import html
import io
import os
import shutil
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

import matplotlib

matplotlib.use("Agg")  # headless: no display on servers and CI
import matplotlib.pyplot as plt
import numpy as np

from transferkit.accounting import aggregate, expert_costs
from transferkit.composition.grid_text import score_span, score_text, versus_text
from transferkit.composition.grids import ARMS, stored_grids
from transferkit.durable import write_failure
from transferkit.errors import OutputError
from transferkit.insights import EMA_ALPHA, cosine_matrix, dev_curve, loss_curve, mean_curve, unit_embeddings
from transferkit.registry.entities import ExpertRecord, TaskRecord

if TYPE_CHECKING:
    from transferkit.registry.abstract_store import RegistryStore

PAGE_SIZE = 500
DPI = 100
COST_TABLE_ROWS = 30


@dataclass
class Section:
    """One part of the page: its figures (file names in the output folder), an HTML table, the data behind them."""

    key: str
    title: str
    figures: list[str] = field(default_factory=list)
    table_html: str = ""
    data: Any = None
    note: str | None = None  # set when the registry has nothing to show for this section


@dataclass
class ReportResult:
    index: Path
    files: list[Path]
    sections: list[Section]

    def summary(self) -> dict[str, Any]:
        return {
            "index": str(self.index),
            "files": [str(path) for path in self.files],
            "sections": {s.key: {"figures": s.figures, "no_data": s.note is not None} for s in self.sections},
        }


def _prepare_out_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out {str(out_dir)!r} is an existing file; pass a folder path for the report")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        # A folder takes one block; the report's own size is known once it is rendered.
        raise OutputError(f"cannot create the report folder {str(out_dir)!r} ({write_failure(error, out_dir, 4096)}); "
                          "pass a writable --out") from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise OutputError(f"the report folder {str(out_dir)!r} is not writable; pass a writable --out")


def _all_experts(registry: RegistryStore) -> list[ExpertRecord]:
    experts: list[ExpertRecord] = []
    while page := registry.list_experts(limit=PAGE_SIZE, offset=len(experts)):
        experts.extend(page)
    return experts


def _save(fig: Any, files: dict[str, bytes], name: str) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI, bbox_inches="tight")
    plt.close(fig)
    files[name] = buffer.getvalue()
    return name


def _publish(out_dir: Path, files: dict[str, bytes]) -> list[Path]:
    """Write `files` into a staging folder, then move them into `out_dir` together (the last one, index.html, last):
    a full disk fails while nothing in `out_dir` has changed, and leaves no truncated file."""
    staging = out_dir / f".report-{uuid.uuid4().hex[:8]}.tmp"
    needed = sum(len(data) for data in files.values())
    path = staging
    try:
        staging.mkdir()
        for name, data in files.items():
            path = staging / name
            with open(path, "xb") as handle:
                handle.write(data)
        for name in files:
            path = out_dir / name
            os.replace(staging / name, path)
    except OSError as error:
        raise OutputError(f"cannot write the report file {path} ({write_failure(error, path, needed)}); "
                          "free disk space or pass a writable --out") from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return [out_dir / name for name in files]


def _short(task: str) -> str:
    return task.split("/")[-1]


# --- 1. task similarity -------------------------------------------------------------------------


def similarity_section(tasks: list[TaskRecord], experts: list[ExpertRecord], parent_ids: set[str], files: dict[str, bytes]) -> Section:
    section = Section("similarity", "Task similarity (cosine of description embeddings)")
    vectors = unit_embeddings(tasks)
    rows = sorted({e.task_name for e in experts if e.extra.get("strategy")} & vectors.keys())
    cols = sorted({e.task_name for e in experts if e.id in parent_ids} & vectors.keys())
    if not rows or not cols:  # no transfers yet: compare every task with every task
        rows = cols = sorted(vectors)
    if not rows:
        section.note = "No data: no task has a description embedding."
        return section
    matrix = cosine_matrix(vectors, rows, cols)
    section.data = {"rows": rows, "columns": cols, "cosine": matrix.round(4).tolist()}
    fig, ax = plt.subplots(figsize=(max(5.0, 1.1 * len(cols) + 2.5), max(4.0, 0.55 * len(rows) + 2)))
    image = ax.imshow(matrix, cmap="viridis", vmin=min(0.0, matrix.min()), vmax=1.0, aspect="auto")
    ax.set_xticks(range(len(cols)), [_short(c) for c in cols], rotation=45, ha="right")
    ax.set_yticks(range(len(rows)), [_short(r) for r in rows])
    ax.set_xlabel("source task")
    ax.set_ylabel("target task")
    for i in range(len(rows)):
        for j in range(len(cols)):
            ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=8, color="white" if matrix[i, j] < 0.6 else "black")
    fig.colorbar(image, ax=ax, label="cosine")
    ax.set_title("Task similarity")
    section.figures.append(_save(fig, files, "similarity.png"))
    return section


# --- 2. gate weights --------------------------------------------------------------------------


def gates_section(experts: list[ExpertRecord], files: dict[str, bytes]) -> Section:
    section = Section("gates", "PEMT gate weights (mean over seeds)")
    by_target: dict[str, list[ExpertRecord]] = defaultdict(list)
    for expert in experts:
        if expert.extra.get("strategy") == "pemt" and expert.extra.get("gate_weights", {}).get("per_layer"):
            by_target[expert.task_name].append(expert)
    section.data = {}
    for index, target in enumerate(sorted(by_target)):
        group = by_target[target]
        sources = group[0].extra["gate_weights"]["sources"]
        # Seeds of one target may differ in sources if the registry changed between runs: keep the common ones.
        group = [e for e in group if e.extra["gate_weights"]["sources"] == sources]
        layers = list(group[0].extra["gate_weights"]["per_layer"])
        per_layer = np.array([[e.extra["gate_weights"]["per_layer"][layer] for layer in layers] for e in group])
        mean_gates = np.array([[e.extra["gate_weights"]["mean"][s] for s in sources] for e in group])
        layer_mean = per_layer.mean(axis=0)
        gate_mean = mean_gates.mean(axis=0)
        gate_std = mean_gates.std(axis=0, ddof=1) if len(group) > 1 else np.zeros(len(sources))
        section.data[target] = {"sources": sources, "layers": layers, "seeds": len(group), "mean": gate_mean.round(4).tolist(), "std": gate_std.round(4).tolist()}
        fig, (heat, bars) = plt.subplots(1, 2, figsize=(11, max(3.5, 0.35 * len(layers) + 1.5)), gridspec_kw={"width_ratios": [3, 2]})
        image = heat.imshow(layer_mean, cmap="magma", vmin=0, vmax=max(1e-9, float(layer_mean.max())), aspect="auto")
        heat.set_xticks(range(len(sources)), sources, rotation=30, ha="right")
        heat.set_yticks(range(len(layers)), [layer.split(".")[-1] for layer in layers])
        heat.set_ylabel("layer")
        heat.set_title(f"per-layer gates, {_short(target)} ({len(group)} {'seed' if len(group) == 1 else 'seeds'})")
        fig.colorbar(image, ax=heat)
        bars.bar(range(len(sources)), gate_mean, yerr=gate_std, capsize=4, color="tab:blue")
        bars.set_xticks(range(len(sources)), sources, rotation=30, ha="right")
        bars.set_ylabel("mean gate weight (± std over seeds)")
        bars.set_title("mean gate per source")
        fig.tight_layout()
        section.figures.append(_save(fig, files, f"gates-{index}-{_short(target)}.png"))
    if not section.figures:
        section.note = "No data: no PEMT expert with recorded gate weights."
    return section


# --- 3. compare grids ---------------------------------------------------------------------------


def compare_section(registry: RegistryStore, files: dict[str, bytes]) -> Section:
    section = Section("compare", "Compare grids (test primary metric ×100: mean over seeds [95% interval]; paired difference to scratch)")
    section.data = {}
    tables = []
    for grid in stored_grids(registry):
        key, arm_key = ("task", "method") if grid.kind == "methods" else ("target", "strategy")
        # The rows `transferkit compare --json` prints for this grid, with the arm under one key for both kinds.
        rows = [{**row, "target": row[key], "strategy": row[arm_key]} for row in grid.rows(registry)]
        if not rows:
            continue
        section.data[grid.name] = rows
        section.figures.append(_save(_grouped_bars(grid.name, rows), files, f"compare-{grid.name}.png"))
        body = "".join(
            f"<tr><td>{html.escape(r['target'])}</td><td>{html.escape(r['metric'])}</td><td>{html.escape(r['strategy'])}</td>"
            f"<td class=num>{score_text(r)}</td><td class=num>{versus_text(r.get('versus_scratch'))}</td><td class=num>{r['seeds']}</td>"
            f"<td class=num>{r['wall_seconds']:.1f}</td>"
            f"<td class=num>{'-' if r.get('train_flops') is None else format(r['train_flops'] / 1e12, '.3f')}</td></tr>"
            for r in rows
        )
        tables.append(
            f"<h3>grid {html.escape(grid.name)}</h3><table><tr><th>target</th><th>metric</th><th>strategy / method</th>"
            f"<th>score ×100</th><th>vs scratch</th><th>seeds</th><th>mean wall s</th><th>mean TFLOPs</th></tr>{body}</table>"
        )
    section.table_html = "".join(tables)
    if not section.figures:
        section.note = "No data: no `transferkit compare` grid cells in the registry."
    return section


def _grouped_bars(grid_name: str, rows: list[dict]) -> Any:
    """Bars at each cell's mean; whiskers at its 95% interval (mean ± std for cells without test predictions)."""
    targets = list(dict.fromkeys(r["target"] for r in rows))
    strategies = [s for s in ARMS if any(r["strategy"] == s for r in rows)]
    width = 0.8 / len(strategies)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(targets) + 2), 4.5))
    for k, strategy in enumerate(strategies):
        cells = {r["target"]: r for r in rows if r["strategy"] == strategy}
        present = [t for t in targets if t in cells]
        xs = [targets.index(t) + (k - (len(strategies) - 1) / 2) * width for t in present]
        spans = [score_span(cells[t]) for t in present]
        means = [mean for mean, _, _ in spans]
        whiskers = [[mean - low for mean, low, _ in spans], [high - mean for mean, _, high in spans]]
        ax.bar(xs, means, width, yerr=whiskers, capsize=3, label=strategy)
    ax.set_xticks(range(len(targets)), [f"{_short(t)}\n({next(r['metric'] for r in rows if r['target'] == t)})" for t in targets])
    ax.set_ylabel("test primary metric ×100")
    ax.axhline(0, color="black", linewidth=0.6)
    ax.set_title(f"grid {grid_name}: mean over seeds, 95% interval")
    ax.legend(ncol=len(strategies), fontsize=8)
    fig.tight_layout()
    return fig


# --- 4. training curves -------------------------------------------------------------------------


def curves_section(experts: list[ExpertRecord], files: dict[str, bytes]) -> Section:
    section = Section("curves", f"Training curves (loss EMA α={EMA_ALPHA}; dev primary metric)")
    panels: dict[str, dict[str, list[ExpertRecord]]] = defaultdict(lambda: defaultdict(list))
    for expert in experts:
        if expert.extra.get("strategy"):
            panels[expert.task_name][expert.extra["strategy"]].append(expert)
        else:  # source experts: one line per task and method (mean over seeds), on one shared panel
            panels["source experts"][f"{_short(expert.task_name)} {expert.method}"].append(expert)
    names = sorted(p for p in panels if p != "source experts") + (["source experts"] if "source experts" in panels else [])
    section.data = {}
    for kind, curve_of, ylabel in (("loss", loss_curve, "train loss (EMA)"), ("dev", dev_curve, "dev primary metric")):
        lines = {
            panel: {label: mean_curve(curves) for label, group in panels[panel].items() if (curves := [c for e in group if (c := curve_of(e))])}
            for panel in names
        }
        lines = {panel: found for panel, found in lines.items() if found}
        if not lines:
            continue
        section.data[kind] = {panel: {label: len(steps) for label, (steps, _) in found.items()} for panel, found in lines.items()}
        columns = min(3, len(lines))
        n_rows = -(-len(lines) // columns)
        fig, axes = plt.subplots(n_rows, columns, figsize=(4.6 * columns, 3.3 * n_rows), squeeze=False)
        for ax, (panel, found) in zip(axes.flat, lines.items()):
            for label, (steps, values) in sorted(found.items()):
                # Markers: transfer runs often have only a few dev evaluations.
                ax.plot(steps, values, label=label, linewidth=1.2, marker="o" if kind == "dev" else None, markersize=3)
            metric = next(iter(panels[panel].values()))[0].metrics.get("primary", "")
            ax.set_title(_short(panel) if panel != "source experts" or kind == "loss" else panel)
            ax.set_xlabel("step")
            ax.set_ylabel(ylabel if kind == "loss" or panel == "source experts" else f"dev {metric}")
            ax.legend(fontsize=6 if len(found) > 8 else 7, ncol=2 if len(found) > 8 else 1)
        for ax in list(axes.flat)[len(lines):]:
            ax.set_visible(False)
        fig.suptitle("training loss (EMA)" if kind == "loss" else "dev primary metric", fontweight="bold")
        fig.tight_layout()
        section.figures.append(_save(fig, files, f"curves-{kind}.png"))
    if not section.figures:
        section.note = "No data: no expert has a loss history or dev evaluation history."
    return section


# --- 5. cost ------------------------------------------------------------------------------------


def cost_section(registry: RegistryStore, files: dict[str, bytes]) -> Section:
    section = Section("cost", "Training cost (wall seconds; amortized = own + shares of sources used)")
    costs = expert_costs(registry)
    groups = [g for g in aggregate(costs, "task") if g["own"]["wall_seconds"] is not None]
    if not groups:
        section.note = "No data: no expert has a recorded wall time."
        return section
    section.data = [{"task": g["group"], "experts": g["experts"], "own": g["own"]["wall_seconds"], "amortized": g["amortized"]["wall_seconds"]} for g in groups]
    labels = [_short(g["group"]) for g in groups]
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 0.9 * len(groups) + 6), 4.2), sharey=True)
    for ax, kind, color in zip(axes, ("own", "amortized"), ("tab:blue", "tab:orange")):
        ax.bar(range(len(groups)), [g[kind]["wall_seconds"] or 0.0 for g in groups], color=color)
        ax.set_xticks(range(len(groups)), labels, rotation=30, ha="right")
        ax.set_title(f"{kind} wall seconds per task")
    axes[0].set_ylabel("wall seconds (sum over experts)")
    fig.tight_layout()
    section.figures.append(_save(fig, files, "cost.png"))
    top = sorted(costs, key=lambda c: c.own["wall_seconds"] or 0.0, reverse=True)[:COST_TABLE_ROWS]

    def number(value: float | None, digits: int = 1) -> str:
        return "-" if value is None else f"{value:,.{digits}f}"

    body = "".join(
        f"<tr><td>{html.escape(c.name)}</td><td>{html.escape(c.task_name)}</td><td>{html.escape(c.method)}</td>"
        f"<td>{html.escape(c.strategy or '-')}</td><td class=num>{number(c.own['wall_seconds'])}</td>"
        f"<td class=num>{number(c.amortized['wall_seconds'])}</td><td class=num>{number(c.own['device_seconds'])}</td>"
        f"<td class=num>{number(None if c.own['train_flops'] is None else c.own['train_flops'] / 1e12, 3)}</td></tr>"
        for c in top
    )
    section.table_html = (
        f"<h3>top {len(top)} experts by own wall seconds</h3><table><tr><th>expert</th><th>task</th><th>method</th>"
        f"<th>strategy</th><th>own wall s</th><th>amortized wall s</th><th>device-s</th><th>TFLOPs</th></tr>{body}</table>"
    )
    return section


# --- page ---------------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222;padding:0 1em}
h1{margin-bottom:.2em} .meta{color:#555} section{margin-top:2.5em;border-top:1px solid #ddd}
img{max-width:100%;display:block;margin:1em 0} .nodata{color:#888;font-style:italic}
table{border-collapse:collapse;margin:1em 0;font-size:.9em} th,td{border:1px solid #ccc;padding:.25em .6em}
th{background:#f3f3f3} td.num{text-align:right;font-variant-numeric:tabular-nums}
"""


def _page(sections: list[Section], url: str, counts: dict[str, int]) -> str:
    built = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    parts = [
        f"<!doctype html><html><head><meta charset=utf-8><title>transferkit report</title><style>{CSS}</style></head><body>",
        "<h1>transferkit report</h1>",
        f"<p class=meta>registry <code>{html.escape(url)}</code> · built {built} · "
        + " · ".join(f"{n} {what}" for what, n in counts.items()) + "</p>",
    ]
    for section in sections:
        parts.append(f"<section id={section.key}><h2>{html.escape(section.title)}</h2>")
        if section.note:
            parts.append(f"<p class=nodata>{html.escape(section.note)}</p>")
        parts.extend(f'<img src="{html.escape(name)}" alt="{html.escape(name)}">' for name in section.figures)
        parts.append(section.table_html)
        parts.append("</section>")
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(registry: RegistryStore, out_dir: Path) -> ReportResult:
    """Write `index.html` and its PNGs into `out_dir` (created if missing); return what was written and shown."""
    _prepare_out_dir(out_dir)
    experts = _all_experts(registry)
    tasks = registry.list_tasks()
    by_id = {e.id: e for e in experts}
    parent_ids = {edge.parent_id for edge in registry.list_lineage_edges() if edge.parent_id in by_id}
    files: dict[str, bytes] = {}  # rendered in memory first, so the space the report needs is known before writing
    sections = [
        similarity_section(tasks, experts, parent_ids, files),
        gates_section(experts, files),
        compare_section(registry, files),
        curves_section(experts, files),
        cost_section(registry, files),
    ]
    engine = getattr(registry, "engine", None)
    url = engine.url.render_as_string(hide_password=True) if engine is not None else type(registry).__name__
    counts = {"experts": len(experts), "tasks": len(tasks), "runs with experts": len({e.run_id for e in experts})}
    files["index.html"] = _page(sections, url, counts).encode("utf-8")
    written = _publish(out_dir, files)
    return ReportResult(written[-1], written, sections)
