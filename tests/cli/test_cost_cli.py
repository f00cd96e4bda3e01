"""`transferkit cost` and the cost part of `inspect`, through the real console script on a hand-filled registry."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import assert_one_line_error, run_cli
from transferkit.registry import TaskRecord, open_registry

CPU = "Test CPU"


def add_expert(registry, name: str, task: str, cost: dict, *, lineage=(), extra=None):
    run = registry.start_run("train-source", ["transferkit", "train-source", task], {"lr": 0.1}, 1, {}, {}, {})
    return registry.register_expert(
        run_id=run.id, name=name, task_name=task, method="lora", config={"r": 8}, backbone={"name": "tiny"},
        backbone_id="bb", trainable_params=4, metrics={}, tensors={"w": torch.zeros(2, 2)},
        tensor_metadata={"format": "transferkit.expert/1"}, lineage=lineage, extra=extra,
        cost={"device_kind": "cpu", "device_name": CPU, "device_count": 1, **cost},
    )


@pytest.fixture
def filled(tmp_path):
    """mnli (100 s) and sst2 (50 s) sources; cb and rte transfers use both; a grandchild of cb."""
    url = f"sqlite:///{tmp_path}/reg.db"
    registry = open_registry(url)
    for task in ("glue/mnli", "glue/sst2", "superglue/cb", "glue/rte"):
        registry.upsert_task(TaskRecord(task, f"the {task} task", {"name": task}, [1.0, 0.0], "test"))
    mnli = add_expert(registry, "mnli-lora", "glue/mnli", {"wall_seconds": 100.0, "device_seconds": 190.3, "train_flops": 3e12, "energy_joules": 900.0})
    sst2 = add_expert(registry, "sst2-lora", "glue/sst2", {"wall_seconds": 50.0, "device_seconds": 97.1, "train_flops": 1e12})
    sources = [(mnli.id, "source", 0.6), (sst2.id, "source", 0.4)]
    cb = add_expert(registry, "cb-pemt", "superglue/cb", {"wall_seconds": 10.1, "device_seconds": 19.7, "train_flops": 2e11},
                    lineage=sources, extra={"strategy": "pemt"})
    add_expert(registry, "rte-pemt", "glue/rte", {"wall_seconds": 12.3, "device_seconds": 23.9, "train_flops": 3e11},
               lineage=sources, extra={"strategy": "pemt"})
    add_expert(registry, "cb-pemt-2", "superglue/cb", {"wall_seconds": 0.7, "device_seconds": 1.3}, lineage=[(cb.id, "init", None)],
               extra={"strategy": "spot"})
    registry.close()
    return url


def test_cost_by_task_json_sums_match_rows(filled, tmp_path):
    result = run_cli("--registry", filled, "cost", "--by", "task", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["by"] == "task" and "n(P)" in data["rule"]
    assert len(data["experts"]) == 5
    for group in data["groups"]:
        rows = [e for e in data["experts"] if e["task_name"] == group["group"]]
        assert group["experts"] == len(rows)
        for kind in ("own", "amortized"):
            for field, total in group[kind].items():
                values = [row[kind][field] for row in rows if row[kind][field] is not None]
                assert total == (sum(values) if values else None), (group["group"], kind, field)  # exact, not approx
    by_name = {e["name"]: e for e in data["experts"]}
    # cb: 10.1 + 100/2 + 50/2; its grandchild: 0.7 + all of cb's amortized (cb has one user)
    assert by_name["cb-pemt"]["amortized"]["wall_seconds"] == pytest.approx(85.1)
    assert by_name["cb-pemt-2"]["amortized"]["wall_seconds"] == pytest.approx(85.8)
    assert by_name["cb-pemt"]["own"]["money"] is None and by_name["cb-pemt"]["money_note"]


def test_cost_filters_do_not_change_shares_and_money_uses_price_table(filled, tmp_path):
    prices = tmp_path / "prices.toml"
    prices.write_text(f'currency = "USD"\n[prices]\n"{CPU}" = 3.6\n')
    result = run_cli("--registry", filled, "cost", "--task", "glue/rte", "--since", "2000-01-01", "--json", cwd=tmp_path,
                     env_extra={"TRANSFERKIT_PRICES": str(prices)})
    assert result.returncode == 0, result.stderr
    (rte,) = json.loads(result.stdout)["experts"]
    assert rte["amortized"]["wall_seconds"] == pytest.approx(12.3 + 50 + 25)
    assert rte["own"]["money"] == pytest.approx(12.3 / 3600 * 3.6) and rte["currency"] == "USD"
    table = run_cli("--registry", filled, "cost", "--by", "method", cwd=tmp_path)
    assert table.returncode == 0, table.stderr
    assert "lora (pemt)" in table.stdout and "amortized" in table.stdout


def test_inspect_json_shows_own_and_amortized_cost(filled, tmp_path):
    result = run_cli("--registry", filled, "inspect", "rte-pemt", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["own_cost"]["wall_seconds"] == pytest.approx(12.3)
    assert data["amortized_cost"]["wall_seconds"] == pytest.approx(87.3)
    assert data["amortized_cost"]["train_flops"] == pytest.approx(3e11 + 1.5e12 + 0.5e12)
    assert data["amortized_cost"]["energy_joules"] == pytest.approx(450.0)
    assert data["amortized_cost"]["partial"] == ["energy_joules"]
    assert "rule" in data["amortized_cost"] and data["cost"]["wall_seconds"] == 12.3
    rendered = run_cli("--registry", filled, "inspect", "rte-pemt", cwd=tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    assert "amortized cost" in rendered.stdout and "87.3 s wall" in rendered.stdout


@pytest.mark.parametrize(
    "args, fragment",
    [(["--by", "colour"], "--by must be one of"), (["--since", "last tuesday"], "--since must be an ISO date")],
)
def test_bad_options_are_one_line_errors(filled, tmp_path, args, fragment):
    assert_one_line_error(run_cli("--registry", filled, "cost", *args, cwd=tmp_path), fragment)


def test_malformed_price_table_is_one_line_error(filled, tmp_path):
    prices = tmp_path / "prices.toml"
    prices.write_text("[prices\n")
    result = run_cli("--registry", filled, "cost", cwd=tmp_path, env_extra={"TRANSFERKIT_PRICES": str(prices)})
    assert_one_line_error(result, str(prices))
