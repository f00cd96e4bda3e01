"""Own and amortized training cost of experts, money from a user price table, totals.

Own cost is what the run that made an expert recorded (see `transferkit.training.cost`).

Amortization rule (recomputed on every read)::

    amortized(X) = own(X) + sum over parents P of X (roles "source", "init" and "merge-source")
                              of amortized(P) / n(P)

where n(P) is the number of distinct experts that have P as a parent in one of
those roles, counted over the whole registry at read time. So a source's cost is
split equally among everything built from it so far (the shares add up to the
source's cost), and each expert's share shrinks as more experts reuse that source.
Other edges (a `reproduces` link) neither take nor pass a share. Filters on what is shown never change the shares.

Nulls: a field that is null in own(X) and in every contributing ancestor stays null;
otherwise nulls count as 0 and the field is listed in `partial`.

Money is never stored: it is computed on read as device-hours x price per device-hour
from a user-editable TOML file (`TRANSFERKIT_PRICES`, else `prices.toml` in the user
config dir)::

    currency = "USD"
    [prices]
    "NVIDIA A100-SXM4-40GB" = 1.60

Device-hours are GPU-seconds / 3600 on CUDA and wall-hours x device count on CPU
(a rented CPU machine is billed by the hour, not per core-second). No file or no entry
for the device: money is null and `money_note` says why.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import platformdirs
import tomllib

from transferkit.errors import InvalidInputError, RegistryError
from transferkit.registry.entities import ExpertRecord, LineageEdge, RunRecord

if TYPE_CHECKING:
    from transferkit.registry.abstract_store import RegistryStore

COST_FIELDS = ("wall_seconds", "device_seconds", "gpu_hours", "energy_joules", "train_flops", "money")
AMORTIZING_ROLES = ("source", "init", "merge-source")
GROUPINGS = ("task", "method", "device", "day")
RULE = (
    "amortized(X) = own(X) + sum over parents P of X (roles source, init, merge-source) of amortized(P) / n(P); "
    "n(P) = distinct experts having P as a parent in one of those roles, whole registry, at read time"
)


@dataclass(frozen=True)
class PriceTable:
    """Price per device-hour by exact device name, as recorded in a run's `device_name`."""

    prices: dict[str, float]
    currency: str | None
    path: Path | None
    note: str | None = None  # why there is no table, when there is none


def prices_path() -> Path:
    env = os.environ.get("TRANSFERKIT_PRICES")
    return Path(env) if env else Path(platformdirs.user_config_dir("transferkit")) / "prices.toml"


def load_prices(path: Path | None = None) -> PriceTable:
    """Read the price table; a missing file is an empty table, a malformed one a one-line error."""
    path = path or prices_path()
    if not path.exists():
        return PriceTable({}, None, None, note=f"no price table at {path}")
    try:
        data = tomllib.loads(path.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as error:
        raise InvalidInputError(f"price table {path}: {error}") from None
    table = data.get("prices", {})
    if not isinstance(table, dict):
        raise InvalidInputError(f"price table {path}: [prices] must be a table of device name = price per hour")
    prices = {}
    for name, price in table.items():
        if isinstance(price, bool) or not isinstance(price, (int, float)) or price < 0:
            raise InvalidInputError(f"price table {path}: price of {name!r} must be a non-negative number, got {price!r}")
        prices[name] = float(price)
    currency = data.get("currency")
    if currency is not None and not isinstance(currency, str):
        raise InvalidInputError(f"price table {path}: currency must be a string, got {currency!r}")
    return PriceTable(prices, currency, path)


def device_hours(cost: dict) -> float | None:
    """GPU-seconds / 3600 on CUDA; wall-hours x device count on CPU."""
    if cost.get("device_kind") == "cuda":
        seconds = cost.get("device_seconds")
        return None if seconds is None else seconds / 3600
    wall = cost.get("wall_seconds")
    return None if wall is None else wall / 3600 * (cost.get("device_count") or 1)


def money(cost: dict, prices: PriceTable) -> tuple[float | None, str | None]:
    """(amount, None) or (None, reason)."""
    if not prices.prices:
        return None, prices.note or f"price table {prices.path} has no prices"
    name = cost.get("device_name")
    if name not in prices.prices:
        return None, f"no price for device {name!r} in {prices.path}"
    hours = device_hours(cost)
    if hours is None:
        return None, "run recorded no duration"
    return hours * prices.prices[name], None


def own_cost(cost: dict, prices: PriceTable) -> dict[str, Any]:
    """The six COST_FIELDS of one run's recorded cost, money computed now."""
    amount, _ = money(cost, prices)
    own: dict[str, Any] = {key: cost.get(key) for key in COST_FIELDS if key != "money"}
    own["money"] = amount
    return {key: None if own[key] is None else float(own[key]) for key in COST_FIELDS}


def amortize(own: dict[str, dict], edges: list[LineageEdge], uses: dict[str, int] | None = None) -> dict[str, dict]:
    """Amortized cost of every expert in `own` (id -> dict of COST_FIELDS plus `partial`), by the module's rule.

    n(P) is counted from `edges` unless `uses` gives it (when `edges` are only the ancestors of some experts).
    """
    users: dict[str, set[str]] = defaultdict(set)
    parents: dict[str, list[str]] = defaultdict(list)
    for edge in edges:
        if edge.role not in AMORTIZING_ROLES:
            continue
        users[edge.parent_id].add(edge.child_id)
        if edge.parent_id not in parents[edge.child_id]:
            parents[edge.child_id].append(edge.parent_id)
    done: dict[str, dict] = {}

    def visit(expert_id: str, path: tuple[str, ...]) -> dict:
        if expert_id in path:  # impossible by construction; a hand-edited table could still do it
            cycle = " -> ".join(path[path.index(expert_id):] + (expert_id,))
            raise RegistryError(f"lineage cycle: {cycle}")
        if expert_id in done:
            return done[expert_id]
        base = own.get(expert_id, {})
        parts: dict[str, list[float | None]] = {key: [base.get(key)] for key in COST_FIELDS}
        partial: set[str] = set()
        for parent in parents.get(expert_id, []):
            share = visit(parent, path + (expert_id,))
            partial |= set(share["partial"])
            for key in COST_FIELDS:
                parts[key].append(None if share[key] is None else share[key] / (uses or {}).get(parent, len(users[parent])))
        values: dict[str, float | None] = {}
        for key, items in parts.items():
            known = [value for value in items if value is not None]
            values[key] = sum(known) if known else None
            if known and len(known) < len(items):
                partial.add(key)
        partial &= {key for key in COST_FIELDS if values[key] is not None}
        result = {**values, "partial": sorted(partial)}
        done[expert_id] = result
        return result

    for expert_id in own:
        visit(expert_id, ())
    return {expert_id: done[expert_id] for expert_id in own}


@dataclass(frozen=True)
class ExpertCost:
    expert_id: str
    name: str
    task_name: str
    method: str
    strategy: str | None
    device_kind: str | None
    device_name: str | None
    created_at: datetime
    own: dict[str, float | None]
    amortized: dict[str, float | None]
    partial: list[str] = field(default_factory=list)  # amortized fields summed over some null ancestors
    money_note: str | None = None
    currency: str | None = None

    def to_dict(self) -> dict:
        return {
            "expert_id": self.expert_id,
            "name": self.name,
            "task_name": self.task_name,
            "method": self.method,
            "strategy": self.strategy,
            "device_kind": self.device_kind,
            "device_name": self.device_name,
            "created_at": self.created_at.isoformat(),
            "own": dict(self.own),
            "amortized": dict(self.amortized),
            "partial": list(self.partial),
            "money_note": self.money_note,
            "currency": self.currency,
        }


def _build(
    pairs: list[tuple[ExpertRecord, RunRecord]], edges: list[LineageEdge], prices: PriceTable, uses: dict[str, int] | None = None,
) -> dict[str, ExpertCost]:
    owns = {expert.id: own_cost(run.cost, prices) for expert, run in pairs}
    amortized = amortize(owns, edges, uses)
    costs = {}
    for expert, run in pairs:
        entry = amortized[expert.id]
        costs[expert.id] = ExpertCost(
            expert_id=expert.id,
            name=expert.name,
            task_name=expert.task_name,
            method=expert.method,
            strategy=expert.extra.get("strategy"),
            device_kind=run.cost.get("device_kind"),
            device_name=run.cost.get("device_name"),
            created_at=expert.created_at,
            own=owns[expert.id],
            amortized={key: entry[key] for key in COST_FIELDS},
            partial=entry["partial"],
            money_note=money(run.cost, prices)[1],
            currency=prices.currency,
        )
    return costs


def expert_costs(
    registry: RegistryStore, *, task_name: str | None = None, since: datetime | None = None
) -> list[ExpertCost]:
    """Costs of the experts matching the filters, oldest first; amortization always uses the whole registry."""
    pairs = registry.list_expert_runs()
    costs = _build(pairs, registry.list_lineage_edges(), load_prices())
    shown = registry.list_expert_runs(task_name=task_name, since=since) if task_name or since else pairs
    return [costs[expert.id] for expert, _ in shown]


def expert_cost(registry: RegistryStore, expert_id: str) -> ExpertCost:
    """One expert's cost (exact id)."""
    costs = expert_costs_for(registry, [expert_id])
    if expert_id not in costs:
        raise RegistryError(f"expert {expert_id} has no run row to take its cost from")
    return costs[expert_id]


def expert_costs_for(registry: RegistryStore, expert_ids: Collection[str]) -> dict[str, ExpertCost]:
    """Costs of these experts (exact ids) from their ancestors alone: the same values as `expert_costs`, without
    reading the whole registry (n(P) still counts every expert built from P)."""
    edges = [edge for edge in registry.lineage_closure(expert_ids) if edge.role in AMORTIZING_ROLES]
    parents = {edge.parent_id for edge in edges}
    uses = registry.count_children(parents, AMORTIZING_ROLES) if parents else {}
    pairs = registry.list_expert_runs(expert_ids={*expert_ids, *parents})
    costs = _build(pairs, edges, load_prices(), uses)
    return {expert_id: costs[expert_id] for expert_id in expert_ids if expert_id in costs}


def deleted_experts_cost(registry: RegistryStore) -> dict[str, Any]:
    """What finished runs whose expert was deleted (`transferkit delete`) spent: their rows stay, so it stays counted."""
    prices = load_prices()
    kept = {run.id for _, run in registry.list_expert_runs()}
    runs = [run for run in registry.list_runs(statuses=("finished",)) if run.id not in kept]
    total: dict[str, Any] = dict.fromkeys(COST_FIELDS)
    for run in runs:
        for key, value in own_cost(run.cost, prices).items():
            total[key] = _add(total[key], value)
    return {"runs": len(runs), "run_ids": [run.id for run in runs], **total}


def _group_key(cost: ExpertCost, by: str) -> str:
    if by == "task":
        return cost.task_name
    if by == "method":
        return cost.method if cost.strategy is None else f"{cost.method} ({cost.strategy})"
    if by == "device":
        return cost.device_name or cost.device_kind or "unknown"
    return cost.created_at.date().isoformat()


def _add(total: float | None, value: float | None) -> float | None:
    if value is None:
        return total
    return value if total is None else total + value


def aggregate(costs: list[ExpertCost], by: str) -> list[dict]:
    """Totals per group, sorted by group: own and amortized sums of exactly the per-expert values, in list order."""
    if by not in GROUPINGS:
        raise InvalidInputError(f"--by must be one of {', '.join(GROUPINGS)}, got {by!r}")
    groups: dict[str, dict] = {}
    for cost in costs:
        key = _group_key(cost, by)
        group = groups.setdefault(
            key, {"group": key, "experts": 0, "own": dict.fromkeys(COST_FIELDS), "amortized": dict.fromkeys(COST_FIELDS)}
        )
        group["experts"] += 1
        for kind in ("own", "amortized"):
            for name in COST_FIELDS:
                group[kind][name] = _add(group[kind][name], getattr(cost, kind)[name])
    return [groups[key] for key in sorted(groups)]
