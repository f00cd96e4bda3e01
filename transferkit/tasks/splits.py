"""Examples, the train/dev/test split protocol and data fingerprints.

Protocol (REFERENCE.md §3, the ATTEMPT / MPT / DePT convention), deterministic
for a given seed:

* small tasks (`TaskSpec.size == "small"`): train = official train; the official
  validation set is shuffled with the seed and halved, the first ``n // 2`` to
  dev and the rest to test (RTE 277 -> dev 138, test 139). When examples carry
  a `group` (MultiRC question ids) whole groups are assigned, so the answer
  options of one question never straddle dev and test.
* large tasks: 1,000 seeded train examples are held out as dev, the rest is
  train; the official validation set is test.
* ``max_train_examples``: a seeded subsample of train taken after the split, so
  dev and test do not depend on it.

Selection is random but every split keeps the examples in source-file order.
Each random choice draws from its own stream, seeded by
``"transferkit:<task name>:<purpose>:<seed>"`` (Python's `random`, whose
string seeding is stable across runs and platforms), so local files and the
Hub produce identical splits when they hold the same rows.

Fingerprints are sha256 hex digests of canonical JSON (``sort_keys=True``,
``separators=(",", ":")``): per split, of the list of ``[texts, label, group]``;
overall, of ``[train, dev, test]`` as three such lists (nested, so moving an
example across a split boundary changes it).
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from typing import Sequence

from transferkit.errors import DataError
from transferkit.tasks.catalog import TaskSpec

LARGE_TASK_DEV_SIZE = 1000
SPLIT_NAMES = ("train", "dev", "test")


@dataclass(frozen=True)
class Example:
    """One model input: 1 or 2 texts (a single sentence or a pair) and its label."""

    texts: tuple[str, ...]
    label: int | float
    group: str | None = None


@dataclass(frozen=True)
class TaskSplits:
    """The three splits of a task, how they were made and their fingerprints (computed, never passed in)."""

    task: TaskSpec
    train: list[Example]
    dev: list[Example]
    test: list[Example]
    protocol: dict
    fingerprint: str = field(init=False)
    split_fingerprints: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        # Computed here so a fingerprint can never disagree with the examples it describes.
        encoded = {name: _canonical([_example_json(e) for e in getattr(self, name)]) for name in SPLIT_NAMES}
        object.__setattr__(self, "split_fingerprints", {name: _sha256(text) for name, text in encoded.items()})
        # Canonical JSON of [train, dev, test] is the three split encodings joined, so reuse them.
        overall = "[" + ",".join(encoded[name] for name in SPLIT_NAMES) + "]"
        object.__setattr__(self, "fingerprint", _sha256(overall))

    @property
    def sizes(self) -> dict[str, int]:
        return {name: len(getattr(self, name)) for name in SPLIT_NAMES}

    def to_dict(self) -> dict:
        return {
            "task": self.task.name,
            "protocol": self.protocol,
            "sizes": self.sizes,
            "fingerprint": self.fingerprint,
            "split_fingerprints": dict(self.split_fingerprints),
        }


def _example_json(example: Example) -> list:
    return [list(example.texts), example.label, example.group]


def _canonical(payload: list) -> str:
    return json.dumps(payload, sort_keys=True, separators=(",", ":"))


def _sha256(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _rng(task: TaskSpec, purpose: str, seed: int) -> random.Random:
    return random.Random(f"transferkit:{task.name}:{purpose}:{seed}")


def split_small(task: TaskSpec, validation: Sequence[Example], seed: int) -> tuple[list[Example], list[Example], dict]:
    """Halve the official validation set into (dev, test), by group when examples are grouped."""
    keys = [e.group if e.group is not None else i for i, e in enumerate(validation)]
    grouped = any(e.group is not None for e in validation)
    units = list(dict.fromkeys(keys))
    if len(units) < 2:
        raise DataError(f"{task.name}: the validation set has {len(units)} example(s); at least 2 are needed to halve it into dev and test")
    _rng(task, "validation-halves", seed).shuffle(units)
    dev_units = set(units[: len(units) // 2])
    dev = [e for e, k in zip(validation, keys) if k in dev_units]
    test = [e for e, k in zip(validation, keys) if k not in dev_units]
    info = {"name": "small: official validation shuffled and halved into dev/test; train = official train"}
    if grouped:
        info["halved_by"] = f"group ({len(units)} groups, {len(dev_units)} to dev)"
    return dev, test, info


def split_large(task: TaskSpec, train: Sequence[Example], seed: int) -> tuple[list[Example], list[Example], dict]:
    """Hold out `LARGE_TASK_DEV_SIZE` seeded train examples as dev; returns (train, dev)."""
    if len(train) <= LARGE_TASK_DEV_SIZE:
        raise DataError(
            f"{task.name}: the train set has {len(train)} examples; the large-task protocol holds out "
            f"{LARGE_TASK_DEV_SIZE} of them as dev, so it needs more"
        )
    order = list(range(len(train)))
    _rng(task, "train-holdout", seed).shuffle(order)
    held = set(order[:LARGE_TASK_DEV_SIZE])
    rest = [e for i, e in enumerate(train) if i not in held]
    dev = [e for i, e in enumerate(train) if i in held]
    info = {"name": f"large: {LARGE_TASK_DEV_SIZE:,} seeded train examples held out as dev; official validation = test"}
    return rest, dev, info


def subsample_train(task: TaskSpec, train: Sequence[Example], limit: int, seed: int) -> list[Example]:
    """A seeded subsample of at most `limit` (>= 1) examples, in their original order."""
    if limit >= len(train):
        return list(train)
    keep = set(_rng(task, "train-subsample", seed).sample(range(len(train)), limit))
    return [e for i, e in enumerate(train) if i in keep]


def hold_out_counts(task: TaskSpec, total: int, fractions: dict[str, float]) -> dict[str, int]:
    """How many of `total` examples `hold_out` moves into each split: round(fraction x total), at least one."""
    counts = {name: max(1, round(fraction * total)) for name, fraction in fractions.items()}
    if sum(counts.values()) >= total:
        wanted = ", ".join(f"{count} {name}" for name, count in counts.items())
        raise DataError(f"{task.name}: {total} examples are too few to hold out {wanted} and keep any for training")
    return counts


def hold_out(
    task: TaskSpec, examples: Sequence[Example], fractions: dict[str, float], seed: int
) -> tuple[list[Example], dict[str, list[Example]], dict]:
    """Move seeded random fractions of `examples` into new splits, e.g. {"dev": 0.1, "test": 0.1}.

    Returns (the rest, the held-out splits, info); every split keeps source-file order.
    """
    counts = hold_out_counts(task, len(examples), fractions)
    order = list(range(len(examples)))
    _rng(task, "hold-out", seed).shuffle(order)
    assigned: dict[int, str] = {}
    start = 0
    for name, count in counts.items():
        assigned.update((i, name) for i in order[start : start + count])
        start += count
    held = {name: [e for i, e in enumerate(examples) if assigned.get(i) == name] for name in counts}
    rest = [e for i, e in enumerate(examples) if i not in assigned]
    info = {"name": "custom: " + ", ".join(f"{fractions[n]:g} of the examples held out as {n}" for n in counts), "held_out": counts}
    return rest, held, info
