"""The task catalog: GLUE and SuperGLUE classification/regression tasks.

Every task has a canonical name ``<benchmark>/<short name>`` ("glue/rte",
"superglue/cb"). `resolve_task` also accepts a bare short name ("rte", "SST-2",
"sts-b"), case-insensitively and ignoring "-", "_" and spaces, when it names
exactly one task.

RTE is the one task that exists in both benchmarks (same data, different file
formats). A bare "rte" resolves to **glue/rte** through the explicit
`BARE_NAME_ALIASES` table: GLUE is the benchmark the protocol and the
`transfer --target rte` examples refer to; write "superglue/rte" for the other.
Any other bare name shared by several tasks is rejected as ambiguous.

`input_fields` are the raw inputs of a task, named as the Hugging Face Hub
columns; how they become the one or two strings given to the tokenizer is
documented in `transferkit.tasks.loading`. `label_names` are in the order of
the integer labels (the Hub's ClassLabel order). `metrics` are the official
metrics, primary first (REFERENCE.md §3); `size` selects the split protocol
("small": official validation halved into dev/test; "large": 1,000 train
examples held out as dev, official validation is test).
"""

from __future__ import annotations

import difflib
import re
from dataclasses import asdict, dataclass
from typing import ClassVar, Iterable

from transferkit.errors import InvalidInputError, NotFoundError


@dataclass(frozen=True)
class TaskSpec:
    """What a task is: its inputs, labels, metrics and split protocol size."""

    name: str
    benchmark: str
    short_name: str
    description: str
    input_fields: tuple[str, ...]
    label_names: tuple[str, ...] | None
    metrics: tuple[str, ...]
    size: str

    kind: ClassVar[str] = "catalog"  # "custom" for tasks registered from a user's spec file

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        """Number of model outputs: 1 for regression, else the number of classes."""
        return 1 if self.label_names is None else len(self.label_names)

    def to_dict(self) -> dict:
        data = asdict(self)
        data["input_fields"] = list(self.input_fields)
        data["label_names"] = list(self.label_names) if self.label_names is not None else None
        data["metrics"] = list(self.metrics)
        data["is_regression"] = self.is_regression
        data["num_labels"] = self.num_labels
        data["kind"] = self.kind
        return data


_RTE_DESCRIPTION = (
    "Given a premise sentence and a hypothesis sentence, the task is to determine whether the hypothesis "
    "can be inferred from the premise."
)
_BOOL = ("False", "True")


def _spec(
    benchmark: str,
    short_name: str,
    description: str,
    input_fields: tuple[str, ...],
    label_names: tuple[str, ...] | None,
    metrics: tuple[str, ...],
    size: str,
) -> TaskSpec:
    return TaskSpec(f"{benchmark}/{short_name}", benchmark, short_name, description, input_fields, label_names, metrics, size)


_SPECS = (
    _spec(
        "glue", "cola",
        "Given a single English sentence, the task is to determine whether it is a grammatically acceptable sentence.",
        ("sentence",), ("unacceptable", "acceptable"), ("matthews",), "small",
    ),
    _spec(
        "glue", "sst2",
        "Given a sentence from a movie review, the task is to determine whether the sentiment it expresses is "
        "positive or negative.",
        ("sentence",), ("negative", "positive"), ("accuracy",), "large",
    ),
    _spec(
        "glue", "mrpc",
        "Given a pair of sentences from online news articles, the task is to determine whether the two sentences "
        "are paraphrases with the same meaning.",
        ("sentence1", "sentence2"), ("not_equivalent", "equivalent"), ("accuracy", "f1"), "small",
    ),
    _spec(
        "glue", "qqp",
        "Given a pair of questions from the question-answering website Quora, the task is to determine whether "
        "the two questions are semantically equivalent.",
        ("question1", "question2"), ("not_duplicate", "duplicate"), ("accuracy", "f1"), "large",
    ),
    _spec(
        "glue", "stsb",
        "Given a pair of sentences, the task is to predict a score from 0 to 5 indicating how similar the two "
        "sentences are in meaning.",
        ("sentence1", "sentence2"), None, ("pearson", "spearman"), "small",
    ),
    _spec(
        "glue", "mnli",
        "Given a premise sentence and a hypothesis sentence, the task is to determine whether the premise entails "
        "the hypothesis, contradicts it, or neither.",
        ("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), ("accuracy",), "large",
    ),
    _spec(
        "glue", "qnli",
        "Given a question and a sentence from a Wikipedia paragraph, the task is to determine whether the sentence "
        "contains the answer to the question.",
        ("question", "sentence"), ("entailment", "not_entailment"), ("accuracy",), "large",
    ),
    _spec(
        "glue", "rte", _RTE_DESCRIPTION,
        ("sentence1", "sentence2"), ("entailment", "not_entailment"), ("accuracy",), "small",
    ),
    _spec(
        "glue", "wnli",
        "Given a sentence containing an ambiguous pronoun and a second sentence in which the pronoun is replaced by "
        "a possible referent, the task is to determine whether the second sentence is entailed by the first.",
        ("sentence1", "sentence2"), ("not_entailment", "entailment"), ("accuracy",), "small",
    ),
    _spec(
        "superglue", "boolq",
        "Given a short passage from Wikipedia and a yes/no question about it, the task is to determine whether the "
        "answer to the question is yes.",
        ("question", "passage"), _BOOL, ("accuracy",), "small",
    ),
    _spec(
        "superglue", "cb",
        "Given a short text and a hypothesis that is a clause embedded in it, the task is to determine whether the "
        "text entails the hypothesis, contradicts it, or neither.",
        ("premise", "hypothesis"), ("entailment", "contradiction", "neutral"), ("accuracy", "macro_f1"), "small",
    ),
    _spec(
        "superglue", "copa",
        "Given a premise sentence and two alternative sentences, the task is to choose the alternative that is more "
        "plausibly the cause or the effect of the premise.",
        ("premise", "question", "choice1", "choice2"), ("choice1", "choice2"), ("accuracy",), "small",
    ),
    _spec(
        "superglue", "multirc",
        "Given a paragraph, a question about it and a candidate answer, the task is to determine whether the "
        "candidate answer to the question is correct.",
        ("paragraph", "question", "answer"), _BOOL, ("f1", "exact_match"), "small",
    ),
    _spec(
        "superglue", "wic",
        "Given a target word and two sentences that both contain it, the task is to determine whether the word is "
        "used with the same meaning in both sentences.",
        ("word", "sentence1", "sentence2"), _BOOL, ("accuracy",), "small",
    ),
    _spec(
        "superglue", "wsc",
        "Given a sentence containing a pronoun and a noun phrase, the task is to determine whether the pronoun "
        "refers to that noun phrase.",
        ("text", "span1_text", "span2_text"), _BOOL, ("accuracy",), "small",
    ),
    _spec(
        "superglue", "rte", _RTE_DESCRIPTION,
        ("premise", "hypothesis"), ("entailment", "not_entailment"), ("accuracy",), "small",
    ),
)

CATALOG: dict[str, TaskSpec] = {spec.name: spec for spec in _SPECS}

# Bare names that would be ambiguous, pinned to one task on purpose (see module docstring).
BARE_NAME_ALIASES: dict[str, str] = {"rte": "glue/rte"}

def list_tasks() -> list[TaskSpec]:
    """All catalog tasks, GLUE first, in catalog order."""
    return list(CATALOG.values())


def normalize_name(text: str) -> str:
    """The form task names are compared in: case, spaces, "-" and "_" ignored."""
    # "SST-2", "sts_b", "Super_GLUE" -> "sst2", "stsb", "superglue": users type the official spellings.
    return re.sub(r"[\s_\-]", "", text.strip().lower())


def resolve_task(name: str, registered: Iterable[TaskSpec] = ()) -> TaskSpec:
    """Find a task by canonical name ("glue/rte") or bare short name ("rte", "SST-2").

    `registered` adds tasks known beyond the catalog (custom tasks from the registry); they
    are matched the same way, and their names never shadow a catalog task's (checked when added).
    """
    if not name or not name.strip():
        raise InvalidInputError("task name is empty; run `transferkit tasks` to list the available tasks")
    candidates = [*CATALOG.values(), *registered]
    key = normalize_name(name)
    if "/" in key:
        spec = next((spec for spec in candidates if normalize_name(spec.name) == key), None)
        if spec is not None:
            return spec
    else:
        if key in BARE_NAME_ALIASES:
            return CATALOG[BARE_NAME_ALIASES[key]]
        matches = [spec for spec in candidates if normalize_name(spec.short_name) == key]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise InvalidInputError(
                f"task name {name!r} is ambiguous: it matches {', '.join(s.name for s in matches)}; "
                "use the full benchmark/task name"
            )
    raise NotFoundError(
        f"unknown task {name!r}{_suggestion(key, candidates)}; run `transferkit tasks` to list the available tasks"
    )


def _suggestion(key: str, candidates: list[TaskSpec]) -> str:
    targets: dict[str, list[str]] = {}
    for spec in candidates:
        targets.setdefault(normalize_name(spec.name), []).append(spec.name)
        targets.setdefault(normalize_name(spec.short_name), []).append(spec.name)
    close = difflib.get_close_matches(key, list(targets), n=3, cutoff=0.6)
    # A close bare name and a close full name often point at the same task: list each task once.
    names = list(dict.fromkeys(name for candidate in close for name in targets[candidate]))
    return f" (did you mean {', '.join(names)}?)" if names else ""
