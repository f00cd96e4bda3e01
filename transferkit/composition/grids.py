"""The `compare` grids stored in a registry, found from their cells' names and commands, and their result rows.

A cell is an expert named `<grid>-<target>-<arm>-s<seed>` (arm: a transfer strategy, or a source method for
`compare --methods`) whose run was started by `compare --grid=<grid>`. The static report and the web UI both
read grids this way; the rows come from `collect` / `collect_methods`, exactly what `transferkit compare` prints.
"""

from __future__ import annotations

import re
from collections import defaultdict
from dataclasses import dataclass

from transferkit.composition.compare import Grid, MethodGrid, collect, collect_methods
from transferkit.composition.strategies import STRATEGIES
from transferkit.methods import METHODS
from transferkit.registry import ExpertRecord, RegistryStore

# A compare cell is one transfer strategy (`compare`) or one source method (`compare --methods`).
ARMS = (*STRATEGIES, *sorted(METHODS))
CELL_NAME = re.compile(rf"^(?P<grid>.+)-(?P<target>[^-]+)-(?P<strategy>{'|'.join(ARMS)})-s(?P<seed>\d+)$")


def grid_cells(registry: RegistryStore) -> dict[str, dict[tuple[str, str], list[ExpertRecord]]]:
    """Grid name -> (target task, strategy or method) -> experts, for experts named and commanded as `compare` makes them."""
    grids: dict[str, dict[tuple[str, str], list[ExpertRecord]]] = defaultdict(lambda: defaultdict(list))
    for expert, run in registry.list_expert_runs(command_contains="--grid="):
        match = CELL_NAME.match(expert.name)
        if not match or expert.task_name.split("/")[-1] != match["target"]:
            continue
        if "compare" in run.command and f"--grid={match['grid']}" in run.command:
            grids[match["grid"]][(expert.task_name, match["strategy"])].append(expert)
    return grids


@dataclass(frozen=True)
class StoredGrid:
    """One grid as stored: a transfer grid (arms are strategies) or a method grid (arms are source methods)."""

    name: str
    kind: str  # "transfer" or "methods"
    targets: list[str]
    arms: list[str]
    seeds: list[int]

    def rows(self, registry: RegistryStore) -> list[dict]:
        """One row per (target, arm) with stored cells: what `transferkit compare --json` prints for this grid."""
        if self.kind == "methods":
            return collect_methods(registry, MethodGrid(self.name, list(self.targets), list(self.arms), list(self.seeds)))
        return collect(registry, Grid(self.name, list(self.targets), list(self.arms), list(self.seeds)))


def stored_grids(registry: RegistryStore) -> list[StoredGrid]:
    """Every grid with at least one stored cell, by name; targets sorted, arms in the order `compare` runs them."""
    found = []
    for name, cells in sorted(grid_cells(registry).items()):
        arms = sorted({arm for _, arm in cells}, key=ARMS.index)
        seeds = sorted({int(CELL_NAME.match(e.name)["seed"]) for group in cells.values() for e in group})  # type: ignore[index]
        kind = "transfer" if all(arm in STRATEGIES for arm in arms) else "methods"
        found.append(StoredGrid(name, kind, sorted({target for target, _ in cells}), arms, seeds))
    return found
