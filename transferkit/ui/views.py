"""What each page shows, as plain data for its template: read through the Python API and the registry's queries.

Every function here only reads. Pages that list experts read one page of them (`Registry.experts` with limit and
offset, `Registry.count`, and the costs of just those experts), so they stay fast on registries of 100k experts.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from transferkit.accounting import COST_FIELDS, GROUPINGS, RULE, aggregate, expert_costs_for
from transferkit.api import Registry
from transferkit.errors import ArtifactCorruptError
from transferkit.insights import cosine_matrix, dev_curve, loss_curve, unit_embeddings
from transferkit.registry import RUN_STATUSES, ExpertRecord
from transferkit.registry.liveness import DEFAULT_MAX_SILENCE, abandonment, describe_duration, last_sign_of_life
from transferkit.ui import svg
from transferkit.ui.graph import lineage_svg

SIMILARITY_MAX_TASKS = 30
RUNS_SHOWN = 200
# Sortable columns of the experts table, and the direction a first click sorts in.
SORTABLE = {"name": "", "task": "", "method": "", "backbone": "", "params": "-", "dev": "-", "cost": "-", "created": "-"}


@dataclass(frozen=True)
class ExpertFilters:
    """The experts page's query: filters, sort key (optionally '-' for descending), page number and size."""

    q: str | None = None
    task: str | None = None
    method: str | None = None
    strategy: str | None = None
    tag: str | None = None
    sort: str = "-created"
    page: int = 1
    per_page: int = 50

    def api_filters(self) -> dict[str, str | None]:
        return {"text": self.q, "task": self.task, "method": self.method, "strategy": self.strategy, "tag": self.tag}


def primary(record: ExpertRecord, split: str) -> float | None:
    value = (record.metrics.get(split) or {}).get(record.metrics.get("primary"))
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def experts_page(registry: Registry, filters: ExpertFilters) -> dict[str, Any]:
    """One page of the experts table: the rows, the total matching, and the page count."""
    total = registry.count(**filters.api_filters())
    offset = (filters.page - 1) * filters.per_page
    experts = registry.experts(**filters.api_filters(), order=filters.sort, limit=filters.per_page, offset=offset) if offset < total else []
    ids = [e.id for e in experts]
    curations = registry.store.curations(ids) if ids else {}
    costs = expert_costs_for(registry.store, ids) if ids else {}
    rows = []
    for expert in experts:
        record, cost, curation = expert.record, costs.get(expert.id), curations[expert.id]
        rows.append({
            "id": expert.id, "name": expert.name, "task": expert.task, "method": expert.method,
            "strategy": record.extra.get("strategy"), "backbone": record.backbone_id, "metric": record.metrics.get("primary"),
            "dev": primary(record, "dev"), "test": primary(record, "test"), "params": record.trainable_params,
            "own": cost.own["wall_seconds"] if cost else None, "amortized": cost.amortized["wall_seconds"] if cost else None,
            "partial": bool(cost and "wall_seconds" in cost.partial),
            "tags": [f"{k}={v}" if v else k for k, v in curation.tags.items()], "aliases": list(curation.aliases),
            "created": record.created_at,
        })
    return {"rows": rows, "total": total, "pages": max(1, math.ceil(total / filters.per_page)), "filters": filters, "sortable": SORTABLE}


def artifact_status(registry: Registry, record: ExpertRecord) -> tuple[bool, str]:
    """(verified, what was found): the artifact's bytes read and checked against the recorded sha256 now."""
    try:
        registry.store.verify_artifact(record)
    except ArtifactCorruptError as error:
        return False, str(error)
    return True, f"sha256 {record.artifact_sha256} matches the {record.artifact_bytes:,} bytes read now"


def expert_page(registry: Registry, reference: str) -> dict[str, Any]:
    """Everything `inspect` knows about one expert, its verification, curves, gates, ranking and lineage graph."""
    expert = registry.get(reference)
    record = expert.record
    details = expert.details(verify=False)
    verified, verification = artifact_status(registry, record)
    graph, left_out = lineage_svg(expert.lineage("ancestors"), expert.lineage("descendants"))
    metrics = {split: record.metrics.get(split) or {} for split in ("dev", "test")}
    names = sorted({name for values in metrics.values() for name in values})
    return {
        "expert": expert, "record": record, "details": details, "verified": verified, "verification": verification,
        "metric_names": names, "metrics": metrics, "primary_metric": record.metrics.get("primary"),
        "curves": _curves(record), "gates": _gates(record), "load": _expert_load(record),
        "ranking": record.extra.get("ranking") or [], "graph": graph, "left_out": left_out,
        "names": _names(registry, details),
    }


def _names(registry: Registry, details: dict) -> dict[str, str]:
    """Names of the experts the lineage edges mention, for links."""
    ids = {edge["parent_id"] for edge in details["lineage"]["parents"]} | {edge["child_id"] for edge in details["lineage"]["children"]}
    return {expert_id: registry.store.get_expert(expert_id).name for expert_id in ids}


def _curves(record: ExpertRecord) -> list[Any]:
    charts = []
    loss = loss_curve(record)
    if loss:
        charts.append(svg.line_chart({"train loss (EMA)": loss}, title="training loss", x_label="step", y_label="loss (EMA)"))
    dev = dev_curve(record)
    if dev:
        metric = record.metrics.get("primary", "")
        charts.append(svg.line_chart({f"dev {metric}": dev}, title=f"dev {metric}", x_label="step", y_label=f"dev {metric}"))
    return charts


def _gates(record: ExpertRecord) -> dict[str, Any] | None:
    """PEMT: a layers x sources heatmap (plus the zero expert) and the mean per source; ATTEMPT: mean attention bars."""
    gates = record.extra.get("gate_weights")
    if not gates:
        return None
    sources = list(gates.get("sources") or gates.get("mean", {}))
    mean = gates.get("mean", {})
    found: dict[str, Any] = {"entropy": gates.get("entropy"), "mean": mean, "target": gates.get("target")}
    per_layer = gates.get("per_layer") or {}
    if per_layer:
        layers = list(per_layer)
        zero = (gates.get("zero_expert") or {}).get("per_layer") or {}
        columns = sources + (["(no expert)"] if zero else [])
        values = [[*per_layer[layer], *([zero.get(layer)] if zero else [])] for layer in layers]
        found["heatmap"] = svg.heatmap([layer.removeprefix("encoder.") for layer in layers], columns, values,
                                       title="gate weight per layer and source", vmin=0.0, vmax=1.0, fmt="{:.3f}")
        found["layers"], found["columns"] = len(layers), len(columns)
    else:  # ATTEMPT: mean attention on each source prompt and on the target's own prompt
        shares = [*((s, mean.get(s)) for s in sources), *([("target prompt", gates["target"])] if gates.get("target") is not None else [])]
        weights = {name: weight for name, weight in shares if weight is not None}
        found["attention"] = svg.bar_chart(
            list(weights), ["mean attention"], lambda name, _: (weights[name], None, None),
            title="mean attention per prompt (dev set)", y_label="attention", fmt="{:.3f}",
        )
    return found


def _expert_load(record: ExpertRecord) -> Any:
    """MEPT: how often each prompt expert was routed to, per layer."""
    load = (record.extra.get("method_statistics") or {}).get("expert_load")
    if not load:
        return None
    layers = list(load)
    width = max(len(counts) for counts in load.values())
    values = [[float(c) for c in load[layer]] + [None] * (width - len(load[layer])) for layer in layers]
    return svg.heatmap(layers, [f"expert {j}" for j in range(width)], values, title="routing counts per layer", fmt="{:.0f}")


def tasks_page(registry: Registry, page: int, per_page: int) -> dict[str, Any]:
    """A page of the registry's tasks with their best experts, the catalog tasks it has no row for, a similarity map."""
    from transferkit.tasks import list_tasks

    store = registry.store
    total = store.count_tasks()
    records = store.list_tasks(limit=per_page, offset=(page - 1) * per_page)
    best = store.best_experts_per_task([r.name for r in records], 3)
    catalog = list_tasks()
    present = {r.name for r in store.list_tasks(names=[t.name for t in catalog])}
    rows = [{"record": r, "spec": r.spec, "kind": r.spec.get("kind", "catalog"), "count": best[r.name].count if r.name in best else 0,
             "best": best[r.name].best if r.name in best else []} for r in records]
    vectors = unit_embeddings(records[:SIMILARITY_MAX_TASKS])
    names = [r.name for r in records if r.name in vectors][:SIMILARITY_MAX_TASKS]
    similarity = None
    if len(names) >= 2:
        matrix = cosine_matrix(vectors, names, names)
        similarity = svg.heatmap(names, names, matrix.round(4).tolist(), title="cosine similarity of task descriptions",
                                 vmin=min(0.0, float(matrix.min())), vmax=1.0, row_links=[f"/experts?task={n}" for n in names])
    return {"rows": rows, "total": total, "pages": max(1, math.ceil(total / per_page)), "page": page, "per_page": per_page,
            "missing": [t for t in catalog if t.name not in present], "similarity": similarity, "similarity_tasks": len(names)}


def compare_page(registry: Registry, targets: list[str], arms: list[str]) -> dict[str, Any]:
    """Every stored compare grid: a bar chart (mean with its 95% interval) and the table, for the chosen targets/arms."""
    from transferkit.composition.grid_text import score_span
    from transferkit.composition.grids import stored_grids  # loads torch: only this page needs the grid code

    grids, all_targets, all_arms = [], set(), []
    for grid in stored_grids(registry.store):
        all_targets.update(grid.targets)
        all_arms += [arm for arm in grid.arms if arm not in all_arms]
        shown_targets = [t for t in grid.targets if not targets or t in targets or t.split("/")[-1] in targets]
        shown_arms = [a for a in grid.arms if not arms or a in arms]
        key = "task" if grid.kind == "methods" else "target"
        arm_key = "method" if grid.kind == "methods" else "strategy"
        rows = [r for r in grid.rows(registry.store) if r[key] in shown_targets and r[arm_key] in shown_arms]
        by_cell = {(r[key], r[arm_key]): r for r in rows}

        def bar(target: str, arm: str, cells: dict = by_cell) -> tuple[float, float | None, float | None] | None:
            row = cells.get((target, arm))
            return None if row is None else score_span(row)

        chart = svg.bar_chart(shown_targets, shown_arms, bar, title=f"grid {grid.name}", y_label="test metric ×100") if rows else None
        grids.append({"grid": grid, "rows": rows, "chart": chart, "key": key, "arm_key": arm_key})
    return {"grids": grids, "targets": sorted(all_targets), "arms": all_arms, "chosen_targets": targets, "chosen_arms": arms}


def cost_page(registry: Registry, by: str, measure: str, task: str | None, since: datetime | None) -> dict[str, Any]:
    """Totals per group (own and amortized, exactly `transferkit cost --json`'s groups), a chart and the costliest experts."""
    costs = registry.costs(task=task, since=since)
    groups = aggregate(costs, by)
    totals = {kind: {field: _sum(g[kind][field] for g in groups) for field in COST_FIELDS} for kind in ("own", "amortized")}
    values = {g["group"]: g for g in groups}
    chart = svg.bar_chart(
        list(values), ["own", "amortized"],
        lambda group, kind: None if values[group][kind][measure] is None else (_scaled(values[group][kind][measure], measure), None, None),
        title=f"{measure} by {by}", y_label=MEASURES[measure], fmt="{:,.3g}",
    ) if groups else None
    top = sorted(costs, key=lambda c: c.own["wall_seconds"] or 0.0, reverse=True)[:20]
    return {"groups": groups, "totals": totals, "chart": chart, "by": by, "measure": measure, "groupings": GROUPINGS,
            "measures": MEASURES, "fields": COST_FIELDS, "top": top, "rule": RULE, "experts": len(costs), "task": task, "since": since}


MEASURES = {"wall_seconds": "wall seconds", "device_seconds": "device-seconds", "gpu_hours": "GPU-hours",
            "energy_joules": "energy (J)", "train_flops": "training TFLOPs", "money": "money"}


def _scaled(value: float, measure: str) -> float:
    return value / 1e12 if measure == "train_flops" else value


def _sum(values: Any) -> float | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def runs_page(registry: Registry) -> dict[str, Any]:
    """Runs that have not finished, newest first: running ones with their heartbeat and whether their process is still
    there, failed and interrupted ones with their error; every resumable one with its latest checkpoint and how to
    resume it (`transferkit list --runs`'s view, `transferkit.runs.run_state`)."""
    from transferkit.runs import run_state
    from transferkit.training.interrupt import how_to_resume

    now = datetime.now(timezone.utc)
    runs = registry.runs(statuses=[s for s in RUN_STATUSES if s != "finished"])
    rows = []
    for run in runs[:RUNS_SHOWN]:
        gone = abandonment(run, DEFAULT_MAX_SILENCE, now) if run.status == "running" else None
        state = run_state(registry.store, run, DEFAULT_MAX_SILENCE)
        job = run.hyperparams.get("job") or {}
        rows.append({
            "run": run, "task": job.get("task") or job.get("target") or run.data_fingerprint.get("task"),
            "name": job.get("name"), "silence": describe_duration(now - last_sign_of_life(run)), "gone": gone,
            "state": run.status if run.status != "running" else ("abandoned" if gone else "alive"),
            "checkpoint": state.checkpoint.step if state.checkpoint else None,
            "resume": how_to_resume(run.command, spell_out=True) if state.resumable else None,
        })
    counts = {state: sum(1 for r in rows if r["state"] == state) for state in ("alive", "abandoned", "interrupted")}
    return {"rows": rows, "total": len(runs), "shown": len(rows), "counts": counts,
            "failed": sum(1 for r in runs if r.status == "failed")}
