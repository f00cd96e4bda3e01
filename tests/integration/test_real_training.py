"""Real backbone (packaged MiniLM) + real SST-2 files: each method learns and round-trips through the registry."""

from __future__ import annotations

import pytest
import torch

from transferkit.backbone import load_backbone
from transferkit.errors import ArtifactCorruptError, IncompatibleBackboneError
from transferkit.registry import open_registry
from transferkit.tasks import load_splits, resolve_task
from transferkit.training.data import collate, tokenize_examples
from transferkit.training.loop import TrainingConfig, predict
from transferkit.rebuild import load_expert_model
from transferkit.workflows import SourceJob, train_source

pytestmark = pytest.mark.real


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    return open_registry(f"sqlite:///{tmp_path_factory.mktemp('reg')}/r.db")


@pytest.fixture(scope="module")
def trained(registry, shared_data):
    """One small SST-2 run per method on the real backbone."""
    experts = {}
    for method in ("prompt", "lora", "adapter"):
        job = SourceJob(
            task="glue/sst2",
            method=method,
            data_dir=shared_data,
            training=TrainingConfig(max_steps=40, batch_size=16, eval_every=40, seed=1),
            show_progress=False,
            command=["pytest", method],
        )
        experts[method] = train_source(registry, job)
    return experts


@pytest.mark.parametrize("method", ["prompt", "lora", "adapter"])
def test_training_reduces_loss_and_beats_chance(trained, method):
    expert = trained[method]
    losses = [loss for _, loss in expert.extra["loss_history"]]
    assert len(losses) == 40
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < first - 0.05, (first, last)
    assert expert.metrics["dev"]["accuracy"] > 0.6
    assert expert.metrics["test"]["accuracy"] > 0.6


def test_stored_expert_has_provenance_and_cost(trained, registry):
    expert = trained["lora"]
    run = registry.get_run(expert.run_id)
    assert run.status == "finished"
    assert run.hyperparams["max_steps"] == 40 and run.seed == 1
    assert run.data_fingerprint["fingerprint"] and run.package_versions["torch"].startswith("2.13.0")
    cost = run.cost
    assert cost["wall_seconds"] > 0 and cost["device_seconds"] > 0 and cost["examples"] == 40 * 16
    assert cost["device_kind"] == "cpu" and cost["peak_memory_bytes"] > 50 * 2**20
    assert cost["energy_joules"] is not None or cost["energy_note"]
    assert expert.backbone["weights_sha256"] and expert.backbone_id.startswith("bert-")


def test_reloaded_expert_reproduces_test_predictions(trained, registry, shared_data):
    expert = trained["lora"]
    backbone = load_backbone(None)
    model = load_expert_model(registry, expert, backbone)
    task = resolve_task("sst2")
    splits = load_splits(task, shared_data, seed=1)
    test = tokenize_examples(splits.test, backbone.tokenizer, 128, regression=False)
    predictions = predict(model, test, 64, backbone.tokenizer.pad_token_id, task)
    accuracy = float((predictions == test.labels).mean())
    assert accuracy == pytest.approx(expert.metrics["test"]["accuracy"], abs=1e-9)


def test_foreign_backbone_is_refused(trained, registry, tiny_backbone):
    with pytest.raises(IncompatibleBackboneError, match="--model"):
        load_expert_model(registry, trained["adapter"], tiny_backbone)


def test_tampered_artifact_fails_to_load(trained, registry):
    expert = trained["prompt"]
    path = registry.artifacts.path(expert.artifact_uri)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(ArtifactCorruptError, match=expert.name):
        load_expert_model(registry, expert, load_backbone(None))
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    registry.verify_artifact(expert)


def test_bf16_precision_trains(registry, shared_data):
    # CommitmentBank: real data whose dev and test splits are 28 examples each. Few, small steps: on a CPU without
    # bf16 instructions (AVX2 only) torch emulates bf16 about 40x slower than fp32.
    job = SourceJob(
        task="superglue/cb", method="lora", data_dir=shared_data, max_train_examples=64,
        training=TrainingConfig(max_steps=3, batch_size=8, eval_every=3, precision="bf16", seed=2),
        show_progress=False,
    )
    expert = train_source(registry, job)
    assert registry.get_run(expert.run_id).hyperparams["precision"] == "bf16"
    assert all(torch.isfinite(torch.tensor(loss)) for _, loss in expert.extra["loss_history"])


def test_the_packaged_backbone_in_bf16_attends_by_matrix_products_and_matches_fp32(shared_data):
    from transferkit.modeling import mean_pool

    reduced, full = load_backbone(None, precision="bf16"), load_backbone(None)
    assert reduced.model.config._attn_implementation == "eager"  # the CPU SDPA kernel gains nothing from bf16
    task = resolve_task("superglue/cb")
    split = tokenize_examples(load_splits(task, shared_data, seed=1).dev, full.tokenizer, 128, regression=False)
    batch = collate(split, list(range(len(split))), full.tokenizer.pad_token_id)
    batch.pop("labels")
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = mean_pool(reduced.model(**batch).last_hidden_state.float(), batch["attention_mask"])
        high = mean_pool(full.model(**batch).last_hidden_state, batch["attention_mask"])
    similarity = torch.nn.functional.cosine_similarity(low, high, dim=-1)
    assert len(similarity) == len(split) and float(similarity.min()) > 0.99  # bf16 rounding, the same sentence embedding
