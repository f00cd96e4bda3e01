"""Transfer strategies written as modules of their own, registered here (one line each); `transfer` runs them."""

from __future__ import annotations

from transferkit.composition import arrow, lorahub, merge_strategy
from transferkit.composition.plugins import Strategy

PLUGGED: dict[str, Strategy] = {s.name: s for s in (merge_strategy.STRATEGY, lorahub.STRATEGY, arrow.STRATEGY)}
# Stored method name -> the strategy whose `rebuild` loads such experts.
STORED: dict[str, Strategy] = {s.stored_method: s for s in PLUGGED.values()}
