"""Using a stored expert: load it as a ready model and predict labels, probabilities or scores for texts.

`load_predictor(registry, expert)` rebuilds the expert on the backbone it was trained on (every artifact's
sha256 checked, a mixture's sources too) and returns an `ExpertModel`. Its `predict(inputs)` takes one
text per input for single-text tasks, or a pair for pair tasks, tokenises them with the backbone's
tokenizer at the expert's training max length, runs them in length-sorted batches (`predict_outputs`, the
same path evaluation uses) and returns a `Prediction` per input, in order: the label, its softmax
probability and every class's probability, or the score of a regression expert.

Experts hook into a backbone that loaded experts share (backbones are cached per process), so a predictor
attaches its hooks only for the duration of one call, under a process-wide lock: any number of experts can
be loaded side by side and used from several threads.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from transferkit.backbone import Backbone, load_backbone
from transferkit.errors import DataError, InvalidInputError, NotFoundError
from transferkit.modeling import HEAD_PREFIX, TaskModel
from transferkit.registry import ExpertRecord, RegistryStore, open_registry
from transferkit.tasks import Example
from transferkit.tasks.custom import table_rows
from transferkit.training.data import TokenizedSplit, tokenize_examples
from transferkit.training.loop import predict_outputs, stderr_progress
from transferkit.rebuild import load_expert_model

DEFAULT_MAX_LENGTH = 128
DEFAULT_BATCH_SIZE = 64
PRECISIONS = ("fp32", "bf16")
# Hugging Face pipelines' names for the two texts of an input, accepted as file columns too.
HF_COLUMNS = ("text", "text_pair")
_HOOKS = threading.RLock()  # one expert's hooks on a shared backbone at a time

Input = str | Sequence[str]


@dataclass(frozen=True)
class Prediction:
    """One input's prediction: the label and its probability, or for a regression expert the score alone."""

    label: str | None
    label_id: int | None
    score: float  # the label's probability, or the predicted value of a regression expert
    probabilities: dict[str, float] | None

    def to_dict(self) -> dict:
        return {"label": self.label, "label_id": self.label_id, "score": self.score, "probabilities": self.probabilities}


@dataclass(frozen=True)
class ExpertInputs:
    """What an expert reads and predicts: its task's input fields and label names (None: regression)."""

    task_name: str
    input_fields: tuple[str, ...]
    label_names: tuple[str, ...] | None

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    def describe(self) -> str:
        return " and ".join(self.input_fields) if len(self.input_fields) > 1 else self.input_fields[0]


class ExpertModel:
    """A stored expert rebuilt as a ready model: `ExpertModel.from_pretrained("sst2-lora")`, then `model("a fine film")`
    or `model.predict([...])`; `logits` for examples."""

    def __init__(self, expert: ExpertRecord, model: TaskModel, backbone: Backbone, inputs: ExpertInputs, max_length: int) -> None:
        self.expert = expert
        self.model = model
        self.backbone = backbone
        self.inputs = inputs
        self.max_length = max_length
        model.detach()  # hooks go on only while this expert runs (see `_attached`)

    @classmethod
    def from_pretrained(
        cls, expert: str, *, registry: str | RegistryStore | None = None, artifacts: str | Path | None = None,
        model: str | None = None, precision: str = "fp32",
    ) -> ExpertModel:
        """Load a stored expert by id, id prefix, name or alias from a registry URL (default: the user's registry)."""
        store = registry if isinstance(registry, RegistryStore) else open_registry(registry, artifacts)
        return load_predictor(store, store.get_expert(expert), model=model, precision=precision)

    def __call__(self, inputs: Input | Iterable[Input], batch_size: int = DEFAULT_BATCH_SIZE) -> Prediction | list[Prediction]:
        """One prediction for one input (a text, or a pair as a tuple), else one per input, like a transformers pipeline."""
        if isinstance(inputs, str) or (isinstance(inputs, tuple) and all(isinstance(t, str) for t in inputs)):
            return self.predict([inputs], batch_size)[0]
        return self.predict(inputs, batch_size)

    def __repr__(self) -> str:
        labels = "regression" if self.inputs.is_regression else ", ".join(self.inputs.label_names or ())
        return (f"ExpertModel({self.expert.name!r}, task={self.inputs.task_name!r}, inputs={self.inputs.describe()!r}, "
                f"labels=[{labels}], precision={self.model.precision!r})")

    @contextlib.contextmanager
    def _attached(self) -> Iterator[None]:
        with _HOOKS:
            self.model.attach()
            try:
                yield
            finally:
                self.model.detach()

    def examples(self, inputs: Iterable[Input], where: str = "input") -> list[Example]:
        """Checked examples (label 0) from texts or text pairs; a wrong field count or an empty text is refused."""
        wanted = len(self.inputs.input_fields)
        examples = []
        for number, item in enumerate(inputs, start=1):
            texts = (item,) if isinstance(item, str) else tuple(item)
            if len(texts) != wanted:
                raise InvalidInputError(
                    f"{where} {number} has {len(texts)} text(s), but expert {self.expert.name} ({self.inputs.task_name}) "
                    f"reads {wanted}: {self.inputs.describe()}"
                )
            for position, text in enumerate(texts, start=1):
                if not isinstance(text, str) or not text.strip():
                    raise InvalidInputError(f"{where} {number}: text {position} is empty or not text; give non-empty text")
            examples.append(Example(texts, 0.0 if self.inputs.is_regression else 0))
        return examples

    def tokenize(self, examples: Sequence[Example]) -> TokenizedSplit:
        # No disk cache: users' inputs are not kept anywhere.
        return tokenize_examples(examples, self.backbone.tokenizer, self.max_length, self.inputs.is_regression, use_cache=False)

    def logits(self, examples: Sequence[Example], batch_size: int = DEFAULT_BATCH_SIZE, show_progress: bool = False) -> np.ndarray:
        """Raw outputs (N, classes or 1) in input order."""
        if batch_size < 1:
            raise InvalidInputError(f"--batch-size must be at least 1, got {batch_size}")
        split = self.tokenize(examples)
        with self._attached(), stderr_progress(show_progress and len(examples) > 0) as progress:
            return predict_outputs(self.model, split, batch_size, self.backbone.tokenizer.pad_token_id, progress, "predict")

    def predict(self, inputs: Iterable[Input], batch_size: int = DEFAULT_BATCH_SIZE, show_progress: bool = False) -> list[Prediction]:
        """Predictions for texts (single-text experts) or (text, text) pairs (pair experts), in order."""
        return self.decode(self.logits(self.examples(inputs), batch_size, show_progress))

    def decode(self, outputs: np.ndarray) -> list[Prediction]:
        names = self.inputs.label_names
        if names is None:
            return [Prediction(None, None, round(float(value), 6), None) for value in outputs[:, 0]]
        probabilities = torch.softmax(torch.from_numpy(outputs), dim=-1).numpy()
        predictions = []
        for row in probabilities:
            best = int(row.argmax())
            predictions.append(Prediction(names[best], best, round(float(row[best]), 6),
                                          {name: round(float(p), 6) for name, p in zip(names, row)}))
        return predictions


def expert_inputs(registry: RegistryStore, expert: ExpertRecord) -> ExpertInputs:
    """The expert's task's input fields and the labels its head predicts, as stored in the registry."""
    task = registry.get_task(expert.task_name)
    spec = task.spec if task is not None else {}
    fields = spec.get("input_fields")
    if not isinstance(fields, list) or not 1 <= len(fields) <= 2 or not all(isinstance(f, str) for f in fields):
        raise InvalidInputError(f"expert {expert.name}'s task {expert.task_name} does not record its input fields, so it cannot predict")
    names = expert.extra.get("label_names") or spec.get("label_names")
    return ExpertInputs(expert.task_name, tuple(fields), tuple(names) if names else None)


def recorded_model(registry: RegistryStore, expert: ExpertRecord, depth: int = 8) -> str | None:
    """The `--model` the expert was trained with (None: the packaged default). A run that records no job (merge,
    import) takes it from a lineage parent on the same backbone, e.g. the mixture a merged expert was made from."""
    job = registry.get_run(expert.run_id).hyperparams.get("job")
    if isinstance(job, dict):
        return job.get("model")
    for edge in registry.lineage_edges(expert.id)["parents"] if depth else []:
        parent = registry.get_expert(edge.parent_id)
        if parent.backbone_id == expert.backbone_id:
            return recorded_model(registry, parent, depth - 1)
    return None


def load_predictor(
    registry: RegistryStore, expert: ExpertRecord, *, model: str | None = None, precision: str = "fp32",
) -> ExpertModel:
    """Rebuild `expert` (verified) on its backbone, or on `model`, which must be the same weights."""
    if precision not in PRECISIONS:
        raise InvalidInputError(f"--precision must be fp32 or bf16, got {precision!r}")
    inputs = expert_inputs(registry, expert)
    backbone = load_backbone(model if model is not None else recorded_model(registry, expert), precision=precision)
    try:
        task_model = load_expert_model(registry, expert, backbone)
    except NotFoundError as error:  # a mixture whose source was deleted with `delete --force`
        raise NotFoundError(f"expert {expert.name} cannot be loaded: a source it reads is gone ({error})") from None
    head = task_model.export_tensors()[HEAD_PREFIX + "linear.bias"]
    if inputs.label_names is not None and len(inputs.label_names) != head.shape[0]:
        raise InvalidInputError(f"expert {expert.name} has {head.shape[0]} outputs but its task names {len(inputs.label_names)} labels")
    hyperparams = registry.get_run(expert.run_id).hyperparams
    max_length = hyperparams.get("max_length") if isinstance(hyperparams.get("max_length"), int) else DEFAULT_MAX_LENGTH
    return ExpertModel(expert, task_model, backbone, inputs, max_length)


def file_inputs(path: Path, inputs: ExpertInputs, columns: dict[str, str] | None = None) -> list[tuple[str, tuple[str, ...]]]:
    """(where, texts) for every row of a csv/tsv/jsonl/parquet file: columns named like the task's inputs,
    Hugging Face's `text`/`text_pair`, or mapped with `columns` (input field -> column)."""
    return [(where, texts) for where, texts, _ in file_rows(path, inputs, columns)]


def file_rows(
    path: Path, inputs: ExpertInputs, columns: dict[str, str] | None = None, label_column: str | None = None,
) -> Iterator[tuple[str, tuple[str, ...], object]]:
    """(where, texts, raw label or None) for every row; see `file_inputs`."""
    mapping = dict(columns or {})
    unknown = sorted(set(mapping) - set(inputs.input_fields))
    if unknown:
        raise InvalidInputError(f"--column {unknown[0]}=...: {inputs.task_name} has no input {unknown[0]!r} (its inputs: {inputs.describe()})")
    named = [mapping.get(field, field) for field in inputs.input_fields]
    candidates = [named] if mapping else [named, list(HF_COLUMNS[: len(named)])]
    extra = [label_column] if label_column else []
    first_error: DataError | None = None
    for attempt, wanted in enumerate(candidates, start=1):
        try:
            rows = list(table_rows(path, [*wanted, *extra]))
            if rows and not set(wanted + extra) <= set(rows[0][1]):  # jsonl: the reader checks no columns
                where, row = rows[0]
                missing = next(c for c in wanted + extra if c not in row)
                raise DataError(f"{where}: no column {missing!r} (columns: {', '.join(map(str, row))})")
            break
        except DataError as error:
            first_error = first_error or error  # the task's own column names are what to report
            if attempt == len(candidates) or "no column" not in str(error):
                hint = f"; name the columns like the task's inputs ({inputs.describe()}) or map them with --column FIELD=COLUMN"
                raise InvalidInputError(f"{first_error}{hint if 'no column' in str(first_error) else ''}") from None
    if not rows:
        raise InvalidInputError(f"{path} holds no rows")
    for where, row in rows:
        values = []
        for column in wanted:
            value = row.get(column)
            if not isinstance(value, str) or not value.strip():
                raise InvalidInputError(f"{where}: column {column!r} is empty or not text")
            values.append(value)
        yield where, tuple(values), (row.get(label_column) if label_column else None)
