"""MkDocs hook: lay out the sources as the installed `transferkit` package, so the API reference can document
objects from `transferkit.registry` and `transferkit.cli`.

Those packages live in their own top-level folders (registry/, cli/) and are mapped under `transferkit` by
setuptools' `package-dir`; griffe, which reads the sources for mkdocstrings, searches folders only. The hook
builds build/api-src/transferkit/ from symbolic links (transferkit/*, registry, cli, alembic as migrations) at
startup, before the plugins read their configuration (mkdocstrings keeps only search paths that exist then).
"""

from __future__ import annotations

import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MAPPED = {"registry": "registry", "cli": "cli", "migrations": "alembic"}  # as in pyproject's package-dir


def on_startup(**_) -> None:
    package = REPO / "build" / "api-src" / "transferkit"
    if package.parent.exists():
        shutil.rmtree(package.parent)
    package.mkdir(parents=True)
    for entry in (REPO / "transferkit").iterdir():
        if entry.name != "__pycache__":
            (package / entry.name).symlink_to(entry)
    for name, folder in MAPPED.items():
        (package / name).symlink_to(REPO / folder)
