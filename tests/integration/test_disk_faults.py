"""A full disk (or a read-only file system, or an I/O error) at every place transferkit writes a file.

Each write site is run through the CLI's `main()` with a fault injected into every file write under its folder
(tests/fault_helpers.py: no space when the file is created, halfway through the data, at fsync; an I/O error at
the rename into place; a read-only file system). Every case must end in exactly one `error:` line naming the path
and the space needed, with exit code 2 and no traceback; leave no partial file; leave the registry as it was
(no expert, no blob, the task and other runs untouched; the run, if one started, `failed` with the reason) and
the previous checkpoint intact; and, once the fault is gone, `--resume` must end bit-identical to an
uninterrupted run. A real full tmpfs and a read-only registry (remounted, when this machine allows mounts, and
a read-only SQLite URL everywhere) follow.
"""

from __future__ import annotations

import gc
import os
import shutil
import signal
import sqlite3
import subprocess
import uuid
from pathlib import Path

import pytest
import torch
from fault_helpers import FAULTS, DiskFault, files_under
from signal_helpers import cli_in_process

from transferkit.registry import open_registry
from transferkit.training.checkpoint import list_checkpoints, read_checkpoint
from transferkit.training.cost import CostMeter

TRAINING_SITES = ("checkpoint", "stop-checkpoint", "artifact", "token-cache")
OUTPUT_SITES = ("report", "peft-export", "bundle-export")
# The tokenisation cache and the report are not fsynced (a cache is rebuilt, a report re-rendered): no fsync to fail.
NOT_FSYNCED = ("token-cache", "report")
CASES = [(site, kind) for site in (*TRAINING_SITES, *OUTPUT_SITES) for kind in FAULTS
         if not (kind == "no-space-on-fsync" and site in NOT_FSYNCED)]


class Setup:
    def __init__(self, folder: Path, model: Path, data: Path) -> None:
        self.folder, self.model, self.data = folder, model, data
        self.url = f"sqlite:///{folder}/reg.db"

    def args(self, name: str, url: str | None = None, seed: int = 2) -> list[str]:
        return ["--registry", url or self.url, "--data-dir", str(self.data), "train-source", "glue/rte", "--method", "lora",
                "-O", "dropout=0.1", "--model", str(self.model), "--max-train-examples", "64", "--max-steps", "12",
                "--batch-size", "8", "--eval-every", "6", "--max-length", "48", "--checkpoint-every", "4", "--seed", str(seed),
                "--name", name, "--quiet"]

    def snapshot(self, url: str | None = None) -> dict:
        store = open_registry(url or self.url)
        state = {
            "experts": {e.id: e.to_dict() for e in store.list_experts()},
            "tasks": {t.name: t.to_dict() for t in store.list_tasks()},
            "edges": [e.to_dict() for e in store.list_lineage_edges()],
            "runs": {r.id: r.to_dict() for r in store.list_runs()},
        }
        store.close()
        return state


@pytest.fixture(scope="module")
def setup(tmp_path_factory, tiny_model_dir, shared_data) -> Setup:
    folder = tmp_path_factory.mktemp("faults")
    prepared = Setup(folder, tiny_model_dir, shared_data)
    done = cli_in_process(prepared.args("reference"), folder)
    assert done.returncode == 0, done.stderr
    return prepared


def _at_step(monkeypatch: pytest.MonkeyPatch, step: int, action) -> None:
    original = CostMeter.add_batch

    def add_batch(self: CostMeter, *args, **kwargs) -> None:
        original(self, *args, **kwargs)
        if self.steps == step:
            action()

    monkeypatch.setattr(CostMeter, "add_batch", add_batch)


def _one_error_line(result: subprocess.CompletedProcess, *fragments: str) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and "Traceback" not in result.stderr
    assert "it needs " in lines[0], lines[0]  # the space needed (and what is free there)
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def _expect_identical(setup: Setup, name: str, reference: str = "reference") -> None:
    store = open_registry(setup.url)
    expected, actual = store.get_expert(reference), store.get_expert(name)
    assert actual.artifact_sha256 == expected.artifact_sha256  # the same bytes: one blob for both
    expected_tensors, actual_tensors = store.load_expert_tensors(expected)[0], store.load_expert_tensors(actual)[0]
    assert expected_tensors.keys() == actual_tensors.keys()
    assert all(torch.equal(expected_tensors[k], actual_tensors[k]) for k in expected_tensors)
    store.close()


def _only_new_run_failed(before: dict, after: dict, *fragments: str) -> str:
    """Everything as it was, plus one failed run whose reason names the fault; returns its id."""
    assert {k: v for k, v in after.items() if k != "runs"} == {k: v for k, v in before.items() if k != "runs"}
    assert {r: after["runs"][r] for r in before["runs"]} == before["runs"]
    [new] = set(after["runs"]) - set(before["runs"])
    run = after["runs"][new]
    assert run["status"] == "failed" and all(fragment in run["error"] for fragment in fragments), run["error"]
    return new


@pytest.mark.parametrize("site,kind", [case for case in CASES if case[0] in TRAINING_SITES], ids=lambda value: value)
def test_a_training_write_fault_is_one_line_leaves_nothing_and_resumes(setup, site, kind, monkeypatch, tmp_path):
    name = f"{site}-{kind}"
    checkpoints = setup.folder / "reg-checkpoints"
    artifacts = setup.folder / "reg-artifacts"
    cache = tmp_path / "cache"  # fresh for the token-cache site, so the split is really written
    env = {"TRANSFERKIT_CACHE_DIR": str(cache)} if site == "token-cache" else {}
    root = {"checkpoint": checkpoints, "stop-checkpoint": checkpoints, "artifact": artifacts, "token-cache": cache}[site]
    fault = DiskFault(root, kind, armed=site in ("artifact", "token-cache"))
    if site == "checkpoint":  # the first checkpoint (step 4) is written; the disk fills before the next (step 8)
        _at_step(monkeypatch, 5, lambda: setattr(fault, "armed", True))
    elif site == "stop-checkpoint":  # SIGTERM at step 6: the checkpoint written on the signal hits the fault
        _at_step(monkeypatch, 6, lambda: (setattr(fault, "armed", True), os.kill(os.getpid(), signal.SIGTERM)))
    # Equal experts share one content-addressed blob, so an artifact case trains one no earlier case stored.
    seed = 10 + list(FAULTS).index(kind) if site == "artifact" else 2
    before, artifact_files, cache_files = setup.snapshot(), files_under(artifacts), files_under(cache)
    with fault:
        failed = cli_in_process(setup.args(name, seed=seed), setup.folder, **env)
    monkeypatch.undo()
    assert fault.hits >= 1, (failed.returncode, failed.stderr)  # the fault was really hit
    after = setup.snapshot()
    assert files_under(artifacts) == artifact_files  # no blob, whole or partial

    if site == "token-cache":
        _one_error_line(failed, "cannot write the tokenisation cache", str(cache))
        assert after == before  # it fails before the run starts: nothing in the registry
        assert files_under(cache) == cache_files  # no partial cache entry
    else:
        where = {"checkpoint": "step-00000008", "stop-checkpoint": "step-00000006", "artifact": str(artifacts)}[site]
        line = _one_error_line(failed, where)
        run_id = _only_new_run_failed(before, after, where)
        folder = checkpoints / run_id
        kept = 8 if site == "artifact" else 4  # the last checkpoint before the fault, complete and verified
        assert [c.step for c in list_checkpoints(folder)] == [kept] and files_under(folder) == {
            f"step-{kept:08d}/state.json", f"step-{kept:08d}/tensors.safetensors"}
        read_checkpoint(list_checkpoints(folder)[0].path)
        if site != "artifact":
            assert f"the checkpoint at step {kept} is kept" in line

    resumed = cli_in_process([*setup.args(name, seed=seed), "--resume"], setup.folder, **env)  # the fault is gone: space is back
    assert resumed.returncode == 0, resumed.stderr
    if site == "artifact":  # the uninterrupted run with the same seed stores the very same blob
        done = cli_in_process(setup.args(f"{name}-uninterrupted", seed=seed), setup.folder)
        assert done.returncode == 0, done.stderr
    _expect_identical(setup, name, f"{name}-uninterrupted" if site == "artifact" else "reference")


@pytest.mark.parametrize("site,kind", [case for case in CASES if case[0] in OUTPUT_SITES], ids=lambda value: value)
def test_an_output_write_fault_is_one_line_and_leaves_nothing(setup, site, kind, tmp_path):
    out = tmp_path / "out"
    if site == "report":  # an existing report folder, filling up while the report is written
        out.mkdir()
        args, fragment = ["--registry", setup.url, "report", "--out", str(out)], "cannot write the report file"
    else:
        target = out / ("bundle.tar.gz" if site == "bundle-export" else "adapter")
        out.mkdir()
        args = ["--registry", setup.url, "export", "reference", "--out", str(target), "--model", str(setup.model),
                "--format", "bundle" if site == "bundle-export" else "peft"]
        fragment = f"cannot write {target}"
    before = setup.snapshot()
    with DiskFault(out, kind) as fault:
        failed = cli_in_process(args, setup.folder)
    assert fault.hits >= 1
    _one_error_line(failed, fragment)
    assert files_under(out) == set() and not [p for p in out.iterdir()]  # nothing, not even an empty temporary folder
    assert setup.snapshot() == before
    assert cli_in_process(args, setup.folder).returncode == 0  # and it works once the fault is gone


def _mount(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["mount", *args], capture_output=True, text=True)


@pytest.fixture
def small_filesystem(tmp_path):
    """A 4 MiB tmpfs, where this machine lets the test mount one (root in CI); skipped otherwise."""
    folder = tmp_path / "small"
    folder.mkdir()
    if shutil.which("mount") is None or _mount("-t", "tmpfs", "-o", "size=4m,mode=0755", "tmpfs", str(folder)).returncode:
        pytest.skip("cannot mount a tmpfs here (needs root and CAP_SYS_ADMIN); the injected faults above cover every write site")
    yield folder
    subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def _fill(folder: Path, leave: int) -> Path:
    """A file taking all the free space of `folder`'s file system but `leave` bytes."""
    filler = folder / "filler"
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(0, shutil.disk_usage(folder).free - leave))
    return filler


def test_a_really_full_disk_during_training_is_one_line_and_resumes(setup, small_filesystem, monkeypatch):
    url = f"sqlite:///{small_filesystem}/reg.db"
    checkpoints = small_filesystem / "reg-checkpoints"
    filled: list[Path] = []

    def fill() -> None:  # after the first checkpoint: half its size is left, so the next one cannot be written
        [first] = list_checkpoints(next(checkpoints.iterdir()))
        filled.append(_fill(small_filesystem, first.bytes // 2))

    _at_step(monkeypatch, 5, fill)
    failed = cli_in_process(setup.args("full", url), setup.folder)
    monkeypatch.undo()
    line = _one_error_line(failed, "step-00000008", "No space left on device", "the checkpoint at step 4 is kept")
    store = open_registry(url)
    [run] = store.list_runs()
    assert run.status == "failed" and "No space left on device" in run.error and store.list_experts() == []
    assert [c.step for c in list_checkpoints(checkpoints / run.id)] == [4]
    assert not [p for p in (checkpoints / run.id).iterdir() if p.name.startswith(".")]
    store.close()
    assert "free there" in line
    filled[0].unlink()  # space is back
    resumed = cli_in_process([*setup.args("full", url), "--resume"], setup.folder)
    assert resumed.returncode == 0, resumed.stderr
    store, reference = open_registry(url), open_registry(setup.url)
    expected = reference.load_expert_tensors(reference.get_expert("reference"))[0]
    actual = store.load_expert_tensors(store.get_expert("full"))[0]
    assert all(torch.equal(expected[k], actual[k]) for k in expected)
    store.close(), reference.close()


def test_a_read_only_registry_is_one_line_and_unchanged(setup, tmp_path):
    # A read-only SQLite URL works on every machine (root ignores file permissions, so chmod would prove nothing).
    copy = tmp_path / "reg.db"
    source, target = sqlite3.connect(setup.folder / "reg.db"), sqlite3.connect(copy)
    source.backup(target)  # a consistent copy (the module's registry is open, its WAL not yet checkpointed)
    source.close(), target.close()
    content = copy.read_bytes()
    url = f"sqlite:///file:{copy}?mode=ro&uri=true"
    failed = cli_in_process(setup.args(f"ro-{uuid.uuid4().hex[:4]}", url), tmp_path)
    lines = [line for line in failed.stderr.splitlines() if line.strip()]
    assert failed.returncode == 2 and len(lines) == 1 and "Traceback" not in failed.stderr, failed.stderr
    assert lines[0].startswith("error: the registry") and "readonly database" in lines[0]
    assert copy.read_bytes() == content


def test_a_registry_on_a_read_only_file_system_is_one_line_and_unchanged(setup, small_filesystem):
    url = f"sqlite:///{small_filesystem}/reg.db"
    assert cli_in_process(setup.args("first", url), setup.folder).returncode == 0
    before = setup.snapshot(url)
    gc.collect()  # the in-process CLI's registry connections: a file system with open files cannot become read-only
    remounted = _mount("-o", "remount,ro", str(small_filesystem))
    assert remounted.returncode == 0, remounted.stderr
    failed = cli_in_process(setup.args("second", url), setup.folder)
    lines = [line for line in failed.stderr.splitlines() if line.strip()]
    assert failed.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in failed.stderr
    assert "registry" in lines[0] and "writable location" in lines[0], lines[0]  # SQLite cannot open its WAL there
    assert _mount("-o", "remount,rw", str(small_filesystem)).returncode == 0
    assert setup.snapshot(url) == before
