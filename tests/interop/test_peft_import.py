"""`transferkit import DIR` of adapters PEFT made itself (tiny BERT): stored with their base model, computing what PEFT computes."""

from __future__ import annotations

import hashlib
import json
import re

import pytest
import torch
from cli_helpers import assert_one_line_error, run_cli
from interop_helpers import registry_snapshot

from transferkit.backbone import load_backbone
from transferkit.errors import IncompatibleBackboneError, InvalidInputError, NotFoundError
from transferkit.interop import import_path
from transferkit.modeling import TaskModel, mean_pool
from transferkit.registry import open_registry
from transferkit.experts import load_method_expert
from transferkit.rebuild import load_expert_model

SENTENCES = ["a good film", "the plot is thin and the acting is worse"]


def peft_adapter(model_dir, folder, config, model_class=None):
    """Save an adapter the way a PEFT user does: get_peft_model, (pretend) training, save_pretrained."""
    from peft import get_peft_model
    from transformers import AutoModel

    torch.manual_seed(0)
    model = get_peft_model((model_class or AutoModel).from_pretrained(model_dir), config)
    with torch.no_grad():  # LoRA's B starts at zero; give every trainable tensor a value training could have reached
        for parameter in model.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn_like(parameter) * 0.05)
    model.save_pretrained(folder)
    return model.eval()


def configs():
    from peft import LoraConfig, PrefixTuningConfig, PromptTuningConfig, TaskType

    return {
        "prompt": PromptTuningConfig(task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=4),
        "prefix": PrefixTuningConfig(task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=3),
        "prefix-projection": PrefixTuningConfig(
            task_type=TaskType.FEATURE_EXTRACTION, num_virtual_tokens=3, prefix_projection=True, encoder_hidden_size=16
        ),
        "lora": LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, r=2, lora_alpha=4, target_modules=["query", "key", "value"]),
        "rslora": LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, r=4, lora_alpha=4, use_rslora=True, target_modules=["dense"]),
    }


@pytest.fixture
def registry_url(tmp_path):
    url = f"sqlite:///{tmp_path}/target.db"
    open_registry(url).close()
    return url


@pytest.mark.parametrize("kind, method", [
    ("prompt", "prompt"), ("prefix", "prefix"), ("prefix-projection", "prefix"), ("lora", "lora"), ("rslora", "lora"),
])
def test_imported_adapter_computes_what_peft_computes(kind, method, tiny_model_dir, registry_url, tmp_path):
    peft_model = peft_adapter(tiny_model_dir, tmp_path / kind, configs()[kind])
    registry = open_registry(registry_url)
    summary = import_path(registry, tmp_path / kind, task="rte", command=["transferkit", "import"])
    expert = registry.get_expert(summary["added"][0]["id"])
    backbone = load_backbone(str(tiny_model_dir))

    assert expert.method == method and expert.task_name == "glue/rte" and expert.metrics == {}
    assert (expert.backbone["name"], expert.backbone["revision"]) == (str(tiny_model_dir), None)
    assert expert.backbone_id == backbone.backbone_id
    run = registry.get_run(expert.run_id)
    assert (run.kind, run.status, run.cost.get("wall_seconds")) == ("import", "finished", None)
    assert "training cost is unknown" in run.cost["cost_note"]
    source = expert.extra["imported_from"]
    files = {name: hashlib.sha256((tmp_path / kind / name).read_bytes()).hexdigest()
             for name in ("adapter_config.json", "adapter_model.safetensors")}
    assert source["format"] == "peft" and source["files"] == files and source["origin"] is None
    assert registry.lineage_edges(expert.id) == {"parents": [], "children": []}

    module, prompt = load_method_expert(registry, expert, backbone)
    assert prompt is None
    model = TaskModel(backbone, module, 2).eval()
    batch = backbone.tokenizer(SENTENCES, padding=True, return_tensors="pt")
    try:
        with torch.no_grad():
            ours = model.pooled(batch["input_ids"], batch["attention_mask"])
            hidden = peft_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        theirs = mean_pool(hidden[:, hidden.shape[1] - batch["input_ids"].shape[1]:], batch["attention_mask"])
        assert torch.allclose(ours, theirs, atol=1e-5, rtol=0)
    finally:
        model.detach()
    with pytest.raises(InvalidInputError, match="no task head"):
        load_expert_model(registry, expert, backbone)


def test_a_sequence_classification_head_is_dropped_with_a_note(tiny_model_dir, registry_url, tmp_path):
    from peft import LoraConfig, TaskType
    from transformers import AutoModelForSequenceClassification

    config = LoraConfig(task_type=TaskType.SEQ_CLS, r=2, target_modules=["query", "value"])
    peft_model = peft_adapter(tiny_model_dir, tmp_path / "seqcls", config, AutoModelForSequenceClassification)
    registry = open_registry(registry_url)
    expert = registry.get_expert(import_path(registry, tmp_path / "seqcls", task="sst2", command=["t"])["added"][0]["id"])
    assert expert.extra["has_head"] is False
    assert [note.split(":")[0] for note in expert.extra["imported_from"]["dropped"]] == ["classifier"]
    tensors, _ = registry.load_expert_tensors(expert)
    lora = peft_model.get_base_model().bert.encoder.layer[1].attention.self.query.lora_A["default"].weight
    assert torch.equal(tensors["expert.encoder.layer.1.attention.self.query.lora_A.weight"], lora.detach())


def test_mismatched_backbones_and_unsupported_adapters_are_refused(tiny_model_dir, registry_url, tmp_path):
    from peft import IA3Config, LoraConfig, TaskType

    peft_adapter(tiny_model_dir, tmp_path / "lora", configs()["lora"])
    peft_adapter(tiny_model_dir, tmp_path / "prompt", configs()["prompt"])
    peft_adapter(tiny_model_dir, tmp_path / "ia3", IA3Config(task_type=TaskType.FEATURE_EXTRACTION, target_modules=["key", "value", "dense"], feedforward_modules=["dense"]))
    peft_adapter(tiny_model_dir, tmp_path / "dora", LoraConfig(task_type=TaskType.FEATURE_EXTRACTION, r=2, use_dora=True, target_modules=["query"]))
    for name, base in (("lora-on-minilm", "sentence-transformers/all-MiniLM-L6-v2"), ("prompt-on-minilm", "sentence-transformers/all-MiniLM-L6-v2")):
        source = tmp_path / name.split("-")[0]
        (tmp_path / name).mkdir()
        (tmp_path / name / "adapter_model.safetensors").write_bytes((source / "adapter_model.safetensors").read_bytes())
        config = json.loads((source / "adapter_config.json").read_text())
        (tmp_path / name / "adapter_config.json").write_text(json.dumps({**config, "base_model_name_or_path": base}))
    before = registry_snapshot(registry_url)
    registry = open_registry(registry_url)
    cases = [
        ("lora", {"model": "minilm"}, IncompatibleBackboneError, "was made for base model"),
        ("lora-on-minilm", {}, InvalidInputError, "has shape"),
        ("prompt-on-minilm", {}, IncompatibleBackboneError, "was made for 32 hidden size, but the backbone has 384"),
        ("ia3", {}, InvalidInputError, "PEFT IA3, which transferkit cannot represent"),
        ("dora", {}, InvalidInputError, "cannot reproduce: use_dora"),
        ("lora", {"task": "no-such-task"}, NotFoundError, "no-such-task"),
    ]
    for folder, options, error, fragment in cases:
        with pytest.raises(error, match=re.escape(fragment)):
            import_path(registry, tmp_path / folder, **{"task": "rte", **options}, command=["t"])
    result = run_cli("--registry", registry_url, "import", str(tmp_path / "lora"), cwd=tmp_path)
    assert_one_line_error(result, "pass --task")
    assert registry_snapshot(registry_url) == before


def test_an_imported_lora_adapter_serves_as_a_transfer_source(tiny_model_dir, registry_url, tmp_path, shared_data):
    from transferkit.accounting import expert_cost
    from transferkit.composition.transfer import TransferJob, transfer
    from transferkit.training.loop import TrainingConfig

    peft_adapter(tiny_model_dir, tmp_path / "lora", configs()["lora"])
    registry = open_registry(registry_url)
    imported = registry.get_expert(import_path(registry, tmp_path / "lora", task="rte", command=["t"])["added"][0]["id"])
    target = transfer(registry, TransferJob(
        target="cb", strategy="pemt", sources=[imported.name], model=str(tiny_model_dir), data_dir=shared_data,
        max_train_examples=16, show_progress=False, training=TrainingConfig(max_steps=1, batch_size=8, eval_batch_size=256, seed=3),
    )).expert
    assert [(e.parent_id, e.role) for e in registry.lineage_edges(target.id)["parents"]] == [(imported.id, "source")]
    # The source's training cost is unknown, so the transfer's amortized cost says it is partial rather than complete.
    assert "wall_seconds" in expert_cost(registry, target.id).partial
