"""Restoring records written by another registry (a bundle being imported) exactly as they are.

Everything is checked before the first write, so a refusal leaves no blob and no row behind; records
already stored with the same content are kept, a clash of content, id or name is refused.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import asdict

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from transferkit.errors import InvalidInputError, NotFoundError
from transferkit.registry.artifacts import ArtifactStore
from transferkit.registry.curation import restore_curation
from transferkit.registry.entities import EvaluationRecord, ExpertCuration, ExpertRecord, LineageEdge, RunRecord, TaskRecord
from transferkit.registry.evaluations import check_split
from transferkit.registry.lineage_queries import checked_lineage
from transferkit.registry.mapping import dev_score, require_name, run_record, run_row, to_entity
from transferkit.registry.rows import CounterRow, EvaluationRow, ExpertAliasRow, ExpertRow, LineageEdgeRow, RunRow, TaskRow


class SqlRestore:
    """`RegistryStore.restore` over the registry's SQLAlchemy session (mixed into `SqlAlchemyStore`)."""

    _transaction: Callable[..., AbstractContextManager[Session]]  # SqlAlchemyStore's: one short transaction
    artifacts: ArtifactStore

    def restore(
        self,
        tasks: Sequence[TaskRecord],
        runs: Sequence[RunRecord],
        experts: Sequence[tuple[ExpertRecord, bytes]],
        edges: Sequence[LineageEdge],
        curation: Sequence[ExpertCuration] = (),
        evaluations: Sequence[EvaluationRecord] = (),
    ) -> list[ExpertRecord]:
        given = {expert.id for expert, _ in experts}
        strangers = sorted({item.expert_id for item in curation} - given)
        if strangers:
            raise InvalidInputError(f"curation is given for experts that are not being restored: {', '.join(strangers)}")
        unscored = sorted({item.expert_id for item in evaluations} - given)
        if unscored:
            raise InvalidInputError(f"evaluations are given for experts that are not being restored: {', '.join(unscored)}")
        for evaluation in evaluations:
            check_split(evaluation.split)
        for task in tasks:
            require_name(task.name, "task name")
        for expert, blob in experts:
            require_name(expert.name, "expert name")
            if hashlib.sha256(blob).hexdigest() != expert.artifact_sha256 or len(blob) != expert.artifact_bytes:
                raise InvalidInputError(f"the artifact given for expert {expert.name} ({expert.id}) does not match its sha256")
        strays = sorted({edge.child_id for edge in edges} - given)
        if strays:
            raise InvalidInputError(f"lineage edges lead into experts that are not being restored: {', '.join(strays)}")
        for child in given:  # roles are names, and no parent appears twice in one role for the same child
            checked_lineage([(e.parent_id, e.role, e.weight) for e in edges if e.child_id == child])
        run_rows = {run.id: run_row(run) for run in runs}
        with self._transaction() as session:
            # Everything is checked before the first write, so a refusal leaves no blob and no row behind.
            new_tasks = [task for task in tasks if _is_new_task(session, task)]
            new_runs = [run for run in runs if _is_new_run(session, run)]
            new_experts = [(expert, blob) for expert, blob in experts if _is_new_expert(session, expert)]
            new_evaluations = [evaluation for evaluation in evaluations if _is_new_evaluation(session, evaluation)]
            stored = set(session.scalars(select(ExpertRow.id).where(ExpertRow.id.in_({e.parent_id for e in edges}))))
            missing = sorted({edge.parent_id for edge in edges} - stored - given)
            if missing:
                raise NotFoundError(
                    f"lineage parent expert(s) {', '.join(missing)} are neither being restored nor in this registry; "
                    "restore them first (export with --with-sources)"
                )
            known_runs = set(run_rows) | set(session.scalars(select(RunRow.id).where(RunRow.id.in_({e.run_id for e, _ in new_experts}))))
            for expert, _ in new_experts:
                if expert.run_id not in known_runs:
                    raise NotFoundError(f"expert {expert.name} ({expert.id}) needs run {expert.run_id}, which is neither given nor stored")
            if new_tasks:  # restored tasks take fresh revisions, so incremental search indexes see them
                bump = update(CounterRow).where(CounterRow.name == "tasks").values(value=CounterRow.value + len(new_tasks))
                last = session.execute(bump.returning(CounterRow.value)).scalar_one()
                for revision, task in enumerate(new_tasks, start=last - len(new_tasks) + 1):
                    session.add(TaskRow(**asdict(task), revision=revision))
            session.add_all(run_rows[run.id] for run in new_runs)
            session.flush()  # tasks and runs before the experts that reference them
            for expert, blob in new_experts:
                uri, _, _ = self.artifacts.put(blob)  # the blob goes first: a row must never point at a missing file
                if uri != expert.artifact_uri:
                    raise InvalidInputError(
                        f"expert {expert.name} ({expert.id}) records artifact uri {expert.artifact_uri!r}, but its content "
                        f"is stored at {uri!r}; the record was edited"
                    )
                session.add(ExpertRow(**asdict(expert), dev_score=dev_score(expert.metrics)))  # ranked like any other
            session.flush()  # experts before the edges that reference them (SQLite checks FKs per statement)
            added = {expert.id for expert, _ in new_experts}
            session.add_all(
                LineageEdgeRow(parent_id=e.parent_id, child_id=e.child_id, role=e.role, weight=e.weight)
                for e in edges if e.child_id in added
            )
            session.flush()
            taken = dict(session.execute(select(ExpertAliasRow.alias, ExpertAliasRow.expert_id)).all())
            restore_curation(session, curation, taken)
            # Evaluations travel with their expert, whether it was just added or already here.
            session.add_all(EvaluationRow(**asdict(evaluation)) for evaluation in new_evaluations)
            session.flush()
            return [expert for expert, _ in new_experts]


def _is_new_task(session: Session, task: TaskRecord) -> bool:
    """True if the task is new; False if the same task is stored; refused if another task has its name."""
    row = session.get(TaskRow, task.name)
    if row is None:
        return True
    if (row.description, row.spec) != (task.description, task.spec):
        raise InvalidInputError(
            f"task {task.name!r} is already in this registry with a different description or definition; "
            "the records being restored need their own"
        )
    return False


def _is_new_run(session: Session, run: RunRecord) -> bool:
    """True if the run is new; False if the same run is stored; refused if a different run has its id."""
    row = session.get(RunRow, run.id)
    if row is None:
        return True
    if run_record(row) != run:
        raise InvalidInputError(f"run {run.id} is already in this registry with different content; it cannot be restored over")
    return False


def _is_new_evaluation(session: Session, evaluation: EvaluationRecord) -> bool:
    """True if the evaluation is new; False if the same one is stored; refused if another has its id."""
    row = session.get(EvaluationRow, evaluation.id)
    if row is None:
        return True
    if to_entity(EvaluationRecord, row) != evaluation:
        raise InvalidInputError(f"evaluation {evaluation.id} is already in this registry with different content; it cannot be restored over")
    return False


def _is_new_expert(session: Session, expert: ExpertRecord) -> bool:
    """True if the expert is new; False if the same expert is stored; refused on a clash of id or name."""
    row = session.get(ExpertRow, expert.id)
    if row is not None:
        if to_entity(ExpertRecord, row) != expert:
            raise InvalidInputError(
                f"expert id {expert.id} is already in this registry as {row.name} with different content; "
                "it cannot be restored over"
            )
        return False
    holder = session.scalar(select(ExpertRow.id).where(ExpertRow.name == expert.name))
    if holder is not None:
        raise InvalidInputError(
            f"an expert named {expert.name!r} already exists here with another id ({holder}); "
            "rename or remove it before restoring"
        )
    return True
