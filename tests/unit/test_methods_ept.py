"""EPT on a tiny random BERT: parameter budget, shorter sequence, low-rank update placement, exact collapse."""

from __future__ import annotations

import pytest
import torch

from transferkit.errors import InvalidInputError
from transferkit.methods import get_method
from transferkit.methods.ept import EptConfig
from transferkit.methods.prompt import PromptConfig
from transferkit.modeling import TaskModel


def _model(backbone, options=(), outputs=3):
    method = get_method("ept")
    torch.manual_seed(0)
    return TaskModel(backbone, method.build(method.config_class.from_options(list(options)), backbone), outputs)


def _batch(tokenizer):
    return dict(tokenizer(["a good film", "a rather dull and long film"], ["yes", "no"], padding=True, return_tensors="pt"))


def _trainable(expert) -> int:
    return sum(p.numel() for p in expert.parameters() if p.requires_grad)


def test_defaults_match_a_plain_prompt_budget_on_minilm_sizes():
    """Counted for MiniLM's hidden size 384 without loading it: EPT's defaults train ±15% of prompt's 20 x 384."""
    d, ept, prompt = 384, EptConfig(), PromptConfig()
    trained = (
        ept.num_virtual_tokens * d
        + ept.lowrank_positions * ept.rank + ept.rank * d
        + 2 * ept.num_spaces * d * ept.space_rank
        + ept.num_spaces * (d + 1)
    )
    plain = prompt.num_virtual_tokens * d
    assert abs(trained - plain) / plain <= 0.15, f"EPT trains {trained} parameters, prompt {plain}"
    assert ept.num_virtual_tokens < prompt.num_virtual_tokens


def test_parameter_count_formula_and_shorter_sequence(tiny_backbone):
    d = tiny_backbone.hidden_size
    model = _model(tiny_backbone)
    config = model.expert.config
    expected = (
        config.num_virtual_tokens * d + config.lowrank_positions * config.rank + config.rank * d
        + 2 * config.num_spaces * d * config.space_rank + config.num_spaces * (d + 1)
    )
    assert _trainable(model.expert) == expected
    plain = get_method("prompt").build(PromptConfig(), tiny_backbone)
    print(f"trainable parameters on the tiny model: ept {expected}, prompt {_trainable(plain)}")
    batch = _batch(tiny_backbone.tokenizer)
    embeddings = tiny_backbone.input_embeddings()(batch["input_ids"])
    ept_len = model.expert.prepare_inputs(embeddings, batch["attention_mask"])[0].shape[1]
    prompt_len = plain.prepare_inputs(embeddings, batch["attention_mask"])[0].shape[1]
    assert ept_len == batch["input_ids"].shape[1] + config.num_virtual_tokens < prompt_len


def test_lowrank_update_touches_first_real_tokens_only(tiny_backbone):
    model = _model(tiny_backbone, ["lowrank_positions=6", "num_virtual_tokens=2"])
    with torch.no_grad():
        model.expert.lowrank_b.normal_()
    tokenizer = tiny_backbone.tokenizer
    batch = tokenizer(["a b", "a b c d e f"], padding=True, return_tensors="pt")  # 4 and 8 tokens
    embeddings = tiny_backbone.input_embeddings()(batch["input_ids"])
    with torch.no_grad():
        out, mask, virtual = model.expert.prepare_inputs(embeddings, batch["attention_mask"])
    changed = ((out[:, virtual:] - embeddings).abs().sum(-1) > 0).tolist()
    assert changed[0] == [True] * 4 + [False] * 4  # the first 4 real tokens; padding inside the first 6 stays untouched
    assert changed[1] == [True] * 6 + [False] * 2  # the first s = 6 tokens only
    assert mask.shape[1] == batch["attention_mask"].shape[1] + 2
    short = tokenizer(["a"], return_tensors="pt")  # 3 tokens < s: the first 3 rows of A·B are used
    assert model.expert.prepare_inputs(tiny_backbone.input_embeddings()(short["input_ids"]), short["attention_mask"])[0].shape[1] == 5


def test_starts_at_the_initial_short_prompt(tiny_backbone):
    model = _model(tiny_backbone)
    update = model.expert.embedding_update()
    assert torch.equal(update, torch.zeros_like(update))
    assert torch.equal(model.expert.effective_prompt(update), model.expert.prompt)


def test_fusion_and_projection_shape_the_prompt(tiny_backbone):
    model = _model(tiny_backbone, ["num_spaces=3"])
    expert = model.expert
    with torch.no_grad():
        expert.lowrank_b.normal_()
        before = expert.effective_prompt(expert.embedding_update())
        assert (before - expert.prompt).abs().max() > 0  # fusion reads the low-rank product
        expert.space_v.normal_()
        expert.gate.weight.normal_()
        after = expert.effective_prompt(expert.embedding_update())
        assert (after - before).abs().max() > 0  # the gated subspace projections


def test_collapsed_expert_reproduces_outputs_exactly(tiny_backbone):
    batch = _batch(tiny_backbone.tokenizer)
    trained = _model(tiny_backbone, ["lowrank_positions=8"])
    optimizer = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        torch.nn.functional.cross_entropy(trained(**batch), torch.tensor([0, 2])).backward()
        optimizer.step()
        optimizer.zero_grad()
    trained.eval()
    assert trained.expert.space_v.abs().sum() > 0 and trained.expert.gate.weight.abs().sum() > 0
    with torch.no_grad():
        expected = trained(**batch)
    tensors = trained.export_tensors()
    d, config = tiny_backbone.hidden_size, trained.expert.config
    assert {k: tuple(v.shape) for k, v in tensors.items() if k.startswith("expert.")} == {
        "expert.prompt": (config.num_virtual_tokens, d), "expert.lowrank_a": (8, config.rank), "expert.lowrank_b": (config.rank, d),
    }
    restored = _model(tiny_backbone, ["lowrank_positions=8"])
    restored.import_tensors(tensors)
    restored.eval()
    assert {n for n, _ in restored.expert.named_parameters()} == {"prompt", "lowrank_a", "lowrank_b"}
    with torch.no_grad():
        assert torch.equal(restored(**batch), expected)


@pytest.mark.parametrize(
    "options,message",
    [
        (["rank=0"], "rank"),
        (["num_spaces=0"], "num_spaces"),
        (["lowrank_scale=0"], "lowrank_scale"),
        (["num_virtual_tokens=0"], "num_virtual_tokens"),
        (["init=text"], "init_text"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(InvalidInputError, match=message):
        get_method("ept").config_class.from_options(options)


def test_bf16_autocast_trains(tiny_backbone):
    model = _model(tiny_backbone)
    model.precision = "bf16"
    model(**_batch(tiny_backbone.tokenizer)).float().sum().backward()
    assert model.expert.prompt.grad.abs().sum() > 0 and model.expert.lowrank_b.grad.abs().sum() > 0
