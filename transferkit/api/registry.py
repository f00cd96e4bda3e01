"""`Registry`: the Python entry point. Open a registry by URL, find experts, train, transfer, compare, use and curate.

Every `transferkit` command is a thin layer over this API or the building blocks it calls, so a notebook and
the command line do the same thing::

    import transferkit

    registry = transferkit.Registry("sqlite:///experts.db", data_dir="../shared/data")
    expert = registry.train_source("sst2", method="lora", max_steps=20)
    expert.predict(["a gripping, funny film", "two hours I will never get back"])
    expert.evaluate("sst2")                    # stored on the expert, with a 95% interval
    registry.set_alias("sentiment", expert)     # now registry.get("sentiment") is that expert
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferkit.api.expert import Expert
from transferkit.errors import DataError
from transferkit.registry import Deletion, EvaluationRecord, ExpertRecord, RegistryStore, RunRecord, open_registry

if TYPE_CHECKING:
    from datetime import datetime

    from transferkit.accounting import ExpertCost
    from transferkit.tasks import TaskSpec

DATA_DIR_ENV = "TRANSFERKIT_DATA_DIR"


class Registry:
    """A registry of experts (SQLite by default, or any SQLAlchemy URL such as postgresql://...).

    `url` and `artifacts` default like the CLI's `--registry` / `--artifacts` (and their environment variables);
    `data_dir` is the folder of GLUE/SuperGLUE files used when training or evaluating on catalog tasks
    (default: `TRANSFERKIT_DATA_DIR`, else the Hugging Face Hub). `read_only=True` opens an existing registry
    at the current schema without ever writing it (what `transferkit ui` browses); training or curating it fails.
    """

    def __init__(
        self, url: str | None = None, *, artifacts: str | Path | None = None, data_dir: str | Path | None = None,
        read_only: bool = False,
    ) -> None:
        self.store: RegistryStore = open_registry(url, artifacts, read_only=read_only)
        folder = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
        self.data_dir = Path(folder).expanduser() if folder else None
        if self.data_dir is not None and not self.data_dir.is_dir():
            raise DataError(f"data dir {str(self.data_dir)!r} is not a folder; pass data_dir= pointing at your GLUE/SuperGLUE files")

    def __repr__(self) -> str:
        return f"Registry({self.store.engine.url.render_as_string(hide_password=True)!r}, experts={self.store.count_experts()})"  # type: ignore[attr-defined]

    def close(self) -> None:
        """Release database connections."""
        self.store.close()  # type: ignore[attr-defined]

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *_: object) -> None:
        self.close()

    # finding experts

    def get(self, expert: str | Expert | ExpertRecord) -> Expert:
        """An expert by id, unique id prefix (4+ characters), name or alias."""
        if isinstance(expert, Expert):
            return expert
        record = expert if isinstance(expert, ExpertRecord) else self.store.get_expert(expert)
        return Expert(self, record)

    __getitem__ = get

    def experts(
        self, *, task: str | None = None, method: str | None = None, tag: str | None = None, strategy: str | None = None,
        text: str | None = None, order: str = "newest", limit: int = 50, offset: int = 0,
    ) -> list[Expert]:
        """Stored experts, one page: filtered by task, method, tag (`key` or `key=value`), transfer strategy and/or
        `text` (words found in the id, name, task, method, backbone, note, tags or aliases), newest first or by
        `order` ("best", or a sort key like "params" / "-cost": see `transferkit.registry.expert_query`)."""
        filters = self._expert_filters(task, tag)
        records = self.store.list_experts(method=method, strategy=strategy, text=text, order=order, limit=limit, offset=offset, **filters)
        return [Expert(self, record) for record in records]

    def count(
        self, *, task: str | None = None, method: str | None = None, tag: str | None = None, strategy: str | None = None,
        text: str | None = None,
    ) -> int:
        """How many experts `experts()` would page through with the same filters."""
        return self.store.count_experts(method=method, strategy=strategy, text=text, **self._expert_filters(task, tag))

    def _expert_filters(self, task: str | None, tag: str | None) -> dict[str, Any]:
        from transferkit.registry.curation import parse_tag

        tag_filter = None
        if tag is not None:
            key, value = parse_tag(tag)
            tag_filter = (key, value if "=" in tag else None)
        return {"task_name": self._task_name(task) if task is not None else None, "tag": tag_filter}

    def costs(self, *, task: str | None = None, since: datetime | None = None) -> list[ExpertCost]:
        """Own and amortized cost of the experts (of one task / created since), oldest first; what `transferkit cost`
        totals with `transferkit.accounting.aggregate`. Amortization always uses the whole registry."""
        from transferkit.accounting import expert_costs

        return expert_costs(self.store, task_name=self._task_name(task) if task is not None else None, since=since)

    def runs(self, *, statuses: Sequence[str] | None = None, kind: str | None = None) -> list[RunRecord]:
        """Runs (training and composition jobs), newest first, e.g. `statuses=["running", "failed"]`."""
        return self.store.list_runs(kind=kind, statuses=statuses)

    def tasks(self) -> list[TaskSpec]:
        """The task catalog and this registry's custom tasks."""
        from transferkit.task_registry import registered_tasks
        from transferkit.tasks import list_tasks

        return [*list_tasks(), *registered_tasks(self.store)]

    def search(self, description: str, *, limit: int = 5, per_task: int = 3) -> list[dict[str, Any]]:
        """The registry's tasks nearest to a description, each with its best experts (by primary dev metric)."""
        from transferkit.embedding import embed_texts, embedder_id

        matches = self.store.nearest_tasks(embed_texts([description])[0], embedder_id(), limit=limit)
        groups = self.store.best_experts_per_task([m.task_name for m in matches], per_task)
        return [
            {"task": m.task_name, "similarity": round(m.similarity, 6),
             "experts": [Expert(self, e) for e in (groups[m.task_name].best if m.task_name in groups else [])]}
            for m in matches
        ]

    def best_on(self, task: str, *, split: str | None = None, limit: int = 10) -> list[tuple[Expert, EvaluationRecord]]:
        """Experts evaluated on a task (or `file:<name>`), best stored evaluation first, without running anything."""
        name = task if task.startswith("file:") else self._task_name(task)
        return [(Expert(self, e), ev) for e, ev in self.store.best_on(name, split=split, limit=limit)]

    # training and composing

    def train_source(
        self, task: str, *, method: str = "lora", method_options: Sequence[str] = (), model: str | None = None,
        name: str | None = None, max_steps: int | None = None, epochs: float | None = None, batch_size: int = 32,
        lr: float | None = None, seed: int = 42, max_train_examples: int | None = None, precision: str = "fp32",
        show_progress: bool = False, **training: Any,
    ) -> Expert:
        """Train a source expert for a catalog or custom task and store it (see `transferkit train-source --help`)."""
        from transferkit.training.loop import TrainingConfig
        from transferkit.workflows import SourceJob, train_source

        config = TrainingConfig(max_steps=max_steps, epochs=epochs, batch_size=batch_size, seed=seed, precision=precision, **training)  # type: ignore[arg-type]
        job = SourceJob(
            task=task, method=method, method_options=list(method_options), model=model, data_dir=self.data_dir, name=name, lr=lr,
            training=config, max_train_examples=max_train_examples, show_progress=show_progress, command=_command("train_source"),
        )
        return Expert(self, train_source(self.store, job))

    def transfer(
        self, target: str, *, strategy: str = "pemt", sources: Sequence[str | Expert] | None = None, top_k: int | None = None,
        method: str | None = None, model: str | None = None, name: str | None = None, max_steps: int | None = None,
        epochs: float | None = None, batch_size: int = 32, seed: int = 42, max_train_examples: int | None = None,
        show_progress: bool = False, **options: Any,
    ) -> Expert:
        """Compose registry experts into a new expert for `target` (see `transferkit transfer --help`);
        other `TransferJob` fields (route_top_k, sparsity_weight, gate_input, ...) go in `options`."""
        from transferkit.composition.transfer import TRANSFER_PROMPT_LR, TransferJob, transfer
        from transferkit.training.loop import TrainingConfig

        config = TrainingConfig(max_steps=max_steps, epochs=epochs, batch_size=batch_size, seed=seed, prompt_lr=TRANSFER_PROMPT_LR)
        chosen = [s.id if isinstance(s, Expert) else s for s in sources] if sources is not None else None
        job = TransferJob(
            target=target, strategy=strategy, sources=chosen, top_k=top_k, method=method, model=model, data_dir=self.data_dir,
            name=name, training=config, max_train_examples=max_train_examples, show_progress=show_progress,
            command=_command("transfer"), **options,
        )
        return Expert(self, transfer(self.store, job).expert)

    def compare(
        self, targets: Sequence[str], *, strategies: Sequence[str] = ("scratch", "spot", "average", "pemt"),
        seeds: Sequence[int] = (1, 2, 3), grid: str = "compare", max_steps: int | None = None, model: str | None = None,
        show_progress: bool = False,
    ) -> list[dict[str, Any]]:
        """Run (or resume) the transfer grid and return its rows (mean, interval, paired difference to scratch)."""
        from transferkit.composition.compare import Grid, GridBudget, collect, run_grid

        spec = Grid(name=grid, targets=list(targets), strategies=list(strategies), seeds=list(seeds), budget=GridBudget(max_steps=max_steps))
        run_grid(self.store, spec, self.data_dir, model, show_progress=show_progress)
        return collect(self.store, spec)

    # using experts

    def load(self, expert: str | Expert, *, model: str | None = None, precision: str = "fp32"):  # -> ExpertModel
        """A stored expert as a ready model (`ExpertModel`), like `ExpertModel.from_pretrained`."""
        return self.get(expert).load(model=model, precision=precision)

    def predict(self, expert: str | Expert, inputs: Sequence[Any], **options: Any) -> list:
        """Predictions of one expert for texts (or pairs); see `Expert.predict`."""
        return self.get(expert).predict(inputs, **options)

    def evaluate(self, expert: str | Expert, task: str | None = None, **options: Any) -> EvaluationRecord:
        """Score an expert and store the evaluation; see `Expert.evaluate`."""
        return self.get(expert).evaluate(task, **options)

    # curation

    def set_alias(self, alias: str, expert: str | Expert) -> str | None:
        """Point `alias` at an expert (atomically moving it); returns the id it pointed at before."""
        return self.store.set_alias(alias, self.get(expert).id)

    def remove_alias(self, alias: str) -> str:
        return self.store.remove_alias(alias)

    def aliases(self) -> dict[str, str]:
        """Every alias and the expert id it points at."""
        return self.store.list_aliases()

    def delete(self, expert: str | Expert, *, force: bool = False) -> Deletion:
        """Delete an expert (refused while others were made from it, unless `force`); `gc` reclaims its blob."""
        return self.get(expert).delete(force=force)

    # moving experts

    def export(self, expert: str | Expert, path: str | Path, *, format: str = "bundle", with_sources: bool = False) -> dict:
        return self.get(expert).export(path, format=format, with_sources=with_sources)

    def import_expert(self, path: str | Path, *, task: str | None = None, name: str | None = None, model: str | None = None) -> list[Expert]:
        """Import a bundle file or a PEFT adapter folder; returns the experts added."""
        from transferkit.interop import import_path

        summary = import_path(self.store, Path(path), task=task, name=name, model=model, command=_command("import_expert"))
        return [self.get(added["id"]) for added in summary["added"]]

    def recorded_model(self, expert: ExpertRecord) -> str | None:
        """The `--model` an expert was trained with (None: the packaged default)."""
        from transferkit.inference import recorded_model

        return recorded_model(self.store, expert)

    def _task_name(self, task: str) -> str:
        from transferkit.task_registry import resolve_registered_task

        return resolve_registered_task(self.store, task).name


def _command(call: str) -> list[str]:
    """What a run records as its command when it was started from Python."""
    return ["python", Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "-", f"transferkit.Registry.{call}"]
