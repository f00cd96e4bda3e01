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


# --- the rows as text: the CLI's table, the report and `compare --markdown` say the same thing ----------------


def score_text(row: dict) -> str:
    """The test score ×100: `mean [low, high]` (95% interval), or `mean ± std (std)` for cells stored without test
    predictions (and for method grids, which have no interval)."""
    interval = row.get("interval")
    if not interval:
        return f"{100 * row['mean']:.1f} ± {100 * row['std']:.1f} (std)"
    return f"{100 * interval['mean']:.1f} [{100 * interval['low']:.1f}, {100 * interval['high']:.1f}]"


def verdict(versus: dict) -> str:
    """better / worse when the paired interval excludes 0, else tie."""
    return "tie" if versus["low"] <= 0 <= versus["high"] else ("better" if versus["low"] > 0 else "worse")


def versus_text(versus: dict | None) -> str:
    """The paired difference to scratch ×100 with its 95% interval, wins/losses over seeds and the verdict."""
    if not versus:
        return "-"
    return (f"{100 * versus['mean']:+.1f} [{100 * versus['low']:+.1f}, {100 * versus['high']:+.1f}] "
            f"{versus['wins']}W/{versus['losses']}L {verdict(versus)}")


def gates_text(row: dict) -> str:
    """The largest mean gate weights (merge, lorahub: the sources' weights; arrow: routed shares) and the zero expert's."""
    gates = ", ".join(f"{g['source']} {g['weight']:.2f}" for g in row.get("top_gates") or [])
    if row.get("zero_expert_gate") is not None:
        gates += f"; none {row['zero_expert_gate']:.2f}"
    return gates or "-"


def markdown_table(rows: list[dict]) -> str:
    """A transfer grid's rows as a GitHub Markdown table, for a README or a paper's notes."""
    lines = [
        "| target (metric) | strategy | score ×100 [95% interval] | vs scratch [95% interval], W/L | seeds | wall s mean (max) "
        "| TFLOPs | largest mean gates; zero expert |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        versus = versus_text(row.get("versus_scratch"))
        if row.get("versus_scratch") and verdict(row["versus_scratch"]) != "tie":
            versus = versus.replace(verdict(row["versus_scratch"]), f"**{verdict(row['versus_scratch'])}**")
        flops = "-" if row.get("train_flops") is None else f"{row['train_flops'] / 1e12:.1f}"
        lines.append(
            f"| {row['target']} ({row['metric']}) | {row['strategy']} | {score_text(row)} | {versus} | {row['seeds']} "
            f"| {row['wall_seconds']:.0f} ({row['max_wall_seconds']:.0f}) | {flops} | {gates_text(row)} |"
        )
    return "\n".join(lines)
