"""`compare --methods`: source methods on the same tasks, seeds and budget, stored in the registry and resumable."""

from __future__ import annotations

import json

import pytest

from transferkit.composition.compare import GridBudget, MethodGrid, collect_methods, run_method_grid
from transferkit.errors import NotFoundError
from transferkit.registry import open_registry

from cli_helpers import assert_one_line_error, run_cli, run_cli_in_process


@pytest.fixture
def registry_url(tmp_path):
    return f"sqlite:///{tmp_path}/r.db"


def test_method_grid_stores_cells_resumes_and_reports_cost(registry_url, tiny_model_dir, shared_data):
    registry = open_registry(registry_url)
    grid = MethodGrid(name="m", tasks=["rte"], methods=["prompt", "lora"], seeds=[1, 2],
                      budget=GridBudget(max_steps=2, batch_size=8, eval_every=2, max_length=32))
    run_method_grid(registry, grid, shared_data, str(tiny_model_dir), show_progress=False)
    names = {e.name for e in registry.list_experts()}
    assert names == {f"m-rte-{method}-s{seed}" for method in ("prompt", "lora") for seed in (1, 2)}
    # Each method trains at its own recommended rate, with the same budget and seed per column.
    prompt_run = registry.get_run(registry.get_expert("m-rte-prompt-s1").run_id)
    assert prompt_run.hyperparams["lr"] == 3e-2 and prompt_run.hyperparams["max_steps"] == 2

    run_method_grid(registry, grid, shared_data, str(tiny_model_dir), show_progress=False)
    assert registry.count_experts() == 4, "stored cells are not trained again"

    rows = {row["method"]: row for row in collect_methods(registry, grid)}
    assert set(rows) == {"prompt", "lora"}
    for method, row in rows.items():
        experts = [registry.get_expert(f"m-rte-{method}-s{seed}") for seed in (1, 2)]
        scores = [e.metrics["test"]["accuracy"] for e in experts]
        assert row["seeds"] == 2 and row["scores"] == scores and row["mean"] == pytest.approx(sum(scores) / 2)
        assert row["trainable_params"] == experts[0].trainable_params
        assert row["train_examples_per_second"] > 0 and row["peak_memory_bytes"] > 0
    assert rows["lora"]["trainable_params"] != rows["prompt"]["trainable_params"]
    registry.close()


def test_method_grid_refuses_unknown_methods_before_training(registry_url, tiny_model_dir, shared_data):
    registry = open_registry(registry_url)
    grid = MethodGrid(name="m", tasks=["rte"], methods=["lora", "magic"], seeds=[1])
    with pytest.raises(NotFoundError, match="magic"):
        run_method_grid(registry, grid, shared_data, str(tiny_model_dir), show_progress=False)
    assert registry.count_experts() == 0
    registry.close()


def test_cli_compare_methods_json_and_render_only(registry_url, tiny_model_dir, shared_data, tmp_path):
    base = ("--registry", registry_url, "--data-dir", str(shared_data), "compare", "--grid", "c", "--targets", "cb",
            "--methods", "adapter", "--seeds", "1", "--max-steps", "2", "--batch-size", "8")
    trained = run_cli(*base, "--model", str(tiny_model_dir), "--quiet", "--json", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    [row] = json.loads(trained.stdout)
    assert (row["task"], row["method"], row["seeds"]) == ("superglue/cb", "adapter", 1)
    # The same main() in this process: a new interpreter would import torch again for a table and a refusal.
    rendered = run_cli_in_process(*base, "--render-only", cwd=tmp_path)
    assert rendered.returncode == 0 and "adapter" in rendered.stdout and "train ex/s" in rendered.stdout
    markdown = run_cli_in_process(*base, "--render-only", "--markdown", cwd=tmp_path)
    header, _, line = markdown.stdout.strip().splitlines()
    assert header.startswith("| task (metric) | method |")
    assert line.startswith(f"| superglue/cb (accuracy) | adapter | {100 * row['mean']:.1f} ± 0.0 | 1 | {row['trainable_params']:,} |")
    assert_one_line_error(run_cli_in_process(*base, "--strategies", "pemt", cwd=tmp_path), "--methods")
