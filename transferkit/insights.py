"""What the static report and the web UI draw, as plain data: training curves and task similarity.

No plotting here: `transferkit.report` turns these into matplotlib figures, `transferkit.ui` into SVG.
"""

from __future__ import annotations

import statistics
from collections import defaultdict

import numpy as np

from transferkit.registry.entities import ExpertRecord, TaskRecord

EMA_ALPHA = 0.1


def ema(values: list[float]) -> list[float]:
    """Exponential moving average with weight EMA_ALPHA on each new value, starting at the first."""
    smoothed, current = [], values[0]
    for value in values:
        current = EMA_ALPHA * value + (1 - EMA_ALPHA) * current
        smoothed.append(current)
    return smoothed


def mean_curve(curves: list[list[tuple[float, float]]]) -> tuple[list[float], list[float]]:
    """Mean over seeds at each step (seeds of one cell share their evaluation steps)."""
    by_step: dict[float, list[float]] = defaultdict(list)
    for curve in curves:
        for step, value in curve:
            by_step[step].append(value)
    steps = sorted(by_step)
    return steps, [statistics.mean(by_step[s]) for s in steps]


def loss_curve(expert: ExpertRecord) -> list[tuple[float, float]]:
    """(step, EMA-smoothed training loss) as recorded during training; empty if none was."""
    history = expert.extra.get("loss_history") or []
    if not history:
        return []
    steps, losses = zip(*history)
    return list(zip(steps, ema(list(losses))))


def dev_curve(expert: ExpertRecord) -> list[tuple[float, float]]:
    """(step, primary dev metric) at every dev evaluation during training."""
    primary = expert.metrics.get("primary")
    return [(h["step"], h["dev"][primary]) for h in expert.metrics.get("eval_history", []) if primary in h.get("dev", {})]


def unit_embeddings(tasks: list[TaskRecord]) -> dict[str, np.ndarray]:
    """Each task's description embedding scaled to length 1 (tasks without one, or with a zero one, left out)."""
    vectors = {t.name: np.asarray(t.embedding, dtype=float) for t in tasks if t.embedding}
    return {name: v / n for name, v in vectors.items() if (n := np.linalg.norm(v)) > 0}


def cosine_matrix(vectors: dict[str, np.ndarray], rows: list[str], columns: list[str]) -> np.ndarray:
    """Cosine similarity of every row task's description with every column task's (unit vectors from `unit_embeddings`)."""
    return np.array([[float(vectors[r] @ vectors[c]) for c in columns] for r in rows])
