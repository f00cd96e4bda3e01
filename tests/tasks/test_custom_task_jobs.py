"""Custom tasks in the registry: add, resolve, train a source on one, transfer to one (tiny random BERT)."""

from __future__ import annotations

import sqlite3

import pytest

from transferkit.composition.transfer import TransferJob, transfer
from transferkit.errors import DataError, InvalidInputError, NotFoundError
from transferkit.task_registry import add_task, registered_tasks, resolve_registered_task
from transferkit.training.loop import TrainingConfig
from transferkit.workflows import SourceJob, train_source

from test_custom_tasks import REVIEWS, write_csv, write_spec

TINY_BUDGET = dict(max_steps=3, batch_size=4, eval_every=3, seed=1)


def test_add_resolve_and_re_add(registry, tmp_path):
    write_csv(tmp_path / "reviews.csv")
    spec = write_spec(tmp_path, '[[files]]\npath = "reviews.csv"\n')
    added = add_task(registry, spec, None)
    assert added.status == "added"
    stored = registry.get_task("toy/reviews")
    assert stored.spec["kind"] == "custom" and stored.spec["files"][0]["sha256"] == added.task.files[0].sha256
    assert stored.embedding and len(stored.embedding) == 384
    assert [t.name for t in registered_tasks(registry)] == ["toy/reviews"]
    for name in ("reviews", "Toy/Reviews", "toy/reviews"):
        assert resolve_registered_task(registry, name) == added.task
    assert resolve_registered_task(registry, "rte").name == "glue/rte"  # the catalog still resolves as before
    with pytest.raises(NotFoundError, match="did you mean toy/reviews"):
        resolve_registered_task(registry, "reviewz")
    assert add_task(registry, spec, None).status == "unchanged"
    # A different definition under the same name needs --replace.
    changed = write_spec(tmp_path, '[[files]]\npath = "reviews.csv"\n[split]\ndev_fraction = 0.3\n')
    with pytest.raises(InvalidInputError, match="--replace"):
        add_task(registry, changed, None)
    assert add_task(registry, changed, None, replace=True).status == "replaced"
    assert registry.get_task("toy/reviews").spec["holdout"]["dev_fraction"] == 0.3
    with pytest.raises(InvalidInputError, match="confused with the registered task toy/reviews"):
        add_task(registry, write_spec(tmp_path, '[[files]]\npath = "reviews.csv"\n', name="toy/re-views"), None)


def test_train_on_a_custom_task_then_transfer_to_another(registry, tmp_path, tiny_model_dir):
    write_csv(tmp_path / "reviews.csv")
    write_csv(tmp_path / "target.csv", [(f"{t} indeed", label) for t, label in REVIEWS])
    source_spec = write_spec(tmp_path, '[[files]]\npath = "reviews.csv"\n')
    # --task-file: checked and registered with the expert, no separate `task add`.
    source = train_source(registry, SourceJob(
        task=None, task_file=source_spec, model=str(tiny_model_dir), show_progress=False,
        training=TrainingConfig(**TINY_BUDGET),
    ))
    assert source.task_name == "toy/reviews" and registry.get_task("toy/reviews").spec["kind"] == "custom"
    run = registry.get_run(source.run_id)
    assert run.data_fingerprint["protocol"]["source"] == "custom" and run.data_fingerprint["sizes"]["dev"] == 2
    assert run.hyperparams["job"]["task"] == "toy/reviews"
    # The task now has an expert: its data can no longer be swapped under it.
    with pytest.raises(InvalidInputError, match="cannot be replaced"):
        add_task(registry, write_spec(tmp_path, '[[files]]\npath = "target.csv"\n'), None, replace=True)

    target_spec = tmp_path / "target.toml"
    target_spec.write_text(write_spec(tmp_path, '[[files]]\npath = "target.csv"\n', name="toy/target").read_text())
    add_task(registry, target_spec, None)
    outcome = transfer(registry, TransferJob(
        target="target", model=str(tiny_model_dir), show_progress=False, training=TrainingConfig(**TINY_BUDGET),
    ))
    expert = outcome.expert
    assert expert.task_name == "toy/target" and expert.method == "mixture"
    assert [r.expert.id for r in outcome.ranking] == [source.id]
    [edge] = registry.lineage_edges(expert.id)["parents"]
    # One source: it takes all of the gate but the zero expert's share.
    zero = expert.extra["gate_weights"]["zero_expert"]["mean"]
    assert edge.parent_id == source.id and edge.role == "source" and edge.weight + zero == pytest.approx(1.0, abs=1e-5)


def test_task_file_must_agree_with_the_task_name(registry, tmp_path, tiny_model_dir):
    write_csv(tmp_path / "reviews.csv")
    spec = write_spec(tmp_path, '[[files]]\npath = "reviews.csv"\n')
    with pytest.raises(InvalidInputError, match="not the task toy/reviews"):
        train_source(registry, SourceJob(task="rte", task_file=spec, model=str(tiny_model_dir), show_progress=False))
    assert registry.list_tasks() == []


def test_refusals_come_before_any_run(registry, tmp_path, tiny_model_dir):
    with pytest.raises(InvalidInputError, match="--task-file"):
        train_source(registry, SourceJob(task=None, model=str(tiny_model_dir), show_progress=False))
    path = write_csv(tmp_path / "reviews.csv")
    add_task(registry, write_spec(tmp_path, '[[files]]\npath = "reviews.csv"\n'), None)
    write_csv(path, REVIEWS[:4])
    with pytest.raises(DataError, match="changed since toy/reviews was registered"):
        train_source(registry, SourceJob(task="reviews", model=str(tiny_model_dir), show_progress=False))
    with sqlite3.connect(tmp_path / "r.db") as db:
        assert db.execute("SELECT count(*) FROM runs").fetchone() == (0,)
