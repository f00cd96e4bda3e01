"""`transferkit cost`: own and amortized training cost, totalled by task, method, device or day."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Annotated

import typer
from rich.table import Table
from transferkit.cli.common import (
    JsonOption,
    RegistryOption,
    global_options,
    out,
    print_json,
    registry_from,
)

from transferkit.errors import InvalidInputError


def register(app: typer.Typer) -> None:
    """Add the `cost` command to the CLI."""
    app.command("cost")(cost_command)


def parse_since(value: str) -> datetime:
    """YYYY-MM-DD or a full ISO datetime; naive values are taken as UTC (the registry stores UTC)."""
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInputError(f"--since must be an ISO date (YYYY-MM-DD) or datetime, got {value!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _number(value: float | None, scale: float = 1.0, digits: int = 1) -> str:
    return "-" if value is None else f"{value / scale:,.{digits}f}"


def cost_summary(cost: dict) -> str:
    """One line for `inspect`: the six cost fields of an own or amortized cost dict."""
    money = "-" if cost.get("money") is None else f"{cost['money']:.4f} {cost.get('currency') or ''}".strip()
    text = (
        f"{_number(cost['wall_seconds'])} s wall, {_number(cost['device_seconds'])} device-s, "
        f"{_number(cost['gpu_hours'], digits=4)} GPU-h, energy {_number(cost['energy_joules'])} J, "
        f"{_number(cost['train_flops'], 1e12, 3)} TFLOPs, money {money}"
    )
    if cost.get("partial"):
        text += f" (partial: {', '.join(cost['partial'])})"
    return text


def cost_command(
    ctx: typer.Context,
    task: Annotated[str | None, typer.Option(help="Only experts of this task.")] = None,
    since: Annotated[str | None, typer.Option(help="Only experts created on or after this ISO date/datetime.")] = None,
    by: Annotated[str, typer.Option(help="Group by task, method, device or day.")] = "task",
    registry_url: RegistryOption = None,
    as_json: JsonOption = False,
) -> None:
    """Training cost totals: own cost, and amortized cost (own + an equal share of every source used)."""
    from transferkit.accounting import GROUPINGS, RULE, aggregate, deleted_experts_cost, expert_costs

    if by not in GROUPINGS:
        raise InvalidInputError(f"--by must be one of {', '.join(GROUPINGS)}, got {by!r}")
    moment = parse_since(since) if since else None
    registry = registry_from(global_options(ctx, registry_url, None))
    costs = expert_costs(registry, task_name=task, since=moment)
    groups = aggregate(costs, by)
    deleted = deleted_experts_cost(registry) if task is None and since is None else None  # runs, not experts: not filterable
    if as_json:
        print_json({"by": by, "rule": RULE, "groups": groups, "experts": [c.to_dict() for c in costs], "deleted_experts": deleted})
        return
    table = Table(title=f"training cost by {by} ({len(costs)} experts)")
    for column in ("group", "experts", "wall s", "device-s", "GPU-h", "energy J", "TFLOPs", "money", "amortized wall s", "amortized TFLOPs"):
        table.add_column(column, justify="left" if column == "group" else "right")
    for group in groups:
        own, amortized = group["own"], group["amortized"]
        table.add_row(
            group["group"], str(group["experts"]), _number(own["wall_seconds"]), _number(own["device_seconds"]),
            _number(own["gpu_hours"], digits=4), _number(own["energy_joules"]), _number(own["train_flops"], 1e12, 3),
            _number(own["money"], digits=4), _number(amortized["wall_seconds"]), _number(amortized["train_flops"], 1e12, 3),
        )
    out.print(table)
    if deleted and deleted["runs"]:
        out.print(f"spent on {deleted['runs']} deleted expert(s) (their runs are kept): {cost_summary({**deleted, 'partial': []})}")
    out.print(f"amortized: {RULE}")
