"""Where a registry keeps its database, blobs and checkpoints when it is not told: environment, then per-user defaults.

A SQLite registry keeps its artifacts and checkpoints in folders beside its file; any other database
keeps them in the user data folder.
"""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

from transferkit.registry.artifacts import ArtifactStore, LocalArtifactStore

REGISTRY_ENV = "TRANSFERKIT_REGISTRY"
ARTIFACTS_ENV = "TRANSFERKIT_ARTIFACTS"
LEGACY_ARTIFACTS_ENV = "TRANSFERKIT_ARTIFACT_ROOT"  # the name before fsspec URLs were accepted
CHECKPOINT_ROOT_ENV = "TRANSFERKIT_CHECKPOINT_ROOT"


def user_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("transferkit"))


def artifacts_location(artifacts: str | Path | None, db_file: Path | None) -> str | Path:
    """The artifact store's folder or URL: as given, else from the environment, else the default."""
    beside_db = db_file.with_name(f"{db_file.stem}-artifacts") if db_file else None
    return (
        artifacts or os.environ.get(ARTIFACTS_ENV) or os.environ.get(LEGACY_ARTIFACTS_ENV)
        or beside_db or user_data_dir() / "artifacts"
    )


def checkpoint_location(db_file: Path | None) -> str | Path | None:
    """The checkpoint folder from the environment or beside a SQLite file; None leaves it to the store."""
    checkpoints_beside_db = db_file.with_name(f"{db_file.stem}-checkpoints") if db_file else None
    return os.environ.get(CHECKPOINT_ROOT_ENV) or checkpoints_beside_db


def default_checkpoint_root(artifacts: ArtifactStore) -> Path:
    """Checkpoints are local files: beside a local artifact folder, else in the user data folder."""
    if isinstance(artifacts, LocalArtifactStore):
        return artifacts.root.with_name(f"{artifacts.root.name}-checkpoints")
    return user_data_dir() / "checkpoints"
