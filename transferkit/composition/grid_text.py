"""A grid's rows as text, one wording everywhere: the `compare` table, `compare --markdown`, the static report and
the web UI's Compare page. Plain string formatting (no torch), so the web UI's templates can use it as filters."""

from __future__ import annotations


def score_span(row: dict) -> tuple[float, float, float]:
    """(mean, low, high) ×100 for a chart: the 95% interval, or mean ± std over seeds for cells stored without test
    predictions (and for method grids, which have no interval)."""
    interval = row.get("interval")
    if interval:
        return 100 * interval["mean"], 100 * interval["low"], 100 * interval["high"]
    return 100 * row["mean"], 100 * (row["mean"] - row["std"]), 100 * (row["mean"] + row["std"])


def score_text(row: dict) -> str:
    """The test score ×100: `mean [low, high]` (95% interval), or `mean ± std (std)` where `score_span` falls back."""
    if not row.get("interval"):
        return f"{100 * row['mean']:.1f} ± {100 * row['std']:.1f} (std)"
    mean, low, high = score_span(row)
    return f"{mean:.1f} [{low:.1f}, {high:.1f}]"


def verdict(versus: dict) -> str:
    """better / worse when the paired interval excludes 0, else tie."""
    return "tie" if versus["low"] <= 0 <= versus["high"] else ("better" if versus["low"] > 0 else "worse")


def versus_text(versus: dict | None, emphasis: str = "") -> str:
    """The paired difference to scratch ×100 with its 95% interval, wins/losses over seeds and the verdict
    (a better/worse verdict wrapped in `emphasis`, e.g. "**" for Markdown)."""
    if not versus:
        return "-"
    said = verdict(versus)
    shown = said if said == "tie" else f"{emphasis}{said}{emphasis}"
    return (f"{100 * versus['mean']:+.1f} [{100 * versus['low']:+.1f}, {100 * versus['high']:+.1f}] "
            f"{versus['wins']}W/{versus['losses']}L {shown}")


def gates_text(row: dict) -> str:
    """The largest mean gate weights (merge, lorahub: the sources' weights; arrow: routed shares) and the zero expert's."""
    gates = ", ".join(f"{g['source']} {g['weight']:.2f}" for g in row.get("top_gates") or [])
    if row.get("zero_expert_gate") is not None:
        gates += f"; none {row['zero_expert_gate']:.2f}"
    return gates or "-"


def markdown_table(rows: list[dict]) -> str:
    """A transfer grid's rows as a GitHub Markdown table, for a README or a paper's notes. "device s" is CPU-core-seconds
    on CPU (GPU-seconds on CUDA): the compute a cell used, which wall time overstates on a shared machine."""
    lines = [
        "| target (metric) | strategy | score ×100 [95% interval] | vs scratch [95% interval], W/L | seeds | wall s mean (max) "
        "| device s mean | TFLOPs | largest mean gates; zero expert |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        versus = versus_text(row.get("versus_scratch"), emphasis="**")
        flops = "-" if row.get("train_flops") is None else f"{row['train_flops'] / 1e12:.1f}"
        lines.append(
            f"| {row['target']} ({row['metric']}) | {row['strategy']} | {score_text(row)} | {versus} | {row['seeds']} "
            f"| {row['wall_seconds']:.0f} ({row['max_wall_seconds']:.0f}) | {row['device_seconds']:.0f} | {flops} | {gates_text(row)} |"
        )
    return "\n".join(lines)


def methods_markdown_table(rows: list[dict]) -> str:
    """A method grid's rows (`compare --methods`) as a GitHub Markdown table."""
    lines = [
        "| task (metric) | method | score ×100 (mean ± std) | seeds | trainable params | train ex/s | peak memory MiB | wall s mean |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        rate, peak = row.get("train_examples_per_second"), row.get("peak_memory_bytes")
        lines.append(
            f"| {row['task']} ({row['metric']}) | {row['method']} | {100 * row['mean']:.1f} ± {100 * row['std']:.1f} | {row['seeds']} "
            f"| {row['trainable_params']:,} | {'-' if rate is None else f'{rate:.1f}'} | {'-' if peak is None else f'{peak / 2**20:.0f}'} "
            f"| {row['wall_seconds']:.0f} |"
        )
    return "\n".join(lines)
