"""Prefix tuning on a tiny random BERT: keys/values reach attention, masking, share modes, exact save/load."""

from __future__ import annotations

import pytest
import torch

from transferkit.errors import InvalidInputError
from transferkit.methods import get_method
from transferkit.methods.prefix.model import extend_attention_mask
from transferkit.modeling import TaskModel, mean_pool


def _model(backbone, options=(), outputs=3):
    method = get_method("prefix")
    torch.manual_seed(0)
    return TaskModel(backbone, method.build(method.config_class.from_options(list(options)), backbone), outputs)


def _batch(tokenizer):
    return dict(tokenizer(["a good film", "a rather dull and long film"], ["yes", "no"], padding=True, return_tensors="pt"))


def _train_steps(model, batch, steps=3):
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    model.train()
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(model(**batch), torch.tensor([0, 2]))
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def test_prefix_adds_keys_not_positions(tiny_backbone):
    batch = _batch(tiny_backbone.tokenizer)
    with torch.no_grad():
        plain = mean_pool(tiny_backbone.model(**batch).last_hidden_state, batch["attention_mask"])
    model = _model(tiny_backbone, ["num_virtual_tokens=4"])
    seen = {}
    handle = tiny_backbone.model.register_forward_hook(lambda m, a, out: seen.update(shape=out.last_hidden_state.shape))
    with torch.no_grad():
        pooled = model.pooled(**batch)
    handle.remove()
    assert seen["shape"] == batch["input_ids"].shape + (tiny_backbone.hidden_size,)  # queries keep the real length
    assert (pooled - plain).abs().max() > 1e-3  # the prefix keys/values change attention
    model.detach()
    with torch.no_grad():
        assert torch.equal(mean_pool(tiny_backbone.model(**batch).last_hidden_state, batch["attention_mask"]), plain)


@pytest.mark.parametrize("implementation", ["sdpa", "eager"])
@pytest.mark.parametrize("share", ["deep", "simple", "none"])
def test_padding_does_not_change_logits(share, implementation, tiny_backbone):
    tiny_backbone.model.set_attn_implementation(implementation)
    model = _model(tiny_backbone, [f"share={share}", "num_virtual_tokens=3"])
    model.eval()
    tokenizer = tiny_backbone.tokenizer
    padded = tokenizer(["a good film", "a rather dull and long film that never ends"], padding=True, return_tensors="pt")
    alone = tokenizer(["a good film"], return_tensors="pt")
    assert padded["attention_mask"][0].sum() < padded["attention_mask"].shape[1]
    with torch.no_grad():
        assert torch.allclose(model(**padded)[0], model(**alone)[0], atol=1e-5)


def test_bf16_autocast_runs(tiny_backbone):
    model = _model(tiny_backbone, ["num_virtual_tokens=2"])
    model.precision = "bf16"
    logits = model(**_batch(tiny_backbone.tokenizer))
    logits.float().sum().backward()
    assert logits.shape == (2, 3) and model.expert.embedding.grad.abs().sum() > 0


@pytest.mark.parametrize("share", ["deep", "simple", "none"])
def test_export_drops_reparameterisation_and_reproduces_outputs_exactly(share, tiny_backbone):
    batch = _batch(tiny_backbone.tokenizer)
    trained = _model(tiny_backbone, [f"share={share}", "num_virtual_tokens=3"])
    _train_steps(trained, batch)
    with torch.no_grad():
        expected = trained(**batch)
    tensors = trained.export_tensors()
    layers = tiny_backbone.fingerprint.num_layers
    expert_names = {k for k in tensors if k.startswith("expert.")}
    assert expert_names == {f"expert.prefix.layer{i}.{kind}" for i in range(layers) for kind in ("key", "value")}
    assert all(tensors[name].shape == (3, tiny_backbone.hidden_size) for name in expert_names)
    trained.detach()
    restored = _model(tiny_backbone, [f"share={share}", "num_virtual_tokens=3"])
    restored.import_tensors(tensors)
    restored.eval()
    assert {name for name, _ in restored.expert.named_parameters()} == {"keys", "values"}
    with torch.no_grad():
        assert torch.equal(restored(**batch), expected)


def test_share_modes_train_different_parameter_counts_but_store_the_same(tiny_backbone):
    d, layers, length = tiny_backbone.hidden_size, tiny_backbone.fingerprint.num_layers, 3
    counts = {}
    for share in ("deep", "simple", "none"):
        model = _model(tiny_backbone, [f"share={share}", f"num_virtual_tokens={length}", "reparam_hidden=16"])
        counts[share] = sum(p.numel() for p in model.expert.parameters())
        assert sum(t.numel() for t in model.expert.export_tensors().values()) == 2 * layers * length * d
        model.detach()
    assert counts["none"] == 2 * layers * length * d
    assert counts["simple"] == layers * (length * d + d * 2 * d + 2 * d)
    assert counts["deep"] == layers * (length * d + d * 16 + 16 + 16 * 2 * d + 2 * d)


def test_simple_share_starts_at_real_token_keys(tiny_backbone):
    """share=simple starts from the frozen key/value projections, so its first keys are those of real tokens."""
    torch.manual_seed(5)
    simple = get_method("prefix").build(get_method("prefix").config_class(share="simple", num_virtual_tokens=3), tiny_backbone)
    torch.manual_seed(5)
    none = get_method("prefix").build(get_method("prefix").config_class(share="none", num_virtual_tokens=3), tiny_backbone)
    with torch.no_grad():
        for a, b in zip(simple.key_values(), none.key_values()):
            assert torch.allclose(a, b, atol=1e-5)


def test_mask_extension_forms():
    two_d = torch.tensor([[1, 1, 0]])
    assert extend_attention_mask(two_d, 2).tolist() == [[1, 1, 1, 1, 0]]
    boolean = torch.tensor([True, False]).view(1, 1, 1, 2).expand(1, 1, 2, 2)
    assert extend_attention_mask(boolean, 1)[0, 0].tolist() == [[True, True, False], [True, True, False]]
    additive = torch.tensor([0.0, -1e9]).view(1, 1, 1, 2)
    assert extend_attention_mask(additive, 2)[0, 0, 0].tolist() == [0.0, 0.0, 0.0, -1e9]
    assert extend_attention_mask(None, 2) is None
    with pytest.raises(InvalidInputError, match="attention mask of shape"):
        extend_attention_mask(torch.ones(1, 2, 3), 1)


@pytest.mark.parametrize(
    "options,message",
    [(["share=wide"], "must be one of"), (["num_virtual_tokens=0"], "num_virtual_tokens"), (["reparam_hidden=0"], "reparam_hidden")],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(InvalidInputError, match=message):
        get_method("prefix").config_class.from_options(options)


def test_unsupported_architecture_is_one_line_error(tiny_backbone):
    from transformers import DistilBertConfig, DistilBertModel

    from transferkit.backbone import Backbone, fingerprint_model

    model = DistilBertModel(DistilBertConfig(vocab_size=100, dim=16, n_layers=1, n_heads=2, hidden_dim=32))
    backbone = Backbone(model, tiny_backbone.tokenizer, fingerprint_model(model, "distil", None, None))
    with pytest.raises(InvalidInputError, match="BERT-style encoders.*'distilbert' is not supported"):
        get_method("prefix").build(get_method("prefix").config_class(), backbone)
