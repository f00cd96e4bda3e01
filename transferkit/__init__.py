"""transferkit: multi-task transfer with parameter-efficient experts.

The Python API (`transferkit.Registry`, `transferkit.Expert`, `transferkit.ExpertModel`, ...) lives in
`transferkit.api` and is imported on first use: `import transferkit` alone loads no torch, so the
read-only commands (`transferkit list`, `inspect`) start fast.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from transferkit.version import __version__

if TYPE_CHECKING:
    from transferkit.api import Deletion, EvaluationRecord, Expert, ExpertCuration, ExpertModel, Prediction, Registry

_API = ("Deletion", "EvaluationRecord", "Expert", "ExpertCuration", "ExpertModel", "Prediction", "Registry")
__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    if name in _API:
        from transferkit import api

        return getattr(api, name)
    raise AttributeError(f"module 'transferkit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_API])
