"""The documented custom task (SentEval CR from ../shared/data) on the real MiniLM: add, train, transfer to it.

The spec is read out of the "Your own tasks" example in docs/custom-tasks.md, so the example is what is tested.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from cli_helpers import run_cli

from transferkit.composition.transfer import TransferJob, transfer
from transferkit.registry import open_registry
from transferkit.training.loop import TrainingConfig
from transferkit.workflows import SourceJob, train_source

pytestmark = pytest.mark.real

CUSTOM_TASKS_PAGE = Path(__file__).resolve().parents[2] / "docs" / "custom-tasks.md"


def documented_spec() -> str:
    page = CUSTOM_TASKS_PAGE.read_text()
    section = page[page.index("# Your own tasks"):]
    return re.search(r"cat > cr\.toml <<'EOF'\n(.*?)\nEOF\n", section, re.S).group(1) + "\n"


def test_documented_custom_task_trains_and_is_a_transfer_target(shared_data, tmp_path):
    (tmp_path / "cr.toml").write_text(documented_spec())
    url = f"sqlite:///{tmp_path}/r.db"
    added = run_cli("--registry", url, "task", "add", "cr.toml", "--json", "--data-dir", str(shared_data), cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    task = json.loads(added.stdout)["task"]
    assert task["name"] == "senteval/cr" and [f["rows"] for f in task["files"]] == [2405, 1366]
    assert all(f["base"] == "data_dir" and len(f["sha256"]) == 64 for f in task["files"])

    registry = open_registry(url)
    budget = dict(max_steps=4, batch_size=16, seed=1, max_length=64)
    common = dict(data_dir=shared_data, show_progress=False)
    # A cheap source (CB's dev and test sets are small); the documented example uses SST-2.
    source = train_source(registry, SourceJob(task="cb", max_train_examples=64, training=TrainingConfig(**budget), **common))
    expert = transfer(registry, TransferJob(target="cr", training=TrainingConfig(**budget, prompt_lr=2e-3), **common)).expert
    assert expert.task_name == "senteval/cr" and expert.method == "mixture"
    assert set(expert.metrics["test"]) == {"accuracy", "macro_f1"}
    [parent] = registry.lineage_edges(expert.id)["parents"]
    assert parent.parent_id == source.id and parent.role == "source"
    fingerprint = registry.get_run(expert.run_id).data_fingerprint
    assert fingerprint["sizes"] == {"train": 3017, "dev": 377, "test": 377}
    assert fingerprint["protocol"]["split_seed"] == 0 and fingerprint["protocol"]["source"] == "custom"
    assert [f["sha256"] for f in fingerprint["protocol"]["files"]] == [f["sha256"] for f in task["files"]]
