"""Starting a target's task head from its sources' heads, where their labels mean the same.

A source expert trained on MNLI already has a head that tells entailment from
contradiction; a CB or RTE target would otherwise learn its head from zero. A
target label is matched to source labels, in this order:

1. by name (case, spaces, "-" and "_" ignored): CB's `entailment` <- MNLI's `entailment`;
2. by negation: a target label "not X" / "non X" / "no X" takes every source label
   except X (RTE's `not_entailment` <- MNLI's `neutral` and `contradiction`), and a
   source label "not X" serves every target label other than X;
3. the labels still unmatched, by similarity of the label names' embeddings (the packaged
   embedder), one to one: the assignment with the highest mean cosine, if it is at least
   `MIN_LABEL_SIMILARITY` and clearly better than any other assignment (`pos` <- `positive`,
   `equivalent` <- `duplicate`; never `1` <- `positive`).

A source maps only if every target label found a match. The target head's row for a
label is the mean of its matched source rows (weights and bias), and several mapped
sources are mixed by their weights (for pemt, the gate's starting weights). A regression
target or source has no labels to map. The mapping is recorded on the new expert.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import torch

MIN_LABEL_SIMILARITY = 0.45
MIN_SIMILARITY_MARGIN = 0.1
_MAX_PERMUTED_LABELS = 6
_NEGATION = re.compile(r"^(?:not|non|no)\s+(.+)$")


def _normal(label: str) -> str:
    return " ".join(re.sub(r"[_\-]+", " ", label.strip().lower()).split())


def _negated(label: str) -> str | None:
    match = _NEGATION.match(_normal(label))
    return match.group(1) if match else None


@dataclass(frozen=True)
class LabelMapping:
    """For one source: each target label's source labels, and how they were matched."""

    source: str
    rows: dict[str, list[str]]
    how: dict[str, str]

    def to_dict(self) -> dict:
        return {"source": self.source, "rows": self.rows, "how": self.how}


def map_labels(target: tuple[str, ...], source: tuple[str, ...], source_name: str) -> LabelMapping | None:
    """How `source`'s labels cover `target`'s, or None if some target label has no match."""
    by_name = {_normal(label): label for label in source}
    rows: dict[str, list[str]] = {}
    how: dict[str, str] = {}
    for label in target:
        key = _normal(label)
        negated = _negated(label)
        if key in by_name:
            rows[label], how[label] = [by_name[key]], "name"
        elif negated is not None and negated in by_name and len(source) > 1:
            rows[label], how[label] = [s for s in source if _normal(s) != negated], f"negation of {by_name[negated]}"
        else:
            # A source "not X" covers any target label that is not X, when X is one of the target's labels.
            others = [s for s in source if (x := _negated(s)) is not None and x != key and x in {_normal(t) for t in target}]
            if others:
                rows[label], how[label] = others, "negation"
    missing = [label for label in target if label not in rows]
    if missing:
        for label, matched, similarity in _similar(missing, [s for s in source if s not in _used(rows)]):
            rows[label], how[label] = [matched], f"similarity {similarity:.2f}"
    if any(label not in rows for label in target):
        return None
    return LabelMapping(source_name, {label: rows[label] for label in target}, {label: how[label] for label in target})


def _used(rows: dict[str, list[str]]) -> set[str]:
    return {label for matched in rows.values() for label in matched}


def _similar(targets: list[str], sources: list[str]) -> list[tuple[str, str, float]]:
    """A one-to-one match of equally many labels by label-name embedding similarity, or none.

    Single label names embed noisily (MiniLM puts "negative" nearer "positive" than "neg"), so no
    pair is judged alone: the assignment with the highest mean similarity is taken when that mean
    is at least `MIN_LABEL_SIMILARITY` and beats every other assignment by `MIN_SIMILARITY_MARGIN`.
    """
    if not targets or len(targets) != len(sources) or len(targets) > _MAX_PERMUTED_LABELS:
        return []
    from transferkit.embedding import embed_texts

    vectors = embed_texts([_normal(label) for label in targets + sources])
    similarity = vectors[: len(targets)] @ vectors[len(targets):].T
    scored = sorted(
        ((sum(float(similarity[i, j]) for i, j in enumerate(order)) / len(targets), order)
         for order in itertools.permutations(range(len(sources)))),
        reverse=True,
    )
    best, order = scored[0]
    runner_up = scored[1][0] if len(scored) > 1 else -1.0
    if best < MIN_LABEL_SIMILARITY or best - runner_up < MIN_SIMILARITY_MARGIN:
        return []
    return [(targets[i], sources[j], float(similarity[i, j])) for i, j in enumerate(order)]


def mapped_head(
    mapping: LabelMapping, source_labels: tuple[str, ...], weight: torch.Tensor, bias: torch.Tensor, target: tuple[str, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """The source head's rows rearranged for the target's labels: (C_target, d) weight and (C_target,) bias."""
    index = {label: i for i, label in enumerate(source_labels)}
    rows = [[index[s] for s in mapping.rows[label]] for label in target]
    return (
        torch.stack([weight[r].mean(dim=0) for r in rows]),
        torch.stack([bias[r].mean(dim=0) for r in rows]),
    )


def mix_heads(heads: list[tuple[float, torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """The weighted mean of mapped heads (weights renormalised over the heads given)."""
    total = sum(w for w, _, _ in heads)
    weight = sum(w / total * h for w, h, _ in heads)
    bias = sum(w / total * b for w, _, b in heads)
    return weight, bias  # type: ignore[return-value]
