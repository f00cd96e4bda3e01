"""Task catalog, data loading, split protocol and metrics for GLUE and SuperGLUE, and custom tasks.

See `transferkit.tasks.catalog` (names, the bare-"rte" rule), `transferkit.tasks.loading`
(file layouts, input encodings, derived subsets, Hub), `transferkit.tasks.splits` (split
protocol, fingerprints), `transferkit.tasks.metrics` (official metrics) and
`transferkit.tasks.custom` (tasks from a TOML spec over the user's own files).
"""

from transferkit.tasks.catalog import BARE_NAME_ALIASES, CATALOG, TaskSpec, list_tasks, resolve_task
from transferkit.tasks.loading import convert_hub_dataset, load_splits
from transferkit.tasks.metrics import METRICS, compute_metrics, primary_metric
from transferkit.tasks.splits import Example, TaskSplits

__all__ = [
    "BARE_NAME_ALIASES",
    "CATALOG",
    "METRICS",
    "Example",
    "TaskSpec",
    "TaskSplits",
    "compute_metrics",
    "convert_hub_dataset",
    "list_tasks",
    "load_splits",
    "primary_metric",
    "resolve_task",
]
