"""`transferkit task add/show` and `tasks` through the console script: output, JSON, one-line errors."""

from __future__ import annotations

import json

from cli_helpers import assert_one_line_error, run_cli

SPEC = """\
name = "shop/reviews"
description = "Given a product review, the task is to decide whether it is positive or negative."
text_fields = ["text"]
label_names = ["negative", "positive"]

[[files]]
path = "reviews/all.csv"
"""


def test_task_add_show_and_list(tmp_path):
    data = tmp_path / "data"
    (data / "reviews").mkdir(parents=True)
    rows = [("works well", "positive"), ("broke at once", "negative")] * 10
    (data / "reviews" / "all.csv").write_text("text,label\n" + "".join(f"{t},{label}\n" for t, label in rows))
    (tmp_path / "reviews.toml").write_text(SPEC)
    registry = f"sqlite:///{tmp_path}/r.db"
    data_dir = ("--data-dir", str(data))

    added = run_cli("--registry", registry, "task", "add", "reviews.toml", *data_dir, cwd=tmp_path)
    assert added.returncode == 0, added.stderr
    assert "added task shop/reviews: 20 examples in 1 file(s)" in added.stdout and "under the data dir" in added.stdout
    again = json.loads(run_cli("--registry", registry, "task", "add", "reviews.toml", "--json", *data_dir, cwd=tmp_path).stdout)
    assert again["status"] == "unchanged" and again["task"]["files"][0]["rows"] == 20

    listed = json.loads(run_cli("--registry", registry, "tasks", "--json", cwd=tmp_path).stdout)
    kinds = {t["name"]: t["kind"] for t in listed}
    assert kinds["shop/reviews"] == "custom" and kinds["glue/rte"] == "catalog"
    shown = run_cli("--registry", registry, "task", "show", "reviews", cwd=tmp_path)
    assert shown.returncode == 0 and "shop/reviews (custom)" in shown.stdout and "held out: 0.1 as dev, 0.1 as test" in shown.stdout

    # Bad specs and bad rows: one line naming the field or the row; the registry is untouched.
    (data / "reviews" / "all.csv").write_text("text,label\nworks well,positive\nbroke,negativ\n")
    (tmp_path / "bad.toml").write_text(SPEC.replace('name = "shop/reviews"', 'name = "shop/other"'))
    assert_one_line_error(run_cli("--registry", registry, "task", "add", "bad.toml", *data_dir, cwd=tmp_path), "all.csv:3", "'negativ'")
    (tmp_path / "typo.toml").write_text(SPEC.replace("text_fields", "text_field"))
    assert_one_line_error(run_cli("--registry", registry, "task", "add", "typo.toml", *data_dir, cwd=tmp_path), "typo.toml: text_field:", "text_fields")
    after = json.loads(run_cli("--registry", registry, "tasks", "--json", cwd=tmp_path).stdout)
    assert [t["name"] for t in after if t["kind"] == "custom"] == ["shop/reviews"]
