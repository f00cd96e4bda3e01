"""The public Python API: `Registry` (open, find, train, transfer, compare, use, curate), `Expert` and `ExpertModel`.

See `transferkit.api.registry` for a short example. Imported lazily from `transferkit` itself, so
`import transferkit` stays cheap and the read-only CLI commands never load torch; `ExpertModel` and
`Prediction` (which need torch) load on first use, so browsing a registry (`transferkit ui`) does not either.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from transferkit.api.expert import Expert
from transferkit.api.registry import Registry
from transferkit.registry import Deletion, EvaluationRecord, ExpertCuration

if TYPE_CHECKING:
    from transferkit.inference import ExpertModel, Prediction

__all__ = ["Deletion", "EvaluationRecord", "Expert", "ExpertCuration", "ExpertModel", "Prediction", "Registry"]


def __getattr__(name: str) -> Any:
    if name in ("ExpertModel", "Prediction"):
        from transferkit import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'transferkit.api' has no attribute {name!r}")
