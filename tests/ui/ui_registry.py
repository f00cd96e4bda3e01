"""A small real registry for the UI tests: experts trained on real data, on the session's tiny BERT (2 layers,
hidden 32, the packaged MiniLM's tokenizer) so that the fixture costs seconds, not minutes. Task embeddings still
come from the packaged MiniLM, as always.

`populate(url, data_dir, model)` stores: two LoRA source experts (RTE, MRPC; 10 steps on 64 examples), a `compare`
grid on CB (scratch, spot and pemt, seeds 1 and 2, 4 steps each: pemt cells are gated mixtures of both
sources), a custom task (`team/reviews`, no experts yet), an evaluation, curation (alias, tags, a note), one run still running (this process, fresh
heartbeat), one failed run and one interrupted run. `copy_registry` moves it to another database through bundles.
"""

from __future__ import annotations

from pathlib import Path

import transferkit
from transferkit.composition.compare import Grid, GridBudget, run_grid
from transferkit.registry import open_registry
from transferkit.task_registry import add_task
from transferkit.training.loop import TrainingConfig
from transferkit.workflows import SourceJob, train_source

GRID = Grid(name="g1", targets=["cb"], strategies=["scratch", "spot", "pemt"], seeds=[1, 2],
            budget=GridBudget(max_steps=4, batch_size=8, max_length=96, eval_every=4))


CUSTOM_TASK = """name = "team/reviews"
description = "Given a short product review, the task is to decide whether it is positive or negative."
text_fields = ["text"]
label_names = ["negative", "positive"]

[[files]]
path = "reviews.csv"
"""
REVIEWS = [("a fine kettle", "positive"), ("broke in a week", "negative"), ("works as promised", "positive"),
           ("a waste of money", "negative")] * 5


def populate(url: str, data_dir: Path, model: Path, folder: Path) -> dict[str, str]:
    """Train and curate everything described above into the registry at `url` (the custom task's files go to `folder`);
    returns expert ids by role."""
    store = open_registry(url)
    (folder / "reviews.csv").write_text("text,label\n" + "".join(f"{text},{label}\n" for text, label in REVIEWS))
    (folder / "task.toml").write_text(CUSTOM_TASK)
    add_task(store, folder / "task.toml", None)
    ids = {}
    for task in ("rte", "mrpc"):
        expert = train_source(store, SourceJob(
            task=task, method="lora", model=str(model), data_dir=data_dir, name=f"{task}-lora", max_train_examples=64,
            show_progress=False,
            training=TrainingConfig(max_steps=10, batch_size=16, max_length=96, eval_every=5, eval_batch_size=128, seed=1),
            command=["transferkit", "train-source", task, "--max-steps", "10"],
        ))
        ids[task] = expert.id
    run_grid(store, GRID, data_dir, str(model), show_progress=False)
    store.close()
    with transferkit.Registry(url, data_dir=data_dir) as registry:
        rte = registry.get("rte-lora")
        rte.tag("reviewed", stage="prod")
        rte.set_note("RTE source for the CB grid")
        registry.set_alias("nli", rte)
        rte.evaluate("rte", split="dev")
        ids["pemt"] = registry.get("g1-cb-pemt-s1").id
        ids["spot"] = registry.get("g1-cb-spot-s1").id
    add_runs(url)
    return ids


def add_runs(url: str, artifacts: str | None = None) -> None:
    """A run of this process with a fresh heartbeat (alive), one that failed and one stopped by a signal."""
    store = open_registry(url, artifacts)
    store.start_run("train-source", ["transferkit", "train-source", "sst2"], {"job": {"task": "glue/sst2"}}, 3, {}, {}, {})
    failed = store.start_run("transfer", ["transferkit", "transfer", "--target", "rte"], {"job": {"target": "glue/rte"}}, 4, {}, {}, {})
    store.finish_run(failed.id, "failed", {}, error="RuntimeError: training diverged at step 3")
    stopped = store.start_run("train-source", ["transferkit", "train-source", "qnli"], {"job": {"task": "glue/qnli"}}, 5, {}, {}, {})
    store.finish_run(stopped.id, "interrupted", {}, error="interrupted at step 40 (SIGTERM); checkpoint written")
    store.close()


def copy_registry(source: str, source_artifacts: str, target: str, target_artifacts: str, folder: Path, model: Path) -> None:
    """Every expert of `source` into `target` through bundles (records, artifacts, curation); evaluations and the
    extra runs and the custom task (which has no expert to bring it along) are added again. Nothing is retrained."""
    with (transferkit.Registry(source, artifacts=source_artifacts) as origin,
          transferkit.Registry(target, artifacts=target_artifacts) as destination):
        experts = origin.experts(limit=1000, order="created")
        for number, expert in enumerate(experts):
            bundle = folder / f"{number}.transferkit.tar.gz"
            expert.export(bundle, with_sources=True)
            destination.import_expert(bundle, model=str(model))
        for expert in experts:
            for evaluation in expert.evaluations:
                fields = evaluation.to_dict()
                destination.store.add_evaluation(**{k: fields[k] for k in (
                    "expert_id", "task_name", "split", "metric", "metrics", "interval", "examples", "data_fingerprint", "details")})
        for record in origin.store.list_tasks():
            if destination.store.get_task(record.name) is None:
                destination.store.upsert_task(record)
    add_runs(target, target_artifacts)
