"""Between rows and entities: records built from rows, row values checked and built from records.

Rows (`transferkit.registry.rows`) are the storage shape and must match the migrations; entities
(`transferkit.registry.entities`) are what callers see. Everything that converts one into the other
lives here, so the SQL store, restore and evaluations agree on it.
"""

from __future__ import annotations

from dataclasses import fields
from numbers import Integral, Real
from typing import Any, TypeVar

from transferkit.errors import InvalidInputError
from transferkit.registry.entities import RUN_STATUSES, RunRecord
from transferkit.registry.rows import COST_COLUMNS, RunRow

E = TypeVar("E")


def to_entity(cls: type[E], row: Any, **overrides: Any) -> E:
    """Build an entity from the row columns of the same names."""
    return cls(**{f.name: overrides[f.name] if f.name in overrides else getattr(row, f.name) for f in fields(cls)})  # type: ignore[arg-type]


def run_record(row: RunRow) -> RunRecord:
    """The run, with its typed cost columns and `cost_extra` merged back into one cost dict."""
    typed = {key: getattr(row, key) for key in COST_COLUMNS if getattr(row, key) is not None}
    return to_entity(RunRecord, row, cost={**typed, **row.cost_extra})


def split_cost(cost: dict) -> dict[str, Any]:
    """Row values for a cost dict: known, non-null keys in typed columns, everything else in cost_extra."""
    values: dict[str, Any] = {key: None for key in COST_COLUMNS}
    extra = {}
    for key, value in cost.items():
        kind = COST_COLUMNS.get(key)
        if kind is None or value is None:
            extra[key] = value
            continue
        if kind is str:
            valid = isinstance(value, str)
        else:  # numpy scalars are fine, bools are not
            valid = not isinstance(value, bool) and isinstance(value, Integral if kind is int else Real)
        if not valid:
            raise InvalidInputError(f"cost field {key!r} must be of type {kind.__name__}, got {value!r}")
        values[key] = kind(value)
    return {**values, "cost_extra": extra}


def run_row(run: RunRecord) -> RunRow:
    """A new row holding the run exactly as recorded (restored from another registry)."""
    if run.status not in RUN_STATUSES:
        raise InvalidInputError(f"run {run.id} has status {run.status!r}; a run is one of {', '.join(RUN_STATUSES)}")
    require_name(run.kind, "run kind")
    columns = {f.name: getattr(run, f.name) for f in fields(RunRecord) if f.name != "cost"}
    return RunRow(**columns, **split_cost(run.cost))


def dev_score(metrics: dict) -> float | None:
    """The primary metric on dev (`metrics["dev"][metrics["primary"]]`) if it is a number: what "best" ranks by."""
    value = (metrics.get("dev") or {}).get(metrics.get("primary"))
    return float(value) if isinstance(value, Real) and not isinstance(value, bool) else None


def require_name(value: str, what: str) -> None:
    """Names (tasks, experts, run kinds, lineage roles) are non-empty and carry no surrounding spaces."""
    if not isinstance(value, str) or not value.strip() or value != value.strip():
        raise InvalidInputError(f"{what} {value!r} must be a non-empty string without surrounding spaces")
