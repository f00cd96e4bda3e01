"""`list --runs`, `inspect <run id>` and `gc` show which runs can be resumed, from which checkpoint, and how;
gc keeps an interrupted run's checkpoint however old it is (unless --include-interrupted)."""

from __future__ import annotations

import json
import os
import time

import pytest
from cli_helpers import assert_one_line_error, run_cli

from transferkit.registry import TaskRecord, open_registry
from transferkit.training.checkpoint import STATE_FILE

COMMAND = ["transferkit", "--registry", "REG", "train-source", "glue/rte", "--max-steps", "400"]


def _checkpoint(root, run_id: str, step: int, age_hours: float) -> None:
    folder = root / run_id / f"step-{step:08d}"
    folder.mkdir(parents=True)
    (folder / STATE_FILE).write_text("{}")
    (folder / "tensors.safetensors").write_bytes(b"\0" * 2048)
    then = time.time() - age_hours * 3600
    for path in (folder / STATE_FILE, folder / "tensors.safetensors", folder):
        os.utime(path, (then, then))


@pytest.fixture
def runs(tmp_path) -> dict[str, str]:
    """A registry with one run of each status; the unfinished ones left checkpoints two days ago."""
    url = f"sqlite:///{tmp_path}/reg.db"
    store = open_registry(url)
    store.upsert_task(TaskRecord("glue/rte", "d", {}, None, None))
    start = lambda: store.start_run("train-source", COMMAND, {}, 1, {}, {}, {}).id  # noqa: E731
    ids = {"finished": start(), "failed": start(), "interrupted": start(), "alive": start()}
    store.finish_run(ids["finished"], "finished", {})
    store.finish_run(ids["failed"], "failed", {}, error="OutputError: cannot write the training checkpoint ...")
    store.finish_run(ids["interrupted"], "interrupted", {}, error="interrupted at step 37 (SIGTERM); checkpoint saved")
    _checkpoint(store.checkpoint_root, ids["interrupted"], 37, age_hours=48)
    _checkpoint(store.checkpoint_root, ids["failed"], 50, age_hours=48)
    _checkpoint(store.checkpoint_root, ids["alive"], 10, age_hours=0)
    store.close()
    return {"url": url, **ids}


def test_list_runs_shows_status_checkpoint_and_how_to_resume(runs, tmp_path):
    listed = run_cli("--registry", runs["url"], "list", "--runs", "--json", cwd=tmp_path)
    assert listed.returncode == 0, listed.stderr
    rows = {row["id"]: row for row in json.loads(listed.stdout)}
    assert {rows[runs[k]]["status"] for k in ("finished", "failed", "interrupted")} == {"finished", "failed", "interrupted"}
    interrupted = rows[runs["interrupted"]]
    assert interrupted["checkpoint"]["step"] == 37 and interrupted["resumable"] is True
    assert interrupted["note"] == (f"resumable from its checkpoint at step 37; resume with: {' '.join(COMMAND)} --resume")
    assert rows[runs["failed"]]["resumable"] and rows[runs["failed"]]["checkpoint"]["step"] == 50
    assert not rows[runs["alive"]]["resumable"] and "its process is alive" in rows[runs["alive"]]["note"]
    assert not rows[runs["finished"]]["resumable"] and rows[runs["finished"]]["checkpoint"] is None
    assert all(row["heartbeat_at"] and row["started_at"] for row in rows.values())

    only = run_cli("--registry", runs["url"], "list", "--runs", "--status", "interrupted", cwd=tmp_path)
    assert only.returncode == 0 and runs["interrupted"] in only.stdout and runs["failed"] not in only.stdout
    assert "step 37" in only.stdout and "--resume" in only.stdout
    assert_one_line_error(run_cli("--registry", runs["url"], "list", "--runs", "--status", "paused", cwd=tmp_path), "--status")
    assert_one_line_error(run_cli("--registry", runs["url"], "list", "--runs", "--task", "rte", cwd=tmp_path), "--runs")


def test_inspect_a_run_id(runs, tmp_path):
    shown = run_cli("--registry", runs["url"], "inspect", runs["interrupted"], "--json", cwd=tmp_path)
    assert shown.returncode == 0, shown.stderr
    details = json.loads(shown.stdout)
    assert (details["status"], details["checkpoint"]["step"], details["resumable"]) == ("interrupted", 37, True)
    table = run_cli("--registry", runs["url"], "inspect", runs["interrupted"], cwd=tmp_path)
    assert "interrupted at step 37 (SIGTERM)" in table.stdout and "resume with" in table.stdout
    assert_one_line_error(run_cli("--registry", runs["url"], "inspect", "0123456789ab", cwd=tmp_path), "no expert")


def test_gc_keeps_an_interrupted_runs_checkpoint_and_lists_what_can_be_resumed(runs, tmp_path):
    root = tmp_path / "reg-checkpoints"
    planned = json.loads(run_cli("--registry", runs["url"], "gc", "--json", cwd=tmp_path).stdout)
    removed = {item["target"] for item in planned["items"]}
    assert removed == {str(root / runs["failed"])}  # failed 48 h ago: removed; interrupted 48 h ago: kept
    resumable = {item["target"]: item["reason"] for item in planned["resumable"]}
    assert set(resumable) == {runs["interrupted"]}
    assert "checkpoint at step 37" in resumable[runs["interrupted"]] and "--resume" in resumable[runs["interrupted"]]
    table = run_cli("--registry", runs["url"], "gc", cwd=tmp_path)
    assert "resumable runs (1)" in table.stdout

    applied = run_cli("--registry", runs["url"], "gc", "--apply", "--json", cwd=tmp_path)
    assert json.loads(applied.stdout)["items"] == planned["items"]
    assert (root / runs["interrupted"] / "step-00000037").is_dir() and not (root / runs["failed"]).exists()

    dropped = json.loads(run_cli("--registry", runs["url"], "gc", "--apply", "--include-interrupted", "--json", cwd=tmp_path).stdout)
    assert [(item["target"], "interrupted" in item["reason"]) for item in dropped["items"]] == [(str(root / runs["interrupted"]), True)]
    assert not (root / runs["interrupted"]).exists() and (root / runs["alive"]).is_dir()
    store = open_registry(runs["url"])
    assert store.get_run(runs["interrupted"]).status == "interrupted"  # gc never changes an interrupted run
    store.close()
