"""The read-only commands start without torch or transformers (seconds to import), numpy, or Alembic
when the registry is already at the current schema."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch

from transferkit.registry import TaskRecord, open_registry

HEAVY = ("torch", "transformers", "alembic", "numpy")
PROBE = """
import json, sys
sys.argv = ["transferkit", *json.loads(sys.argv[1])]
from transferkit.cli.app import main
try:
    main()
except SystemExit as exit:
    code = exit.code
sys.stdout.flush()
print(json.dumps({"code": code, "heavy": [m for m in %r if m in sys.modules]}), file=sys.stderr)
""" % (HEAVY,)


@pytest.fixture
def registry_url(tmp_path) -> str:
    url = f"sqlite:///{tmp_path}/registry.db"
    store = open_registry(url, tmp_path / "registry-artifacts")
    store.upsert_task(TaskRecord("glue/sst2", "sentiment", {"name": "glue/sst2"}, [1.0, 0.0], "test-embedder"))
    run = store.start_run("train-source", ["transferkit", "train-source"], {"lr": 0.1}, 1, {}, {}, {})
    store.register_expert(
        run_id=run.id, name="probe-expert", task_name="glue/sst2", method="lora", config={"r": 4},
        backbone={"name": "tiny"}, backbone_id="bb-1", trainable_params=6, metrics={"dev": {"accuracy": 0.5}},
        tensors={"lora.a": torch.ones(2, 3)}, tensor_metadata={"format": "transferkit.expert/1"},
    )
    store.finish_run(run.id, "finished", {"wall_seconds": 1.0})
    store.close()
    return url


@pytest.mark.parametrize("arguments", [["--help"], ["list"], ["list", "--json"], ["inspect", "probe-expert"],
                                       ["inspect", "probe-expert", "--json"], ["list", "--runs"], ["list", "--runs", "--json"]],
                         ids=" ".join)
def test_read_only_commands_import_no_heavy_modules(registry_url, arguments):
    result = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(["--registry", registry_url, *arguments])],
        capture_output=True, text=True, timeout=120,
    )
    report = json.loads(result.stderr.strip().splitlines()[-1])
    assert report["code"] in (0, None), result.stderr
    assert "probe-expert" in result.stdout or arguments == ["--help"] or ("--runs" in arguments and "train-source" in result.stdout)
    assert report["heavy"] == [], f"{' '.join(arguments)} imported {report['heavy']}"
