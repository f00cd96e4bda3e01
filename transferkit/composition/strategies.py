"""The transfer strategies, registered in one place: `transfer` looks a strategy up here by name, and
`transferkit.rebuild` the strategy that rebuilds a stored expert of a composed kind.

A new strategy is one module with a `Strategy` subclass (see `transferkit.composition.plugins`) and one
`register_strategy(...)` call: here for the built-in ones, or in the new module itself.
"""

from __future__ import annotations

from transferkit.composition import arrow, attempt, lorahub, merge_strategy, pemt, single
from transferkit.composition.fixed import MERGED_METHOD, rebuild_merged
from transferkit.composition.plugins import Rebuild, Strategy
from transferkit.errors import InvalidInputError

_STRATEGIES: dict[str, Strategy] = {}
_REBUILDERS: dict[str, Rebuild] = {}


def register_strategy(strategy: Strategy) -> Strategy:
    """Make `strategy` available to `transfer --strategy NAME`, and its stored kinds to `load_expert_model`."""
    _STRATEGIES[strategy.name] = strategy
    for method in strategy.stored_methods:
        register_stored_kind(method, strategy.rebuild)
    return strategy


def register_stored_kind(method: str, rebuild: Rebuild) -> None:
    """A stored expert kind (its `method` column) that `rebuild` loads: one no strategy trains, e.g. `merged`."""
    _REBUILDERS[method] = rebuild


def strategy_names() -> tuple[str, ...]:
    return tuple(_STRATEGIES)


def get_strategy(name: str) -> Strategy:
    if name not in _STRATEGIES:
        raise InvalidInputError(f"unknown strategy {name!r}; choose one of {', '.join(_STRATEGIES)}")
    return _STRATEGIES[name]


def stored_rebuild(method: str) -> Rebuild | None:
    """How a stored expert of this method is rebuilt, if it is a composed kind (None: a plain method expert)."""
    return _REBUILDERS.get(method)


for _strategy in (pemt.PEMT, pemt.AVERAGE, single.SPOT, single.SCRATCH, attempt.ATTEMPT,
                  merge_strategy.STRATEGY, lorahub.STRATEGY, arrow.STRATEGY):
    register_strategy(_strategy)
register_stored_kind(MERGED_METHOD, rebuild_merged)

# The built-in strategies, in the order `--help` and `compare` list them.
STRATEGIES = strategy_names()
