"""`Expert`: one stored expert as a Python object that prints well, loads as a model, predicts and evaluates."""

from __future__ import annotations

import html
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferkit.registry import Deletion, EvaluationRecord, ExpertCuration, ExpertRecord

if TYPE_CHECKING:
    from transferkit.accounting import ExpertCost
    from transferkit.api.registry import Registry
    from transferkit.inference import ExpertModel, Input, Prediction
    from transferkit.lineage import LineageGraph


class Expert:
    """A stored expert of a `Registry`: its record, curation and evaluations; `load()` gives a ready `ExpertModel`.

    The loaded model is kept, so repeated `predict` calls pay for loading once (`load(precision=...)` replaces it).
    """

    def __init__(self, registry: Registry, record: ExpertRecord) -> None:
        self.registry = registry
        self.record = record
        self._model: ExpertModel | None = None

    # what it is

    @property
    def id(self) -> str:
        return self.record.id

    @property
    def name(self) -> str:
        return self.record.name

    @property
    def task(self) -> str:
        return self.record.task_name

    @property
    def method(self) -> str:
        return self.record.method

    @property
    def metrics(self) -> dict:
        return self.record.metrics

    def score(self, split: str = "test") -> float | None:
        """The primary metric on `split` ("dev" or "test") recorded when it was trained."""
        value = self.metrics.get(split, {}).get(self.metrics.get("primary"))
        return float(value) if isinstance(value, (int, float)) else None

    @property
    def curation(self) -> ExpertCuration:
        """Note, tags and aliases (read now: someone else may have changed them)."""
        return self.registry.store.curation(self.id)

    @property
    def evaluations(self) -> list[EvaluationRecord]:
        return self.registry.store.list_evaluations(expert_id=self.id)

    def to_dict(self) -> dict[str, Any]:
        return {**self.record.to_dict(), "curation": self.curation.to_dict()}

    def details(self, *, verify: bool = True) -> dict[str, Any]:
        """Everything `transferkit inspect --json` shows: record, artifact (sha256 checked when `verify`), task, run,
        own and amortized cost, lineage edges, curation and evaluations."""
        from transferkit.inspection import expert_details

        return expert_details(self.registry.store, self.record, verify=verify)

    def lineage(self, direction: str = "ancestors", max_depth: int = 64) -> LineageGraph:
        """What it was made from (`"ancestors"`) or what was made from it (`"descendants"`), with provenance."""
        from transferkit.lineage import build_lineage

        return build_lineage(self.registry.store, self.record, direction, max_depth)

    def cost(self) -> ExpertCost:
        """Own and amortized training cost (see `transferkit.accounting`)."""
        from transferkit.accounting import expert_cost

        return expert_cost(self.registry.store, self.id)

    def __repr__(self) -> str:
        primary = self.metrics.get("primary")
        score = self.score()
        shown = f", test {primary}={score:.4f}" if score is not None else ""
        return f"Expert({self.name!r}, id={self.id!r}, task={self.task!r}, method={self.method!r}{shown})"

    def _repr_html_(self) -> str:
        curation = self.curation
        rows = [
            ("id", self.id), ("task", self.task), ("method", self.method),
            ("params", f"{self.record.trainable_params:,}"), ("backbone", self.record.backbone_id),
            ("dev", self.metrics.get("dev")), ("test", self.metrics.get("test")),
            ("aliases", ", ".join(curation.aliases) or "-"),
            ("tags", ", ".join(f"{k}={v}" if v else k for k, v in curation.tags.items()) or "-"),
            ("note", curation.note or "-"),
            ("created", f"{self.record.created_at:%Y-%m-%d %H:%M} UTC"),
        ]
        body = "".join(f"<tr><th style='text-align:left'>{key}</th><td>{html.escape(str(value))}</td></tr>" for key, value in rows)
        return f"<table><caption>expert <b>{html.escape(self.name)}</b></caption>{body}</table>"

    # using it

    def load(self, *, model: str | None = None, precision: str = "fp32") -> ExpertModel:
        """The expert as a ready model on its backbone (artifacts verified; a mixture's sources too)."""
        from transferkit.inference import load_predictor

        self._model = load_predictor(self.registry.store, self.record, model=model, precision=precision)
        return self._model

    def predict(self, inputs: Iterable[Input], *, batch_size: int = 64, show_progress: bool = False) -> list[Prediction]:
        """Predictions for texts (or text pairs for pair tasks), in order."""
        model = self._model or self.load()
        return model.predict(inputs, batch_size=batch_size, show_progress=show_progress)

    def evaluate(
        self, task: str | None = None, *, file: str | Path | None = None, split: str = "test",
        label_map: dict[str, str] | None = None, seed: int | None = None, columns: dict[str, str] | None = None,
        label_column: str = "label", batch_size: int = 64, show_progress: bool = False,
    ) -> EvaluationRecord:
        """Score on a task's split or a labelled file (its columns named like the task's inputs, or mapped with
        `columns` {input field: column}); the result is stored on the expert and returned."""
        from transferkit.evaluation import EvaluationJob, evaluate_expert

        job = EvaluationJob(
            task=task, data_file=Path(file) if file is not None else None, split=split, label_map=dict(label_map or {}),
            seed=seed, data_dir=self.registry.data_dir, batch_size=batch_size, columns=dict(columns or {}),
            label_column=label_column, show_progress=show_progress,
        )
        model = self._model or self.load()
        return evaluate_expert(self.registry.store, model, job)

    # curating it

    def tag(self, *keys: str, **tags: str) -> ExpertCuration:
        """Add tags: bare keys (`tag("reviewed")`) and/or key=value pairs (`tag(stage="prod")`)."""
        return self.registry.store.set_tags(self.id, {**dict.fromkeys(keys, ""), **tags})

    def untag(self, *keys: str) -> ExpertCuration:
        return self.registry.store.remove_tags(self.id, keys)

    def set_note(self, note: str | None) -> ExpertCuration:
        return self.registry.store.set_note(self.id, note)

    def set_alias(self, alias: str) -> str | None:
        """Point `alias` at this expert (moving it if it pointed elsewhere); returns the id it pointed at before."""
        return self.registry.store.set_alias(alias, self.id)

    def delete(self, *, force: bool = False) -> Deletion:
        """Remove this expert from the registry (refused while others were made from it, unless `force`)."""
        return self.registry.store.delete_expert(self.id, force=force)

    def export(self, path: str | Path, *, format: str = "bundle", with_sources: bool = False) -> dict:
        """Write a bundle file (`format="bundle"`) or a PEFT adapter folder (`format="peft"`)."""
        from transferkit.interop import export_expert

        return export_expert(self.registry.store, self.record, format, Path(path), with_sources=with_sources,
                             model=self.registry.recorded_model(self.record))
