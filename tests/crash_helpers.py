"""Crash injection for training tests: the training "dies" right after a chosen optimizer step."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import pytest

from transferkit.training.cost import CostMeter


class Crash(Exception):
    """Stands in for the process dying."""


@contextmanager
def crash_after_step(step: int) -> Iterator[None]:
    """Inside the block, training raises `Crash` right after optimizer step `step`; the block must crash."""
    original = CostMeter.add_batch

    def add_batch(self: CostMeter, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        if self.steps == step:
            raise Crash()

    CostMeter.add_batch = add_batch  # type: ignore[method-assign]
    try:
        with pytest.raises(Crash):
            yield
    finally:
        CostMeter.add_batch = original  # type: ignore[method-assign]
