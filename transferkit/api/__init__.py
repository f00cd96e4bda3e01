"""The public Python API: `Registry` (open, find, train, transfer, compare, use, curate), `Expert` and `ExpertModel`.

See `transferkit.api.registry` for a short example. Imported lazily from `transferkit` itself, so
`import transferkit` stays cheap and the read-only CLI commands never load torch.
"""

from transferkit.api.expert import Expert
from transferkit.api.registry import Registry
from transferkit.inference import ExpertModel, Prediction
from transferkit.registry import Deletion, EvaluationRecord, ExpertCuration

__all__ = ["Deletion", "EvaluationRecord", "Expert", "ExpertCuration", "ExpertModel", "Prediction", "Registry"]
