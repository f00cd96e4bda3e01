"""The expert registry: tasks, runs (with cost), experts (with verified artifacts) and their lineage.

Open one with `open_registry()`; everything it returns is a plain record from
`transferkit.registry.entities`.
"""

from transferkit.registry.artifacts import ArtifactStore, FsspecArtifactStore, LocalArtifactStore, open_artifact_store
from transferkit.registry.entities import (
    RUN_STATUSES,
    Deletion,
    Dependent,
    EvaluationRecord,
    ExpertCuration,
    ExpertGroup,
    ExpertRecord,
    LineageEdge,
    RunRecord,
    TaskExperts,
    TaskMatch,
    TaskRecord,
)
from transferkit.registry.abstract_store import ExpertReader, RegistryStore
from transferkit.registry.connection import open_registry
from transferkit.registry.sql_store import SqlAlchemyStore

__all__ = [
    "RUN_STATUSES",
    "ArtifactStore",
    "Deletion",
    "Dependent",
    "EvaluationRecord",
    "ExpertCuration",
    "ExpertGroup",
    "ExpertReader",
    "ExpertRecord",
    "FsspecArtifactStore",
    "LineageEdge",
    "LocalArtifactStore",
    "RegistryStore",
    "RunRecord",
    "SqlAlchemyStore",
    "TaskExperts",
    "TaskMatch",
    "TaskRecord",
    "open_artifact_store",
    "open_registry",
]
