"""Choosing source experts for a target task.

Without `--sources`, candidates are the registry's experts on the same backbone
whose method the strategy can use (LoRA or adapter for the mixtures, prompts for
ATTEMPT), excluding experts of the target task itself and experts made by
`transfer`. Only the most common method among them is kept (prompts: also the
most common prompt length, which ATTEMPT needs to match), then one expert per
source task (the best on its own dev metric), ranked by how alike the two tasks are:
the mean of two cosine similarities, between their one-sentence descriptions'
embeddings and between their *data* embeddings (the mean embedding of a seeded
sample of each task's training inputs, stored on the task when an expert is
trained for it; `transferkit.embedding`). A description says what a task asks; the
data says what its inputs look like (a description can be terse or misleading).
Where either task has no data embedding yet, the description alone ranks it. Both
scores are kept on the ranking. `--top-k` keeps the best k; without it all are kept
up to MAX_SOURCES, so a big registry cannot make one transfer arbitrarily expensive.

Selection never reads every expert: one grouped count per (task, method), the registry's
similarity search over the candidate tasks, then one query for the best expert of each kept task.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from datetime import datetime

import numpy as np

from transferkit.embedding import embedder_id
from transferkit.errors import IncompatibleBackboneError, InvalidInputError, NotFoundError
from transferkit.methods import METHODS
from transferkit.registry import ExpertRecord, RegistryStore

MAX_SOURCES = 16


@dataclass(frozen=True)
class TaskQuery:
    """What selection compares sources with: the target's description embedding and, if known, its data embedding."""

    description: np.ndarray
    data: np.ndarray | None = None


@dataclass(frozen=True)
class RankedSource:
    expert: ExpertRecord
    similarity: float  # what ranks: the mean of the two similarities below, or the description's alone if any candidate task has no data embedding
    description_similarity: float | None = None
    data_similarity: float | None = None

    def to_dict(self) -> dict:
        return {"id": self.expert.id, "name": self.expert.name, "task": self.expert.task_name,
                "method": self.expert.method, "similarity": round(self.similarity, 6),
                "description_similarity": _rounded(self.description_similarity),
                "data_similarity": _rounded(self.data_similarity)}


def _rounded(value: float | None) -> float | None:
    return None if value is None else round(value, 6)


def target_embedding(description: str) -> np.ndarray:
    """The target's description embedding, computed without writing anything (selection runs before validation ends)."""
    from transferkit.embedding import embed_texts

    return embed_texts([description])[0]


def task_scores(registry: RegistryStore, query: TaskQuery, tasks: set[str]) -> dict[str, tuple[float, float, float | None]]:
    """Task -> (ranking score, description similarity, data similarity or None) for every task in `tasks`."""
    described = {m.task_name: m.similarity for m in registry.nearest_tasks(query.description, embedder_id(), among=tasks)}
    missing = sorted(tasks - described.keys())
    if missing:
        raise NotFoundError(f"task {missing[0]} has no description embedding in the registry; train an expert for it first")
    data: dict[str, float] = {}
    if query.data is not None:
        for record in registry.list_tasks(sorted(tasks)):
            if record.data_embedding is not None and record.embedder_id == embedder_id():
                data[record.name] = float(np.dot(np.asarray(record.data_embedding, dtype=np.float32), query.data))
    use_data = data.keys() == described.keys()  # one scale for every candidate: the data term only if all have it
    return {
        task: ((similarity + data[task]) / 2 if use_data else similarity, similarity, data.get(task))
        for task, similarity in described.items()
    }


def _ranked(expert: ExpertRecord, scores: dict[str, tuple[float, float, float | None]]) -> RankedSource:
    return RankedSource(expert, *scores[expert.task_name])


def rank_sources(registry: RegistryStore, query: TaskQuery, experts: list[ExpertRecord]) -> list[RankedSource]:
    """The given experts ranked by their task's similarity to the target (ties by expert name)."""
    scores = task_scores(registry, query, {e.task_name for e in experts})
    return sorted((_ranked(e, scores) for e in experts), key=lambda r: (-r.similarity, r.expert.name))


def select_sources(
    registry: RegistryStore,
    target_task: str,
    query: TaskQuery,
    backbone_id: str,
    sources: list[str] | None,
    top_k: int | None,
    methods: frozenset[str] | None = None,
) -> list[RankedSource]:
    """Ranked sources for a transfer; explicit `sources` keep their given set but are ranked too.

    `methods` are the expert methods the strategy can use (default: the composable ones).
    """
    methods = methods or composable_methods()
    if top_k is not None and top_k < 1:
        raise InvalidInputError(f"--top-k must be at least 1, got {top_k}")
    limit = min(top_k or MAX_SOURCES, MAX_SOURCES)
    if not sources:
        return _auto_sources(registry, target_task, query, backbone_id, limit, methods)
    chosen = [registry.get_expert(reference) for reference in sources]
    for expert in chosen:
        if expert.backbone_id != backbone_id:
            raise IncompatibleBackboneError(
                f"source {expert.name} was trained on backbone {expert.backbone_id}, not {backbone_id}; "
                "pass sources trained with the same --model"
            )
        if expert.method not in methods:
            raise InvalidInputError(
                f"source {expert.name} is an expert of method {expert.method}, which this strategy cannot use; "
                f"pass {_listed(methods)} experts"
            )
    if len({e.id for e in chosen}) != len(chosen):
        raise InvalidInputError("--sources names the same expert twice")
    return rank_sources(registry, query, chosen)[:limit]


def composable_methods() -> frozenset[str]:
    """Methods whose experts stack into the gated mixture."""
    return frozenset(name for name, method in METHODS.items() if method.composable)


def _listed(methods: frozenset[str]) -> str:
    return " or ".join(sorted(methods))


def _auto_sources(
    registry: RegistryStore, target_task: str, query: TaskQuery, backbone_id: str, limit: int, methods: frozenset[str]
) -> list[RankedSource]:
    # Experts made by `transfer` are not candidates: a grid's results would otherwise depend on the order it ran in.
    groups = [
        g for g in registry.count_experts_by_task_and_method(
            backbone_id=backbone_id, methods=sorted(methods), exclude_run_kind="transfer"
        )
        if g.task_name != target_task
    ]
    if not groups:
        raise NotFoundError(
            f"the registry has no {_listed(methods)} experts on backbone {backbone_id} for other tasks; "
            "train some with `transferkit train-source` or pass --sources"
        )
    # One method per mixture: the most common composable method among the candidates (ties: the newest expert's).
    totals: dict[str, tuple[int, datetime]] = {}
    for g in groups:
        count, newest = totals.get(g.method, (0, g.newest))
        totals[g.method] = (count + g.count, max(newest, g.newest))
    method = max(totals, key=lambda m: totals[m])
    scores = task_scores(registry, query, {g.task_name for g in groups if g.method == method})
    ordered = sorted(scores.values(), key=lambda score: -score[0])
    # Keep every task tied with the last kept one: the expert names decide between them below.
    cutoff = ordered[min(limit, len(ordered)) - 1][0]
    kept = {task: score for task, score in scores.items() if score[0] >= cutoff}
    # Per task, the candidate with the best dev metric (ties: the newest), all in one query.
    best = registry.best_experts_per_task(
        kept, 1, method=method, backbone_id=backbone_id, exclude_run_kind="transfer"
    )
    ranked = [_ranked(best[task].best[0], scores) for task in kept]
    # Prompts compose only at one length: keep the most common among the chosen experts.
    length = Counter(r.expert.config.get("num_virtual_tokens") for r in ranked).most_common(1)[0][0]
    ranked = [r for r in ranked if r.expert.config.get("num_virtual_tokens") == length]
    return sorted(ranked, key=lambda r: (-r.similarity, r.expert.name))[:limit]
