"""Training checkpoints: everything needed to continue a run exactly where it stopped.

One checkpoint is a folder `<run folder>/step-<8 digits>/` with two files:

- `tensors.safetensors`: the model's parameters and buffers (`model/...`, non-persistent buffers
  such as MEPT's load counts included), the best-on-dev parameters so far (`best/...`), the
  optimizer's state tensors (`optimizer/<parameter index>/<key>`) and the torch, CUDA and numpy
  RNG states (`rng/...`, and `rank-<r>/rng/...` for the other processes of a multi-process run);
- `state.json`: the loop position (step, epoch, batches of that epoch done), loss and evaluation
  histories, the best score, the scheduler's state, the optimizer's parameter groups and
  non-tensor state, Python's RNG state, the cost measured so far, the settings the position
  refers to, and the sha256 of `tensors.safetensors`.

A checkpoint is written into a temporary folder, fsynced and renamed into place (atomic), and only
then are older checkpoints deleted: a crash at any moment leaves the previous complete checkpoint.
A write that fails (a full disk, say) removes its temporary folder and names the space it needed.
Reading uses safetensors and JSON only; nothing is unpickled or executed, and the tensors are
checked against the recorded sha256 first. torch and numpy are imported where they are used, so
listing checkpoints (`transferkit gc`) stays cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import random
import re
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transferkit.durable import fsync_dir, write_durably, write_failure
from transferkit.errors import ArtifactCorruptError, OutputError

FORMAT = "transferkit.checkpoint/1"
TENSORS_FILE = "tensors.safetensors"
STATE_FILE = "state.json"
DEFAULT_CHECKPOINT_EVERY = 50
_STEP_FOLDER = re.compile(r"^step-(\d{8})$")

if TYPE_CHECKING:
    import torch
    from torch import nn


@dataclass
class LoopState:
    """What the training loop has done so far: its position in the data, best result and histories."""

    step: int = 0
    epoch: int = 0
    batches_done: int = 0  # batches of `epoch` already trained
    running_loss: float | None = None
    best_score: float = -math.inf
    best_step: int = 0
    best_dev: dict = field(default_factory=dict)
    best_state: dict[str, torch.Tensor] | None = None
    loss_history: list[tuple[int, float]] = field(default_factory=list)
    eval_history: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class StoredCheckpoint:
    """A complete checkpoint on disk."""

    path: Path
    step: int
    bytes: int
    modified: float  # seconds since the epoch


class Checkpointer:
    """Writes a run's checkpoint every `every` steps into `folder` and restores the latest one.

    `on_save` runs after each checkpoint is in place (the workflow refreshes the run's heartbeat).
    """

    def __init__(self, folder: Path, every: int = DEFAULT_CHECKPOINT_EVERY, on_save: Callable[[], None] | None = None) -> None:
        self.folder = Path(folder)
        self.every = every
        self.on_save = on_save
        self.last_saved_step: int | None = None

    def due(self, step: int) -> bool:
        return self.every > 0 and step % self.every == 0

    def save(
        self, state: LoopState, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, meter: Any,
        identity: dict, other_ranks: list[tuple[dict[str, torch.Tensor], dict]] | None = None,
    ) -> Path:
        """Write a checkpoint of the current training state atomically; returns its folder.

        `other_ranks`: the RNG states (`capture_rng()`) of processes 1..n-1 of a multi-process run, so that each
        resumes its own dropout stream (the rest of the state is the same in every process).
        """
        import safetensors.torch

        tensors = {f"model/{name}": value for name, value in model_state(model).items()}
        if state.best_state is not None:
            tensors.update({f"best/{name}": value for name, value in state.best_state.items()})
        optimizer_tensors, optimizer_json = _flatten_optimizer(optimizer.state_dict())
        tensors.update(optimizer_tensors)
        rng_tensors, rng_json = capture_rng()
        tensors.update(rng_tensors)
        for rank, (rank_tensors, _) in enumerate(other_ranks or [], start=1):
            tensors.update({f"rank-{rank}/{key}": value for key, value in rank_tensors.items()})
        blob = safetensors.torch.save({k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()})
        document = {
            "format": FORMAT,
            "identity": identity,
            "loop": {
                "step": state.step,
                "epoch": state.epoch,
                "batches_done": state.batches_done,
                "running_loss": state.running_loss,
                "best_score": None if state.best_score == -math.inf else state.best_score,
                "best_step": state.best_step,
                "best_dev": state.best_dev,
                "has_best_state": state.best_state is not None,
                "loss_history": state.loss_history,
                "eval_history": state.eval_history,
            },
            "scheduler": scheduler.state_dict(),
            "optimizer": optimizer_json,
            "rng": rng_json,
            "rank_rng": [rank_json for _, rank_json in other_ranks or []],
            "cost": meter.snapshot(),
            "tensors_sha256": hashlib.sha256(blob).hexdigest(),
        }
        state_json = json.dumps(document, default=_json_scalar).encode()
        final = self.folder / f"step-{state.step:08d}"
        temporary = self.folder / f".step-{state.step:08d}.{uuid.uuid4().hex[:8]}.tmp"
        new_folder = not self.folder.exists()
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            temporary.mkdir()
            write_durably(temporary / TENSORS_FILE, blob)
            write_durably(temporary / STATE_FILE, state_json)
            fsync_dir(temporary)
            if final.exists():  # the same step saved before a crash: same position, replace it
                shutil.rmtree(final)
            os.rename(temporary, final)
            fsync_dir(self.folder)
            for older in list_checkpoints(self.folder):
                if older.step != state.step:
                    shutil.rmtree(older.path, ignore_errors=True)
            for leftover in self.folder.glob(".step-*.tmp"):  # of this run's earlier, interrupted writes
                shutil.rmtree(leftover, ignore_errors=True)
        except BaseException as error:  # a full disk, or a second Ctrl-C mid-write: no partial checkpoint stays
            shutil.rmtree(temporary, ignore_errors=True)
            if new_folder:  # the run's folder, if this write created it and nothing is in it
                with contextlib.suppress(OSError):
                    self.folder.rmdir()
            if not isinstance(error, OSError):
                raise
            raise OutputError(
                f"cannot write the training checkpoint {final} ({write_failure(error, final, len(blob) + len(state_json))}); "
                + (f"the checkpoint at step {self.last_saved_step} is kept; " if self.last_saved_step is not None else "")
                + "free disk space or point TRANSFERKIT_CHECKPOINT_ROOT at a writable folder"
            ) from error
        self.last_saved_step = state.step
        if self.on_save is not None:
            self.on_save()
        return final

    def restore(
        self, model: nn.Module, optimizer: torch.optim.Optimizer, scheduler: Any, meter: Any, identity: dict, rank: int = 0
    ) -> LoopState | None:
        """Load the latest checkpoint into model, optimizer, scheduler, meter and the RNGs; None if there is none.

        Process `rank` of a multi-process run takes its own RNG state if the checkpoint has it (else the main one's).
        """
        checkpoints = list_checkpoints(self.folder)
        if not checkpoints:
            return None
        latest = checkpoints[-1]
        tensors, document = read_checkpoint(latest.path)
        if document.get("identity") != json.loads(json.dumps(identity)):
            raise ArtifactCorruptError(
                f"checkpoint {latest.path} was written for other settings ({document.get('identity')}, now {identity}); "
                "delete that folder to start the run over"
            )
        loop = document["loop"]
        _load_model_state(model, _prefixed(tensors, "model/"), latest.path)
        optimizer.load_state_dict(_unflatten_optimizer(_prefixed(tensors, "optimizer/"), document["optimizer"]))
        scheduler.load_state_dict(document["scheduler"])
        meter.resume_from(document["cost"])
        ranks = document.get("rank_rng") or []  # absent in checkpoints written before it was kept
        if 0 < rank <= len(ranks):
            _restore_rng(_prefixed(tensors, f"rank-{rank}/rng/"), ranks[rank - 1])
        else:
            _restore_rng(_prefixed(tensors, "rng/"), document["rng"])
        self.last_saved_step = latest.step
        return LoopState(
            step=loop["step"],
            epoch=loop["epoch"],
            batches_done=loop["batches_done"],
            running_loss=loop["running_loss"],
            best_score=-math.inf if loop["best_score"] is None else loop["best_score"],
            best_step=loop["best_step"],
            best_dev=loop["best_dev"],
            best_state=_prefixed(tensors, "best/") if loop["has_best_state"] else None,
            loss_history=[(int(step), loss) for step, loss in loop["loss_history"]],
            eval_history=loop["eval_history"],
        )

    def remove(self) -> None:
        """Delete this run's checkpoints (its expert is stored, so they are no longer needed)."""
        shutil.rmtree(self.folder, ignore_errors=True)


def model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter and buffer by name, non-persistent buffers included (they can carry training statistics)."""
    return {**dict(model.named_parameters()), **dict(model.named_buffers())}


def list_checkpoints(folder: Path) -> list[StoredCheckpoint]:
    """Complete checkpoints in a run's folder, oldest first (temporary folders of interrupted writes are skipped)."""
    if not folder.is_dir():
        return []
    found = []
    for path in folder.iterdir():
        match = _STEP_FOLDER.match(path.name)
        if match and path.is_dir() and (path / STATE_FILE).is_file():
            files = [p for p in path.iterdir() if p.is_file()]
            found.append(StoredCheckpoint(path, int(match.group(1)), sum(p.stat().st_size for p in files),
                                          max(p.stat().st_mtime for p in files)))
    return sorted(found, key=lambda checkpoint: checkpoint.step)


def read_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors and JSON document of the checkpoint folder `path`, verified; ArtifactCorruptError otherwise."""
    import safetensors.torch

    try:
        document = json.loads((path / STATE_FILE).read_text(encoding="utf-8"))
        blob = (path / TENSORS_FILE).read_bytes()
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ArtifactCorruptError(f"checkpoint {path} cannot be read ({error}); delete that folder to start the run over") from None
    if not isinstance(document, dict) or document.get("format") != FORMAT:
        raise ArtifactCorruptError(f"checkpoint {path} is not a {FORMAT} checkpoint; delete that folder to start the run over")
    actual = hashlib.sha256(blob).hexdigest()
    if actual != document.get("tensors_sha256"):
        raise ArtifactCorruptError(
            f"checkpoint {path} is corrupt: {TENSORS_FILE} has sha256 {actual[:12]}, expected "
            f"{str(document.get('tensors_sha256'))[:12]}; delete that folder to start the run over"
        )
    try:
        return safetensors.torch.load(blob), document
    except Exception as error:  # noqa: BLE001 - safetensors raises several unrelated types
        raise ArtifactCorruptError(f"checkpoint {path} holds no readable safetensors data ({error})") from None


def _prefixed(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {key[len(prefix):]: value for key, value in tensors.items() if key.startswith(prefix)}


def _load_model_state(model: nn.Module, tensors: dict[str, torch.Tensor], where: Path) -> None:
    import torch

    targets = model_state(model)
    if set(targets) != set(tensors) or any(targets[k].shape != tensors[k].shape for k in targets):
        missing, unexpected = sorted(set(targets) - set(tensors)), sorted(set(tensors) - set(targets))
        raise ArtifactCorruptError(
            f"checkpoint {where} does not fit this model (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "delete that folder to start the run over"
        )
    with torch.no_grad():
        for name, target in targets.items():
            target.copy_(tensors[name])


def _flatten_optimizer(state: dict) -> tuple[dict[str, torch.Tensor], dict]:
    """An optimizer state_dict as tensors (per-parameter state) plus JSON (groups and scalar state)."""
    import torch

    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for index, values in state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer/{index}/{key}"] = value
            else:
                scalars.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _unflatten_optimizer(tensors: dict[str, torch.Tensor], document: dict) -> dict:
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split("/", 1)
        state.setdefault(int(index), {})[name] = value
    for index, values in document["scalars"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": document["param_groups"]}


def capture_rng() -> tuple[dict[str, torch.Tensor], dict]:
    """This process's torch, CUDA, numpy and Python RNG states: tensors (`rng/...`) and JSON."""
    import numpy as np
    import torch

    kind, keys, position, has_gauss, cached_gaussian = np.random.get_state()
    tensors = {"rng/torch": torch.get_rng_state(), "rng/numpy": torch.from_numpy(keys.astype(np.int64))}
    if torch.cuda.is_available():
        tensors.update({f"rng/cuda/{i}": state for i, state in enumerate(torch.cuda.get_rng_state_all())})
    version, internal, gauss_next = random.getstate()
    document = {
        "python": {"version": version, "internal": list(internal), "gauss_next": gauss_next},
        "numpy": {"kind": kind, "position": int(position), "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
    }
    return tensors, document


def _restore_rng(tensors: dict[str, torch.Tensor], document: dict) -> None:
    import numpy as np
    import torch

    torch.set_rng_state(tensors["torch"])
    cuda = [tensors[key] for key in sorted(k for k in tensors if k.startswith("cuda/"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda)
    numpy = document["numpy"]
    np.random.set_state(
        (numpy["kind"], tensors["numpy"].numpy().astype(np.uint32), numpy["position"], numpy["has_gauss"], numpy["cached_gaussian"])
    )
    python = document["python"]
    random.setstate((python["version"], tuple(python["internal"]), python["gauss_next"]))


def _json_scalar(value: Any) -> Any:
    """numpy scalars in metrics become plain numbers."""
    import numpy as np

    if isinstance(value, np.generic):
        return value.item()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
