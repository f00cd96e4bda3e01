"""Four processes train and register into one registry at the same time: every run and expert lands, no errors.

Each writer process trains real (tiny-model, real RTE data) experts through `train_source` with the
default name, so all four race for the same names, and also registers experts directly in a tight
loop. It runs on SQLite and on a fresh database of the session's throwaway PostgreSQL server.
"""

from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from transferkit.registry import open_registry

WRITERS, TRAININGS, DIRECT = 4, 2, 10


def _writer(url: str, model: str, data: str, worker: int, barrier, results) -> None:
    """One writer process: TRAININGS real trainings and DIRECT direct registrations, all with contested names."""
    made: list[str] = []
    try:
        import torch

        from transferkit.registry import TaskRecord
        from transferkit.training.loop import TrainingConfig
        from transferkit.workflows import SourceJob, train_source

        store = open_registry(url)
        store.upsert_task(TaskRecord("glue/rte", "Recognize textual entailment.", {}, None, None))
        barrier.wait()  # everyone writes at once
        for round_ in range(TRAININGS):
            job = SourceJob(
                task="glue/rte", method="lora", model=model, data_dir=Path(data), max_train_examples=16, show_progress=False,
                training=TrainingConfig(max_steps=3, batch_size=4, eval_every=3, max_length=32, seed=10 * worker + round_),
                checkpoint_every=1, command=[f"writer-{worker}"],
            )
            made.append(train_source(store, job).name)
            for i in range(DIRECT // TRAININGS):
                run = store.start_run("direct", [f"writer-{worker}"], {"i": i}, i, {}, {}, {})
                expert = store.register_expert(
                    run_id=run.id, name="direct", name_is_base=True, task_name="glue/rte", method="lora", config={},
                    backbone={}, backbone_id="bb", trainable_params=2, metrics={},
                    tensors={"w": torch.tensor([float(worker), float(i)])}, tensor_metadata={"format": "transferkit.expert/1"},
                    cost={"wall_seconds": 0.5},
                )
                made.append(expert.name)
        store.close()
        results.put((worker, made, None))
    except BaseException as error:  # noqa: BLE001 - reported to the test, which fails with it
        results.put((worker, made, f"{type(error).__name__}: {error}"))


@pytest.fixture(params=["sqlite", "postgresql"])
def registry_url(request, tmp_path, monkeypatch) -> str:
    monkeypatch.setenv("TRANSFERKIT_ARTIFACT_ROOT", str(tmp_path / "artifacts"))
    monkeypatch.setenv("TRANSFERKIT_CHECKPOINT_ROOT", str(tmp_path / "checkpoints"))
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path}/shared.db"
    return request.getfixturevalue("postgres_server").create_database()


def test_four_processes_write_one_registry(registry_url, tiny_model_dir, shared_data, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # four processes on two cores: no thread oversubscription
    context = multiprocessing.get_context("spawn")
    barrier, results = context.Barrier(WRITERS), context.Queue()
    writers = [
        context.Process(target=_writer, args=(registry_url, str(tiny_model_dir), str(shared_data), worker, barrier, results))
        for worker in range(WRITERS)
    ]
    for process in writers:
        process.start()
    outcomes = sorted(results.get(timeout=900) for _ in writers)
    for process in writers:
        process.join()
    assert [(worker, error) for worker, _, error in outcomes] == [(w, None) for w in range(WRITERS)]
    assert all(process.exitcode == 0 for process in writers)

    store = open_registry(registry_url)
    experts = store.list_experts()
    names = [name for _, made, _ in outcomes for name in made]
    assert len(experts) == len(names) == WRITERS * (TRAININGS + DIRECT)
    assert sorted(e.name for e in experts) == sorted(names)  # every name the writers were told is stored, once
    trained = WRITERS * TRAININGS
    assert {e.name for e in experts if e.method == "lora" and e.backbone_id != "bb"} == {"rte-lora"} | {f"rte-lora-{i}" for i in range(2, trained + 1)}
    assert {e.name for e in experts if e.backbone_id == "bb"} == {"direct"} | {f"direct-{i}" for i in range(2, WRITERS * DIRECT + 1)}
    runs = store.list_runs()
    assert len(runs) == len(experts) and {r.status for r in runs} == {"finished"}
    assert {e.run_id for e in experts} == {r.id for r in runs}
    for expert in experts:
        store.verify_artifact(expert)
    assert list(store.checkpoint_root.iterdir()) == []  # every finished run's checkpoints were removed
    store.close()
