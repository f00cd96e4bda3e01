"""95% intervals for a metric over seeds and test examples, and for paired differences.

A grid cell is one seed's run; each seed also re-splits a small task's official
validation set into dev/test (`transferkit.tasks.splits`). Two sources of noise
matter: which seed (initialisation, batch order, split) and which test examples
(CB's test half has 28: one example is 3.6 points). The interval resamples both,
hierarchically: draw the seeds with replacement, then within each drawn seed its
test examples with replacement (whole groups where examples are grouped, e.g.
MultiRC questions), compute the metric per drawn seed and average. The 2.5th and
97.5th percentiles of that average over `RESAMPLES` draws bound the interval; the
point estimate is the plain mean over seeds.

A paired difference (strategy minus baseline) draws the same seeds and the same
test examples for both sides, so what the two runs of one seed share (the split,
the hard examples) cancels. An interval that contains 0 is a tie.

Metrics are computed for all resamples at once (numpy), matching
`transferkit.tasks.metrics` (tested against it); exact_match falls back to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from transferkit.errors import InvalidInputError
from transferkit.tasks.catalog import TaskSpec
from transferkit.tasks.metrics import METRICS

RESAMPLES = 2000
LEVEL = 0.95


@dataclass(frozen=True)
class Interval:
    """A point estimate and its 95% interval."""

    mean: float
    low: float
    high: float

    def contains(self, value: float) -> bool:
        return self.low <= value <= self.high

    def to_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high}


@dataclass(frozen=True)
class PairedDifference:
    """A strategy minus a baseline over the seeds both have: interval, per-seed differences, wins and losses."""

    interval: Interval
    per_seed: dict[int, float]
    wins: int
    losses: int
    ties: int

    def to_dict(self) -> dict:
        return {**self.interval.to_dict(), "per_seed": self.per_seed, "wins": self.wins, "losses": self.losses, "ties": self.ties}


def metric_interval(
    cells: Sequence[dict], task: TaskSpec, metric: str, resamples: int = RESAMPLES, seed: int = 0
) -> Interval:
    """Mean of `metric` over the cells (one per seed) and its interval over seeds and test examples."""
    if not cells:
        raise InvalidInputError("no cells to summarise")
    rng = np.random.default_rng(seed)
    point = float(np.mean([_metric(cell, task, metric, None)[0] for cell in cells]))
    chosen = rng.integers(0, len(cells), size=(resamples, len(cells)))
    totals = np.zeros(resamples)
    for position, cell in enumerate(cells):
        draws = (chosen == position).sum(axis=1)  # how often each resample drew this seed
        if draws.any():
            totals += draws * _metric(cell, task, metric, _resample_rows(cell, resamples, rng))
    return _interval(point, totals / len(cells))


def paired_difference(
    cells: dict[int, dict], baseline: dict[int, dict], task: TaskSpec, metric: str, resamples: int = RESAMPLES, seed: int = 0
) -> PairedDifference | None:
    """`cells` minus `baseline`, paired by seed (the same split and test examples); None without a common seed."""
    seeds = sorted(set(cells) & set(baseline))
    if not seeds:
        return None
    rng = np.random.default_rng(seed)
    per_seed = {}
    for s in seeds:
        if list(cells[s]["labels"]) != list(baseline[s]["labels"]):
            raise InvalidInputError(f"seed {s}: the two cells were tested on different examples, so they cannot be paired")
        per_seed[s] = float(_metric(cells[s], task, metric, None)[0] - _metric(baseline[s], task, metric, None)[0])
    chosen = rng.integers(0, len(seeds), size=(resamples, len(seeds)))
    totals = np.zeros(resamples)
    for position, s in enumerate(seeds):
        draws = (chosen == position).sum(axis=1)
        if draws.any():
            rows = _resample_rows(cells[s], resamples, rng)
            totals += draws * (_metric(cells[s], task, metric, rows) - _metric(baseline[s], task, metric, rows))
    differences = list(per_seed.values())
    interval = _interval(float(np.mean(differences)), totals / len(seeds))
    return PairedDifference(
        interval, {s: round(d, 6) for s, d in per_seed.items()},
        wins=sum(1 for d in differences if d > 0), losses=sum(1 for d in differences if d < 0),
        ties=sum(1 for d in differences if d == 0),
    )


def _interval(point: float, resampled: np.ndarray) -> Interval:
    tail = (1 - LEVEL) / 2 * 100
    low, high = np.percentile(resampled, [tail, 100 - tail])
    return Interval(round(point, 6), round(float(low), 6), round(float(high), 6))


def _resample_rows(cell: dict, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Row indices drawn with replacement: (resamples, n) examples, or per draw whole groups where the cell has them."""
    n = len(cell["labels"])
    groups = cell.get("groups")
    if not groups:
        return rng.integers(0, n, size=(resamples, n))
    members: dict[str, list[int]] = {}
    for row, group in enumerate(groups):
        members.setdefault(group, []).append(row)
    units = list(members.values())
    drawn = rng.integers(0, len(units), size=(resamples, len(units)))
    # Draws of whole groups differ in size, so they are kept as an object array and scored one draw at a time.
    draws = np.empty(resamples, dtype=object)
    draws[:] = [np.concatenate([units[u] for u in row]) for row in drawn]
    return draws


def _metric(cell: dict, task: TaskSpec, metric: str, rows: np.ndarray | None) -> np.ndarray:
    """The metric on the cell's full test split (rows None), or on each resample of rows."""
    dtype = np.float64 if task.is_regression else np.int64
    predictions = np.asarray(cell["predictions"], dtype=dtype)
    labels = np.asarray(cell["labels"], dtype=dtype)
    groups = cell.get("groups")
    if rows is None:
        return np.array([METRICS[metric](predictions, labels, groups)])
    if rows.dtype == object or metric not in _VECTORISED:
        return np.array([
            METRICS[metric](predictions[list(r)], labels[list(r)], [groups[i] for i in r] if groups else None) for r in rows
        ])
    return _VECTORISED[metric](predictions[rows], labels[rows])


def _confusion(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """(B, C, C) counts, [b, true, predicted]."""
    classes = int(max(predictions.max(), labels.max())) + 1
    resamples = predictions.shape[0]
    flat = (np.arange(resamples)[:, None] * classes + labels) * classes + predictions
    return np.bincount(flat.ravel(), minlength=resamples * classes * classes).reshape(resamples, classes, classes)


def _safe_divide(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    return np.divide(numerator, denominator, out=np.zeros_like(numerator, dtype=np.float64), where=denominator != 0)


def _accuracy(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    return (predictions == labels).mean(axis=1)


def _f1(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    tp = ((predictions == 1) & (labels == 1)).sum(axis=1)
    fp = ((predictions == 1) & (labels != 1)).sum(axis=1)
    fn = ((predictions != 1) & (labels == 1)).sum(axis=1)
    return _safe_divide(2.0 * tp, 2.0 * tp + fp + fn)


def _macro_f1(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    confusion = _confusion(predictions, labels).astype(np.float64)
    tp = np.diagonal(confusion, axis1=1, axis2=2)
    fp, fn = confusion.sum(axis=1) - tp, confusion.sum(axis=2) - tp
    present = (tp + fp + fn) > 0  # classes in the labels or the predictions of that resample
    per_class = _safe_divide(2 * tp, 2 * tp + fp + fn)
    return (per_class * present).sum(axis=1) / np.maximum(present.sum(axis=1), 1)


def _matthews(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    confusion = _confusion(predictions, labels).astype(np.float64)
    true, predicted = confusion.sum(axis=2), confusion.sum(axis=1)
    correct, total = np.trace(confusion, axis1=1, axis2=2), confusion.sum(axis=(1, 2))
    covariance = correct * total - (true * predicted).sum(axis=1)
    spread = (total**2 - (predicted**2).sum(axis=1)) * (total**2 - (true**2).sum(axis=1))
    return _safe_divide(covariance, np.sqrt(spread))


def _pearson(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    x = predictions - predictions.mean(axis=1, keepdims=True)
    y = labels - labels.mean(axis=1, keepdims=True)
    denominator = np.sqrt((x**2).sum(axis=1) * (y**2).sum(axis=1))
    # A constant side (or a degenerate draw) gives 0, as the metric does.
    return np.clip(_safe_divide((x * y).sum(axis=1), np.where(denominator < 1e-12, 0.0, denominator)), -1.0, 1.0)


def _spearman(predictions: np.ndarray, labels: np.ndarray) -> np.ndarray:
    from scipy.stats import rankdata

    return _pearson(rankdata(predictions, axis=1), rankdata(labels, axis=1))


_VECTORISED = {"accuracy": _accuracy, "f1": _f1, "macro_f1": _macro_f1, "matthews": _matthews, "pearson": _pearson, "spearman": _spearman}
