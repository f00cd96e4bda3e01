"""Stored evaluations: an expert scored on a task split or a labelled file, kept so experts can be ranked on
data without retraining (`transferkit evaluate` writes them, `inspect` and `list --evaluated-on` read them)."""

from __future__ import annotations

import abc
import math
import uuid
from collections.abc import Callable, Collection
from contextlib import AbstractContextManager
from datetime import datetime, timezone

from sqlalchemy import func, nulls_last, select
from sqlalchemy.orm import Session

from transferkit.errors import InvalidInputError, NotFoundError
from transferkit.registry.entities import EvaluationRecord, ExpertRecord
from transferkit.registry.mapping import to_entity
from transferkit.registry.rows import EvaluationRow, ExpertRow

SPLITS = ("dev", "test", "file")


def check_split(split: str) -> None:
    """Refuse an evaluation split other than dev, test or file (a stored or a restored evaluation)."""
    if split not in SPLITS:
        raise InvalidInputError(f"an evaluation's split is one of {', '.join(SPLITS)}, not {split!r}")


class EvaluationStore(abc.ABC):
    """The evaluation half of a registry (implemented for SQL databases by `SqlEvaluations`)."""

    @abc.abstractmethod
    def add_evaluation(
        self, *, expert_id: str, task_name: str, split: str, metric: str, metrics: dict, interval: dict | None,
        examples: int, data_fingerprint: dict, details: dict,
    ) -> EvaluationRecord:
        """Store one evaluation of the expert with this exact id."""

    @abc.abstractmethod
    def list_evaluations(self, *, expert_id: str | None = None, task_name: str | None = None) -> list[EvaluationRecord]:
        """Evaluations of one expert and/or on one task, newest first."""

    @abc.abstractmethod
    def count_evaluations(self, expert_ids: Collection[str]) -> dict[str, int]:
        """How many evaluations each of these experts has (0 for none)."""

    @abc.abstractmethod
    def best_on(self, task_name: str, *, split: str | None = None, limit: int = 50) -> list[tuple[ExpertRecord, EvaluationRecord]]:
        """Experts evaluated on `task_name`, best primary score first: each expert's latest evaluation there."""


class SqlEvaluations(EvaluationStore):
    """`EvaluationStore` over the registry's SQLAlchemy session (mixed into `SqlAlchemyStore`)."""

    _transaction: Callable[..., AbstractContextManager[Session]]  # SqlAlchemyStore's: one short transaction

    def add_evaluation(
        self, *, expert_id: str, task_name: str, split: str, metric: str, metrics: dict, interval: dict | None,
        examples: int, data_fingerprint: dict, details: dict,
    ) -> EvaluationRecord:
        check_split(split)
        score = metrics.get(metric)
        score = float(score) if isinstance(score, (int, float)) and math.isfinite(score) else None
        row = EvaluationRow(
            id=uuid.uuid4().hex[:12], expert_id=expert_id, task_name=task_name, split=split, metric=metric, score=score,
            metrics=metrics, interval=interval, examples=int(examples), data_fingerprint=data_fingerprint, details=details,
            created_at=datetime.now(timezone.utc),
        )
        with self._transaction(write=True) as session:
            if session.get(ExpertRow, expert_id) is None:
                raise NotFoundError(f"no expert has the id {expert_id!r}; it may have been deleted")
            session.add(row)
            session.flush()
            return to_entity(EvaluationRecord, row)

    def list_evaluations(self, *, expert_id: str | None = None, task_name: str | None = None) -> list[EvaluationRecord]:
        query = select(EvaluationRow).order_by(EvaluationRow.created_at.desc(), EvaluationRow.id.desc())
        if expert_id is not None:
            query = query.where(EvaluationRow.expert_id == expert_id)
        if task_name is not None:
            query = query.where(EvaluationRow.task_name == task_name)
        with self._transaction() as session:
            return [to_entity(EvaluationRecord, row) for row in session.scalars(query)]

    def count_evaluations(self, expert_ids: Collection[str]) -> dict[str, int]:
        ids = list(expert_ids)
        query = select(EvaluationRow.expert_id, func.count()).where(EvaluationRow.expert_id.in_(ids)).group_by(EvaluationRow.expert_id)
        with self._transaction() as session:
            counts = dict(session.execute(query).all())
        return {i: int(counts.get(i, 0)) for i in ids}

    def best_on(self, task_name: str, *, split: str | None = None, limit: int = 50) -> list[tuple[ExpertRecord, EvaluationRecord]]:
        if limit < 1:
            raise InvalidInputError(f"limit must be at least 1, got {limit}")
        conditions = [EvaluationRow.task_name == task_name] + ([EvaluationRow.split == split] if split else [])
        latest = (
            select(EvaluationRow.id, func.row_number().over(
                partition_by=EvaluationRow.expert_id, order_by=(EvaluationRow.created_at.desc(), EvaluationRow.id.desc()),
            ).label("rank"))
            .where(*conditions)
            .subquery()
        )
        query = (
            select(ExpertRow, EvaluationRow)
            .join(EvaluationRow, EvaluationRow.expert_id == ExpertRow.id)
            .join(latest, (latest.c.id == EvaluationRow.id) & (latest.c.rank == 1))
            .order_by(nulls_last(EvaluationRow.score.desc()), ExpertRow.created_at.desc())
            .limit(limit)
        )
        with self._transaction() as session:
            return [
                (to_entity(ExpertRecord, expert), to_entity(EvaluationRecord, evaluation))
                for expert, evaluation in session.execute(query)
            ]
