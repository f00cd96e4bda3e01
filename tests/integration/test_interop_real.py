"""PEFT and bundles on the real MiniLM and real RTE data: exported experts give transferkit's logits in PEFT, adapters
PEFT made import and compute what PEFT computes, and a bundle restores with identical `inspect --json` (evaluations included)."""

from __future__ import annotations

import json

import pytest
import torch
from cli_helpers import run_cli
from interop_helpers import cli_output, model_card_code

from transferkit.backbone import default_model_path, load_backbone
from transferkit.interop import export_expert, import_path
from transferkit.modeling import TaskModel, mean_pool
from transferkit.registry import open_registry
from transferkit.tasks import load_splits, resolve_task
from transferkit.training.loop import TrainingConfig
from transferkit.experts import load_method_expert
from transferkit.rebuild import load_expert_model
from transferkit.workflows import SourceJob, train_source

pytestmark = pytest.mark.real

METHODS = {"prompt": (["num_virtual_tokens=10"], 8), "lora": ([], 8), "prefix": ([], 0)}  # options, task prompt length


@pytest.fixture(scope="module")
def trained(tmp_path_factory, shared_data):
    """One small real expert per PEFT-representable method, on RTE."""
    folder = tmp_path_factory.mktemp("interop-real")
    url = f"sqlite:///{folder}/source.db"
    registry = open_registry(url)
    experts = {
        method: train_source(registry, SourceJob(
            task="rte", method=method, method_options=options, data_dir=shared_data, max_train_examples=32,
            task_prompt_length=prompt_length, show_progress=False,
            training=TrainingConfig(max_steps=2, batch_size=8, eval_every=2, seed=1),
        ))
        for method, (options, prompt_length) in METHODS.items()
    }
    return url, experts, folder


@pytest.fixture(scope="module")
def rte_pairs(shared_data):
    """24 real RTE test examples, tokenized as transferkit does (pairs, max length 128), in two padded batches."""
    tokenizer = load_backbone(None).tokenizer
    examples = load_splits(resolve_task("rte"), shared_data, seed=1).test[:24]
    return [
        tokenizer([e.texts[0] for e in chunk], [e.texts[1] for e in chunk], truncation=True, max_length=128,
                  padding=True, return_tensors="pt")
        for chunk in (examples[:12], examples[12:])
    ]


@pytest.mark.parametrize("method", list(METHODS))
def test_peft_loads_the_real_export_with_identical_logits(method, trained, rte_pairs, tmp_path):
    url, experts, _ = trained
    out = tmp_path / f"{method}-peft"
    if method == "lora":  # the console script once; the same function otherwise
        result = run_cli("--registry", url, "export", experts[method].name, "--format", "peft", "--out", str(out), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
    else:
        export_expert(open_registry(url), experts[method], "peft", out)
    assert json.loads((out / "adapter_config.json").read_text())["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    code = model_card_code(out)
    model, recipe = code["load_exported"](str(out), default_model_path())  # the packaged copy of that Hub model
    reference = load_expert_model(open_registry(url), experts[method], load_backbone(None)).eval()
    try:
        for batch in rte_pairs:
            with torch.no_grad():
                expected = reference(**batch)
            got = code["transferkit_logits"](model, recipe, batch)
            assert got.shape == expected.shape == (12, 2)
            assert (got - expected).abs().max().item() <= 1e-5
    finally:
        reference.detach()


def _peft_made(kind: str, folder):
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType, get_peft_model
    from transformers import AutoModel

    config = {
        "prompt": PromptTuningConfig(task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=6),
        "prefix": PrefixTuningConfig(task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=5),
        "lora": LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, r=4, lora_alpha=8, target_modules=["query", "value"]),
    }[kind]
    torch.manual_seed(0)
    model = get_peft_model(AutoModel.from_pretrained(default_model_path()), config)
    with torch.no_grad():  # stand-in for PEFT training: move every trainable tensor (LoRA's B starts at zero)
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.02)
    model.save_pretrained(folder)
    return model.eval()


@pytest.mark.parametrize("kind", ["prompt", "prefix", "lora"])
def test_adapters_made_by_peft_import_and_compute_the_same(kind, trained, rte_pairs, tmp_path):
    peft_model = _peft_made(kind, tmp_path / kind)
    url = f"sqlite:///{tmp_path}/target.db"
    if kind == "lora":
        result = run_cli("--registry", url, "import", str(tmp_path / kind), "--task", "rte", "--json", cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        added = json.loads(result.stdout)["added"]
    else:
        added = import_path(open_registry(url), tmp_path / kind, task="rte", command=["t"])["added"]
    registry = open_registry(url)
    expert = registry.get_expert(added[0]["id"])
    backbone = load_backbone(None)
    assert expert.backbone["name"] == default_model_path() and expert.backbone_id == backbone.backbone_id
    assert registry.get_run(expert.run_id).kind == "import"
    module, _ = load_method_expert(registry, expert, backbone)
    model = TaskModel(backbone, module, 2).eval()
    try:
        for batch in rte_pairs:  # no token types on either side: PEFT's own forward, no recipe
            ids, mask = batch["input_ids"], batch["attention_mask"]
            with torch.no_grad():
                ours = model.pooled(ids, mask)
                hidden = peft_model(input_ids=ids, attention_mask=mask).last_hidden_state
            theirs = mean_pool(hidden[:, hidden.shape[1] - ids.shape[1]:], mask)
            assert (ours - theirs).abs().max().item() <= 1e-5
    finally:
        model.detach()


def test_a_real_bundle_restores_with_identical_inspect(trained, shared_data, tmp_path):
    url, experts, _ = trained
    scored = run_cli("--registry", url, "--data-dir", str(shared_data), "evaluate", experts["lora"].id, "--task", "rte", "--split", "dev",
                     "--json", cwd=tmp_path)
    assert scored.returncode == 0, scored.stderr
    bundle = tmp_path / "lora.transferkit.tar.gz"
    export_expert(open_registry(url), experts["lora"], "bundle", bundle)
    target = f"sqlite:///{tmp_path}/target.db"
    imported = run_cli("--registry", target, "import", str(bundle), cwd=tmp_path)
    assert imported.returncode == 0, imported.stderr
    original, restored = (cli_output("--registry", registry, "inspect", experts["lora"].id, "--json") for registry in (url, target))
    assert restored == original  # as printed, byte for byte
    details = json.loads(restored)
    assert details["run"]["data_fingerprint"]["fingerprint"] and details["cost"]["examples"] == 16
    (evaluation,) = details["evaluations"]
    stored = json.loads(scored.stdout)
    assert (evaluation["id"], evaluation["score"]) == (stored["id"], stored["score"]) and evaluation["split"] == "dev"
