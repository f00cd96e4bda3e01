"""`transferkit gc` through the console script: dry run by default, --apply acts, --json for machines."""

from __future__ import annotations

import json
import os
import sqlite3
import time
from datetime import datetime, timedelta, timezone

from cli_helpers import assert_one_line_error, run_cli

from transferkit.registry import TaskRecord, open_registry
from transferkit.training.checkpoint import STATE_FILE


def _checkpoint(root, run_id: str, step: int, age_hours: float = 0.0, temporary: bool = False):
    name = f".step-{step:08d}.abcd1234.tmp" if temporary else f"step-{step:08d}"
    folder = root / run_id / name
    folder.mkdir(parents=True)
    (folder / STATE_FILE).write_text("{}")
    (folder / "tensors.safetensors").write_bytes(b"\0" * 100)
    then = time.time() - age_hours * 3600
    for path in (folder / STATE_FILE, folder / "tensors.safetensors", folder):
        os.utime(path, (then, then))
    return folder


def test_gc_dry_run_then_apply(tmp_path):
    url = f"sqlite:///{tmp_path}/reg.db"
    store = open_registry(url)
    store.upsert_task(TaskRecord("glue/rte", "d", {}, None, None))
    new_run = lambda: store.start_run("train-source", ["test"], {}, 1, {}, {}, {}).id  # noqa: E731
    finished, failed_old, failed_recent, alive, elsewhere_silent, elsewhere_recent = (new_run() for _ in range(6))
    store.finish_run(finished, "finished", {})
    store.finish_run(failed_old, "failed", {}, error="boom")
    store.finish_run(failed_recent, "failed", {}, error="boom")
    long_ago = (datetime.now(timezone.utc) - timedelta(hours=30)).strftime("%Y-%m-%d %H:%M:%S.%f")
    with sqlite3.connect(tmp_path / "reg.db") as connection:
        connection.execute("UPDATE runs SET host = 'elsewhere', heartbeat_at = ? WHERE id = ?", (long_ago, elsewhere_silent))
        connection.execute("UPDATE runs SET host = 'elsewhere' WHERE id = ?", (elsewhere_recent,))
    root = store.checkpoint_root
    assert root == tmp_path / "reg-checkpoints"
    removable = {
        str(_checkpoint(root, finished, 50).parent): "finished",
        str(_checkpoint(root, "0123456789ab", 50).parent): "not in the registry",
        str(_checkpoint(root, failed_old, 50, age_hours=48).parent): "failed",
        str(_checkpoint(root, alive, 100, age_hours=3, temporary=True)): "interrupted",
    }
    kept = [_checkpoint(root, failed_recent, 50), _checkpoint(root, alive, 50), _checkpoint(root, elsewhere_recent, 50)]
    store.close()

    dry = run_cli("--registry", url, "gc", "--json", cwd=tmp_path)
    assert dry.returncode == 0, dry.stderr
    planned = json.loads(dry.stdout)
    assert planned["applied"] is False
    runs = {item["target"]: item["reason"] for item in planned["items"] if item["kind"] == "stale-run"}
    assert list(runs) == [elsewhere_silent] and "no heartbeat on elsewhere for 30" in runs[elsewhere_silent]
    checkpoints = {item["target"]: item["reason"] for item in planned["items"] if item["kind"] == "stale-checkpoint"}
    assert checkpoints.keys() == removable.keys()
    assert all(fragment in checkpoints[target] for target, fragment in removable.items())
    assert all(os.path.exists(target) for target in removable)  # nothing changed

    table = run_cli("--registry", url, "gc", cwd=tmp_path)
    assert "would remove 5 item(s)" in table.stdout and "pass --apply" in table.stderr

    applied = run_cli("--registry", url, "gc", "--apply", "--json", cwd=tmp_path)
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["items"] == planned["items"]
    assert not any(os.path.exists(target) for target in removable)
    assert all(folder.exists() for folder in kept)
    store = open_registry(url)
    assert store.get_run(elsewhere_silent).status == "failed"
    assert [store.get_run(r).status for r in (alive, elsewhere_recent)] == ["running", "running"]
    store.close()
    assert json.loads(run_cli("--registry", url, "gc", "--json", cwd=tmp_path).stdout)["items"] == []


def test_gc_rejects_a_bad_threshold(tmp_path):
    assert_one_line_error(run_cli("--registry", f"sqlite:///{tmp_path}/r.db", "gc", "--older-than", "-1", cwd=tmp_path), "--older-than")
