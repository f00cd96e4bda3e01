"""What code produced a run: transferkit version, git commit, key package versions."""

from __future__ import annotations

import platform
import subprocess
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from transferkit.version import __version__

_KEY_PACKAGES = ("torch", "transformers", "peft", "accelerate", "safetensors", "tokenizers", "numpy", "sqlalchemy", "alembic")


def git_commit() -> str | None:
    """Commit of the source tree transferkit runs from, when it is a git checkout (editable installs)."""
    source = Path(__file__).resolve().parent
    try:
        result = subprocess.run(
            ["git", "-C", str(source), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    if result.returncode != 0:
        return None
    dirty = subprocess.run(
        ["git", "-C", str(source), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5, check=False
    )
    return result.stdout.strip() + ("-dirty" if dirty.stdout.strip() else "")


def code_version() -> dict:
    return {"transferkit": __version__, "git_commit": git_commit()}


def package_versions() -> dict:
    versions = {"python": platform.python_version()}
    for name in _KEY_PACKAGES:
        try:
            versions[name] = version(name)
        except PackageNotFoundError:
            versions[name] = None
    return versions
