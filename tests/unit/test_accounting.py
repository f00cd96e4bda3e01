"""Amortized cost arithmetic on a hand-built lineage graph; price table parsing."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest
from transferkit.registry.entities import LineageEdge

from transferkit.accounting import (
    COST_FIELDS,
    ExpertCost,
    PriceTable,
    aggregate,
    amortize,
    load_prices,
    money,
    own_cost,
)
from transferkit.errors import InvalidInputError, RegistryError


def _own(wall: float | None, energy: float | None = None) -> dict:
    return {key: None for key in COST_FIELDS} | {"wall_seconds": wall, "energy_joules": energy}


def test_amortize_two_sources_three_children_and_a_grandchild() -> None:
    own = {"A": _own(60.0, 10.0), "B": _own(30.0), "C1": _own(6.0), "C2": _own(9.0), "C3": _own(3.0), "G": _own(1.0)}
    edges = [
        LineageEdge("A", "C1", "source", 0.7), LineageEdge("B", "C1", "source", 0.3),
        LineageEdge("A", "C2", "source", 0.5), LineageEdge("B", "C2", "source", 0.5),
        LineageEdge("A", "C3", "init", None),
        LineageEdge("C1", "G", "source", 1.0),
        LineageEdge("C1", "X", "reproduces", None),  # neither takes nor dilutes a share of C1
    ]
    own["X"] = _own(2.0)
    result = amortize(own, edges)
    # A is used by C1, C2, C3 -> 20 each; B by C1, C2 -> 15 each
    assert result["A"]["wall_seconds"] == 60.0
    assert result["C1"]["wall_seconds"] == pytest.approx(6 + 20 + 15)
    assert result["C2"]["wall_seconds"] == pytest.approx(9 + 20 + 15)
    assert result["C3"]["wall_seconds"] == pytest.approx(3 + 20)
    # C1's only amortizing user is G: G carries all of C1's amortized cost
    assert result["G"]["wall_seconds"] == pytest.approx(1 + 41)
    assert result["X"]["wall_seconds"] == 2.0
    # the whole cost is conserved: the leaves that amortize carry every source's cost exactly once
    leaves = result["C2"]["wall_seconds"] + result["C3"]["wall_seconds"] + result["G"]["wall_seconds"]
    assert leaves - 6 - 9 - 3 - 1 == pytest.approx(60 + 30)
    # energy: only A known -> partial where own is null, null where nothing is known
    assert result["C1"]["energy_joules"] == pytest.approx(10 / 3)
    assert "energy_joules" in result["C1"]["partial"]
    assert result["B"]["energy_joules"] is None and result["B"]["partial"] == []
    assert result["X"]["energy_joules"] is None
    assert result["C1"]["train_flops"] is None and "train_flops" not in result["C1"]["partial"]


def test_amortize_detects_cycles() -> None:
    own = {"A": _own(1.0), "B": _own(1.0)}
    edges = [LineageEdge("A", "B", "source", 1.0), LineageEdge("B", "A", "source", 1.0)]
    with pytest.raises(RegistryError, match="cycle"):
        amortize(own, edges)


def test_price_table(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TRANSFERKIT_PRICES", str(tmp_path / "missing.toml"))
    table = load_prices()
    amount, note = money({"device_kind": "cpu", "device_name": "x", "wall_seconds": 3600}, table)
    assert amount is None and "no price table" in note

    path = tmp_path / "prices.toml"
    path.write_text('currency = "EUR"\n[prices]\n"NVIDIA T4" = 0.5\n"cpu box" = 0.1\n')
    table = load_prices(path)
    assert table.currency == "EUR"
    # CUDA: GPU-seconds / 3600 x price; CPU: wall-hours x devices x price
    assert money({"device_kind": "cuda", "device_name": "NVIDIA T4", "device_seconds": 7200}, table)[0] == pytest.approx(1.0)
    assert money({"device_kind": "cpu", "device_name": "cpu box", "wall_seconds": 1800, "device_count": 2}, table)[0] == pytest.approx(0.1)
    amount, note = money({"device_kind": "cpu", "device_name": "other"}, table)
    assert amount is None and "'other'" in note
    assert own_cost({"device_kind": "cuda", "device_name": "NVIDIA T4", "device_seconds": 3600}, table)["money"] == 0.5

    path.write_text("[prices\n")
    with pytest.raises(InvalidInputError, match=str(path)):
        load_prices(path)
    path.write_text('[prices]\n"x" = "cheap"\n')
    with pytest.raises(InvalidInputError, match="non-negative number"):
        load_prices(path)


def test_aggregate_sums_exactly_the_rows() -> None:
    when = datetime(2026, 1, 2, tzinfo=timezone.utc)
    empty = PriceTable({}, None, None)
    costs = [
        ExpertCost(str(i), f"e{i}", task, "lora", None, "cpu", "c", when, own_cost({"wall_seconds": w}, empty), own_cost({"wall_seconds": 2 * w}, empty))
        for i, (task, w) in enumerate([("rte", 0.1), ("rte", 0.2), ("cb", 0.7), ("rte", 0.3)])
    ]
    groups = aggregate(costs, "task")
    assert [g["group"] for g in groups] == ["cb", "rte"]
    assert groups[1]["own"]["wall_seconds"] == 0.1 + 0.2 + 0.3
    assert groups[1]["amortized"]["wall_seconds"] == 0.2 + 0.4 + 0.6
    assert groups[1]["own"]["energy_joules"] is None and groups[1]["experts"] == 3
    assert aggregate(costs, "day")[0]["group"] == "2026-01-02"
    with pytest.raises(InvalidInputError):
        aggregate(costs, "color")
