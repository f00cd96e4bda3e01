"""Bootstrap intervals over seeds and test examples: vectorised metrics match the official ones, intervals behave."""

from __future__ import annotations

import numpy as np
import pytest

from transferkit.errors import InvalidInputError
from transferkit.tasks import resolve_task
from transferkit.tasks.intervals import _VECTORISED, metric_interval, paired_difference
from transferkit.tasks.metrics import METRICS


@pytest.mark.parametrize("metric", sorted(_VECTORISED))
@pytest.mark.parametrize("classes", [2, 3])
def test_vectorised_metrics_equal_the_official_ones(metric, classes):
    if metric == "f1" and classes == 3:
        pytest.skip("binary F1 is defined for two classes")
    rng = np.random.default_rng(classes)
    regression = metric in ("pearson", "spearman")
    predictions = rng.normal(size=(40, 25)) if regression else rng.integers(0, classes, size=(40, 25))
    labels = rng.normal(size=(40, 25)) if regression else rng.integers(0, classes, size=(40, 25))
    if regression:
        predictions[0] = 1.0  # a constant prediction: the metric's 0.0, not NaN
    else:
        predictions[1] = 0  # one class predicted only
    expected = [METRICS[metric](predictions[i], labels[i], None) for i in range(40)]
    assert _VECTORISED[metric](predictions, labels) == pytest.approx(expected, abs=1e-12)


def _cells(rng, n_seeds, n, accuracy):
    cells = []
    for _ in range(n_seeds):
        labels = rng.integers(0, 3, n)
        correct = rng.random(n) < accuracy
        cells.append({"predictions": np.where(correct, labels, (labels + 1) % 3).tolist(), "labels": labels.tolist()})
    return cells


def test_interval_contains_the_mean_and_narrows_with_more_examples():
    cb = resolve_task("cb")
    rng = np.random.default_rng(0)
    small = metric_interval(_cells(rng, 5, 28, 0.8), cb, "accuracy")
    large = metric_interval(_cells(rng, 5, 2800, 0.8), cb, "accuracy")
    assert small.low < small.mean < small.high and large.low < large.mean < large.high
    assert (large.high - large.low) < (small.high - small.low) / 5
    assert large.contains(0.8)


def test_identical_runs_tie_and_a_clearly_better_run_wins():
    cb = resolve_task("cb")
    rng = np.random.default_rng(1)
    weak = _cells(rng, 5, 200, 0.5)
    same = paired_difference(dict(enumerate(weak)), dict(enumerate(weak)), cb, "accuracy")
    assert same.interval.mean == 0 and same.interval.contains(0) and same.ties == 5
    strong = [{"predictions": cell["labels"], "labels": cell["labels"]} for cell in weak]  # every answer right
    better = paired_difference(dict(enumerate(strong)), dict(enumerate(weak)), cb, "accuracy")
    assert better.interval.low > 0.3 and better.wins == 5 and better.losses == 0


def test_pairing_needs_the_same_test_examples():
    cb = resolve_task("cb")
    rng = np.random.default_rng(2)
    a, b = _cells(rng, 1, 20, 0.7), _cells(rng, 1, 20, 0.7)
    with pytest.raises(InvalidInputError, match="different examples"):
        paired_difference({1: a[0]}, {1: b[0]}, cb, "accuracy")
    assert paired_difference({1: a[0]}, {2: b[0]}, cb, "accuracy") is None


def test_grouped_examples_are_resampled_by_group():
    multirc = resolve_task("multirc")
    cell = {"predictions": [1, 0, 1, 1, 0, 0], "labels": [1, 0, 0, 1, 0, 1], "groups": ["a", "a", "b", "b", "c", "c"]}
    interval = metric_interval([cell], multirc, "exact_match", resamples=200)
    assert interval.mean == pytest.approx(1 / 3) and 0 <= interval.low <= interval.mean <= interval.high <= 1
