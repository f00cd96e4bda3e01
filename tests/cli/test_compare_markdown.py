"""`compare --markdown`: the transfer grid's table as GitHub Markdown, the same rows `--json` prints."""

from __future__ import annotations

import json

from cli_helpers import assert_one_line_error, run_cli, run_cli_in_process
from interop_helpers import copy_registry


def test_markdown_table_says_what_json_says(tiny_experts, tiny_model_dir, shared_data, tmp_path):
    url, experts = tiny_experts
    url = copy_registry(url, tmp_path / "copy")
    base = ("--registry", url, "--data-dir", str(shared_data), "compare", "--grid", "md", "--targets", "cb",
            "--strategies", "scratch,average", "--sources", f"{experts['rte'].id},{experts['mrpc'].id}", "--seeds", "1,2",
            "--max-steps", "2", "--batch-size", "8")
    trained = run_cli(*base, "--model", str(tiny_model_dir), "--quiet", "--json", cwd=tmp_path)
    assert trained.returncode == 0, trained.stderr
    rows = {row["strategy"]: row for row in json.loads(trained.stdout)}

    rendered = run_cli_in_process(*base, "--render-only", "--markdown", cwd=tmp_path)
    assert rendered.returncode == 0, rendered.stderr
    header, rule, *lines = rendered.stdout.strip().splitlines()
    assert header.startswith("| target (metric) | strategy | score ×100 [95% interval] | vs scratch") and set(rule) <= set("|-")
    cells = {line.split(" | ")[1]: [c.strip() for c in line.strip("| ").split(" | ")] for line in lines}
    assert set(cells) == {"scratch", "average"} and cells["average"][0] == "superglue/cb (accuracy)"
    for strategy, row in rows.items():
        interval = row["interval"]
        assert cells[strategy][2] == f"{100 * interval['mean']:.1f} [{100 * interval['low']:.1f}, {100 * interval['high']:.1f}]"
        assert cells[strategy][4] == "2" and cells[strategy][6] == f"{row['device_seconds']:.0f}"
        assert 0 < row["device_seconds"]
    versus = rows["average"]["versus_scratch"]
    assert cells["average"][3].startswith(f"{100 * versus['mean']:+.1f} [") and f"{versus['wins']}W/{versus['losses']}L" in cells["average"][3]
    assert cells["scratch"][3] == "-"

    assert_one_line_error(run_cli_in_process(*base, "--render-only", "--markdown", "--json", cwd=tmp_path), "--markdown and --json")
