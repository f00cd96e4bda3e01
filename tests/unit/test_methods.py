"""Expert methods on a tiny random BERT: shapes, freezing, save/load round trips, option parsing."""

from __future__ import annotations

import pytest
import torch

from transferkit.errors import InvalidInputError, NotFoundError
from transferkit.methods import METHODS, get_method
from transferkit.modeling import TaskModel, mean_pool


def _batch(tokenizer):
    encoded = tokenizer(["a good film", "a rather dull and long film"], ["yes", "no"], padding=True, return_tensors="pt")
    return dict(encoded)


def _model(name, backbone, options=(), outputs=3):
    method = get_method(name)
    config = method.config_class.from_options(list(options))
    torch.manual_seed(0)
    return TaskModel(backbone, method.build(config, backbone), outputs)


def _plain_pooled(backbone, batch):
    with torch.no_grad():
        hidden = backbone.model(**batch).last_hidden_state
    return mean_pool(hidden, batch["attention_mask"])


@pytest.mark.parametrize("name", sorted(METHODS))
def test_forward_trains_only_expert_and_head(name, tiny_backbone):
    model = _model(name, tiny_backbone)
    batch = _batch(tiny_backbone.tokenizer)
    logits = model(**batch)
    assert logits.shape == (2, 3)
    logits.sum().backward()
    assert all(p.grad is None for p in tiny_backbone.model.parameters())
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert trainable and any(p.grad is not None and p.grad.abs().sum() > 0 for p in model.expert.parameters())


@pytest.mark.parametrize("name", ["lora", "adapter"])
def test_hook_methods_start_at_the_frozen_model_and_detach_cleanly(name, tiny_backbone):
    batch = _batch(tiny_backbone.tokenizer)
    reference = _plain_pooled(tiny_backbone, batch)
    model = _model(name, tiny_backbone)
    with torch.no_grad():
        assert torch.allclose(model.pooled(**batch), reference, atol=1e-6)
        for parameter in model.expert.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
        assert (model.pooled(**batch) - reference).abs().max() > 1e-3
    model.expert.detach()
    assert torch.allclose(_plain_pooled(tiny_backbone, batch), reference, atol=1e-6)


@pytest.mark.parametrize(
    "name,options",
    [("prompt", []), ("prompt", ["reparameterize=true", "num_virtual_tokens=5"]), ("lora", ["r=4"]), ("adapter", ["reduction_factor=4"])],
)
def test_export_import_reproduces_outputs(name, options, tiny_backbone):
    batch = _batch(tiny_backbone.tokenizer)
    trained = _model(name, tiny_backbone, options)
    with torch.no_grad():
        for parameter in trained.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    trained.eval()
    expected = trained(**batch)
    tensors = trained.export_tensors()
    trained.expert.detach()
    restored = _model(name, tiny_backbone, options)
    restored.import_tensors(tensors)
    restored.eval()
    assert torch.allclose(restored(**batch), expected, atol=1e-5)


def test_reparameterised_prompt_is_stored_collapsed(tiny_backbone):
    model = _model("prompt", tiny_backbone, ["reparameterize=true", "num_virtual_tokens=6"])
    tensors = model.export_tensors()
    assert set(tensors) == {"expert.prompt", "head.linear.weight", "head.linear.bias"}
    assert tensors["expert.prompt"].shape == (6, tiny_backbone.hidden_size)
    assert model.trainable_parameter_count() == 6 * 32 + 3 * 32 + 3


def test_lora_targets_query_and_value_of_every_layer(tiny_backbone):
    model = _model("lora", tiny_backbone, ["r=2"])
    names = model.expert.module_names
    assert len(names) == 4 and all(n.endswith(("query", "value")) for n in names)


def test_adapter_skips_attention_output(tiny_backbone):
    model = _model("adapter", tiny_backbone)
    assert model.expert.module_names == ["encoder.layer.0.output.dense", "encoder.layer.1.output.dense"]


def test_import_rejects_wrong_shapes(tiny_backbone):
    tensors = _model("lora", tiny_backbone, ["r=2"]).export_tensors()
    other = _model("lora", tiny_backbone, ["r=4"])
    with pytest.raises(InvalidInputError, match="shape"):
        other.import_tensors(tensors)


@pytest.mark.parametrize(
    "name,options,message",
    [
        ("lora", ["r=0"], "rank"),
        ("lora", ["rank=4"], "unknown method option"),
        ("lora", ["r"], "KEY=VALUE"),
        ("lora", ["r=abc"], "not a valid int"),
        ("prompt", ["init=text"], "init_text"),
        ("prompt", ["init=banana"], "must be one of"),
        ("adapter", ["reduction_factor=0"], "reduction_factor"),
    ],
)
def test_bad_options_are_refused(name, options, message):
    with pytest.raises(InvalidInputError, match=message):
        get_method(name).config_class.from_options(options)


def test_option_parsing_types():
    config = get_method("lora").config_class.from_options(["r=16", "alpha=8", "target_modules=query,key"])
    assert (config.r, config.alpha, config.target_modules) == (16, 8.0, ["query", "key"])


def test_unknown_method_suggests():
    with pytest.raises(NotFoundError, match="did you mean lora"):
        get_method("lorra")


@pytest.mark.parametrize("name", sorted(METHODS))
def test_every_method_trains_on_a_backbone_held_in_bf16(tiny_model_dir, name):
    from transferkit.backbone import _load_backbone, load_backbone

    _load_backbone.cache_clear()
    backbone = load_backbone(str(tiny_model_dir), precision="bf16")
    assert next(backbone.model.parameters()).dtype == torch.bfloat16
    assert next(load_backbone(str(tiny_model_dir)).model.parameters()).dtype == torch.float32  # its own cache entry
    assert load_backbone(str(tiny_model_dir)).backbone_id == backbone.backbone_id  # same weights, same identity
    method = get_method(name)
    model = TaskModel(backbone, method.build(method.config_class(), backbone), 2)  # fp32 asked: bf16 weights need autocast
    try:
        assert model.precision == "bf16"
        assert all(p.dtype == torch.float32 for p in model.parameters() if p.requires_grad)  # trainable stays fp32
        input_ids = torch.randint(5, 90, (3, 7))
        logits = model(input_ids, torch.ones_like(input_ids))
        torch.nn.functional.cross_entropy(logits.float(), torch.tensor([0, 1, 1])).backward()
        grads = [p.grad for p in model.expert.parameters() if p.requires_grad]
        assert grads and all(g is not None and torch.isfinite(g).all() and g.dtype == torch.float32 for g in grads)
    finally:
        model.detach()
        _load_backbone.cache_clear()


@pytest.mark.parametrize("native", [False, True])
def test_bf16_warns_only_on_a_cpu_without_bf16_instructions(tiny_model_dir, monkeypatch, native):
    import warnings

    from transferkit import backbone as backbone_module
    from transferkit.errors import TransferkitWarning

    monkeypatch.setattr(backbone_module, "cpu_has_native_bf16", lambda: native)
    monkeypatch.setattr(backbone_module.torch.cuda, "is_available", lambda: False)
    backbone_module._load_backbone.cache_clear()
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            backbone_module.load_backbone(str(tiny_model_dir))  # fp32 never warns
            backbone_module.load_backbone(str(tiny_model_dir), precision="bf16")
    finally:
        backbone_module._load_backbone.cache_clear()
    ours = [w for w in caught if issubclass(w.category, TransferkitWarning)]
    assert len(ours) == (0 if native else 1)
    if not native:
        assert "no bf16 matrix instructions" in str(ours[0].message) and "--precision fp32" in str(ours[0].message)


def test_a_bf16_backbone_on_cpu_computes_attention_with_matrix_products_and_agrees_with_fp32(tiny_model_dir):
    from transferkit.backbone import _load_backbone, load_backbone

    _load_backbone.cache_clear()
    try:
        reduced, full = load_backbone(str(tiny_model_dir), precision="bf16"), load_backbone(str(tiny_model_dir))
        assert reduced.model.config._attn_implementation == "eager"  # CPU SDPA gains nothing from bf16
        assert full.model.config._attn_implementation == "sdpa"  # fp32 keeps transformers' default
        input_ids = torch.randint(5, 90, (4, 9))
        mask = torch.ones_like(input_ids)
        mask[:, -2:] = 0
        with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            low = reduced.model(input_ids=input_ids, attention_mask=mask).last_hidden_state.float()
        with torch.no_grad():
            high = full.model(input_ids=input_ids, attention_mask=mask).last_hidden_state
        real = mask.bool()
        assert torch.allclose(low[real], high[real], atol=0.1, rtol=0.05)  # bf16 rounding, not a different function
    finally:
        _load_backbone.cache_clear()
