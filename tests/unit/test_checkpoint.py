"""Training checkpoints on a tiny random BERT: exact resume, atomic writes, refused damage, divergence stops."""

from __future__ import annotations

import json
import math
import os
import pickle

import pytest
import torch

from crash_helpers import crash_after_step
from test_training import TOY, toy_examples
from transferkit.errors import ArtifactCorruptError, OutputError, TrainingDivergedError
from transferkit.methods import get_method
from transferkit.modeling import TaskModel
from transferkit.training import checkpoint as checkpoint_module
from transferkit.training import loop as loop_module
from transferkit.training.checkpoint import STATE_FILE, TENSORS_FILE, Checkpointer, list_checkpoints, read_checkpoint
from transferkit.training.data import tokenize_examples
from transferkit.training.loop import TrainingConfig, train

# 64 examples in batches of 8: 8 batches per epoch, so 20 steps cross two epoch boundaries.
STEPS, CRASH_AT, EVERY = 20, 11, 4


@pytest.fixture
def splits(tiny_backbone):
    tokenizer = tiny_backbone.tokenizer
    return [tokenize_examples(toy_examples(n, s), tokenizer, 32, regression=False, use_cache=False) for n, s in ((64, 1), (16, 2), (16, 3))]


def _toy_model(backbone, method: str, options: dict | None = None) -> TaskModel:
    method_type = get_method(method)
    torch.manual_seed(0)
    return TaskModel(backbone, method_type.build(method_type.config_class.from_dict(options or {}), backbone), TOY.num_labels)


def _config() -> TrainingConfig:
    return TrainingConfig(max_steps=STEPS, batch_size=8, eval_every=7, seed=3, lr=1e-2)


def _run(backbone, splits, method, options, folder):
    """Train from a fresh model (same seed); the trained result and every parameter and buffer."""
    model = _toy_model(backbone, method, options=options)
    try:
        result = train(model, TOY, *splits, _config(), backbone.tokenizer.pad_token_id, show_progress=False,
                       checkpointer=Checkpointer(folder, EVERY))
        return result, {k: v.clone() for k, v in checkpoint_module.model_state(model).items()}
    finally:
        model.detach()


# Each exercises the torch RNG inside training steps: dropout in the head and LoRA, MEPT's router noise.
@pytest.mark.parametrize("method,options", [("lora", {"dropout": 0.2}), ("mept", {"noise": 1.0}), ("prompt", {})])
def test_crashed_run_resumes_to_bitwise_identical_parameters(tiny_backbone, splits, tmp_path, method, options):
    reference, reference_state = _run(tiny_backbone, splits, method, options, tmp_path / "reference")
    with crash_after_step(CRASH_AT):
        _run(tiny_backbone, splits, method, options, tmp_path / "crashed")
    assert [c.step for c in list_checkpoints(tmp_path / "crashed")] == [CRASH_AT // EVERY * EVERY]
    resumed, resumed_state = _run(tiny_backbone, splits, method, options, tmp_path / "crashed")

    assert resumed_state.keys() == reference_state.keys()
    assert all(torch.equal(resumed_state[k], reference_state[k]) for k in reference_state)  # bitwise, buffers included
    assert resumed.loss_history == reference.loss_history
    assert resumed.eval_history == reference.eval_history and resumed.metrics == reference.metrics
    assert resumed.best_step == reference.best_step and resumed.steps == STEPS
    assert resumed.cost["steps"] == STEPS and resumed.cost["examples"] == reference.cost["examples"]
    assert resumed.cost["segments"] == 2 and "segments" not in reference.cost


def test_checkpoint_is_safetensors_plus_json_and_replaces_the_previous_one(tiny_backbone, splits, tmp_path):
    result, _ = _run(tiny_backbone, splits, "lora", {}, tmp_path / "run")
    checkpoints = list_checkpoints(tmp_path / "run")
    assert [c.step for c in checkpoints] == [16]  # the last one before the final step; older ones deleted
    assert sorted(p.name for p in checkpoints[0].path.iterdir()) == [STATE_FILE, TENSORS_FILE]
    tensors, document = read_checkpoint(checkpoints[0].path)
    assert (document["loop"]["step"], document["loop"]["epoch"], document["loop"]["batches_done"]) == (16, 1, 8)
    assert {key.split("/")[0] for key in tensors} == {"model", "best", "optimizer", "rng"}
    assert len(document["loop"]["loss_history"]) == 16
    assert not list((tmp_path / "run").glob(".*"))  # no temporary folders left


def test_interrupted_checkpoint_write_leaves_the_previous_checkpoint(tiny_backbone, splits, tmp_path, monkeypatch):
    real_rename = os.rename

    def rename(source, target):
        if str(target).endswith("step-00000008"):
            raise OSError(28, "No space left on device")
        return real_rename(source, target)

    monkeypatch.setattr(checkpoint_module.os, "rename", rename)
    with pytest.raises(OutputError, match=r"cannot write the training checkpoint .*step-00000008 \(No space left on device; "
                                          r"it needs \d+\.\d KiB, .* free there\); the checkpoint at step 4 is kept"):
        _run(tiny_backbone, splits, "lora", {}, tmp_path / "run")
    assert [c.step for c in list_checkpoints(tmp_path / "run")] == [4]
    read_checkpoint(list_checkpoints(tmp_path / "run")[0].path)  # complete and verified
    assert not list((tmp_path / "run").glob(".*"))  # the failed write's temporary folder is gone


def _one_checkpoint(tiny_backbone, splits, tmp_path):
    with crash_after_step(5):
        _run(tiny_backbone, splits, "lora", {}, tmp_path / "run")
    return list_checkpoints(tmp_path / "run")[0].path


def test_tampered_checkpoint_is_refused(tiny_backbone, splits, tmp_path):
    folder = _one_checkpoint(tiny_backbone, splits, tmp_path)
    data = bytearray((folder / TENSORS_FILE).read_bytes())
    data[-3] ^= 0xFF
    (folder / TENSORS_FILE).write_bytes(bytes(data))
    with pytest.raises(ArtifactCorruptError, match="corrupt.*sha256") as caught:
        _run(tiny_backbone, splits, "lora", {}, tmp_path / "run")
    assert "\n" not in str(caught.value)


class _Payload:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_pickle_in_place_of_checkpoint_tensors_is_not_executed(tiny_backbone, splits, tmp_path, monkeypatch):
    folder = _one_checkpoint(tiny_backbone, splits, tmp_path)
    bomb = pickle.dumps({"model/head.linear.weight": _Payload()})
    (folder / TENSORS_FILE).write_bytes(bomb)
    document = json.loads((folder / STATE_FILE).read_text())
    import hashlib

    document["tensors_sha256"] = hashlib.sha256(bomb).hexdigest()  # an attacker can fix the digest too
    (folder / STATE_FILE).write_text(json.dumps(document))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ArtifactCorruptError, match="no readable safetensors"):
        _run(tiny_backbone, splits, "lora", {}, tmp_path / "run")
    assert not (tmp_path / "pwned").exists()


def test_checkpoint_of_other_settings_is_refused(tiny_backbone, splits, tmp_path):
    _one_checkpoint(tiny_backbone, splits, tmp_path)
    model = _toy_model(tiny_backbone, "lora")
    config = TrainingConfig(max_steps=STEPS, batch_size=4, eval_every=7, seed=3, lr=1e-2)  # another batch size
    try:
        with pytest.raises(ArtifactCorruptError, match="other settings"):
            train(model, TOY, *splits, config, tiny_backbone.tokenizer.pad_token_id, show_progress=False,
                  checkpointer=Checkpointer(tmp_path / "run", EVERY))
    finally:
        model.detach()


def test_non_finite_loss_stops_before_the_update_and_keeps_the_last_checkpoint(tiny_backbone, splits, tmp_path, monkeypatch):
    real_loss = loop_module.loss_function(TOY)
    calls = []

    def poisoned(logits, labels):
        calls.append(1)
        loss = real_loss(logits, labels)
        return loss * math.nan if len(calls) == 7 else loss

    monkeypatch.setattr(loop_module, "loss_function", lambda task: poisoned)
    model = _toy_model(tiny_backbone, "lora")
    try:
        with pytest.raises(TrainingDivergedError, match=r"step 7: the loss is nan.*checkpoint \(step 4\) is kept") as caught:
            train(model, TOY, *splits, _config(), tiny_backbone.tokenizer.pad_token_id, show_progress=False,
                  checkpointer=Checkpointer(tmp_path / "run", EVERY))
        assert all(torch.isfinite(p).all() for p in model.parameters())  # the NaN never reached the parameters
    finally:
        model.detach()
    assert "\n" not in str(caught.value)
    tensors, _ = read_checkpoint(list_checkpoints(tmp_path / "run")[-1].path)
    assert list_checkpoints(tmp_path / "run")[-1].step == 4
    assert all(torch.isfinite(t.float()).all() for k, t in tensors.items() if not k.startswith("rng/"))


def test_gradient_clipping_is_on_by_default():
    assert TrainingConfig().grad_clip == 1.0
    with pytest.raises(Exception, match="grad_clip"):
        TrainingConfig(grad_clip=math.inf).validate()
