"""MEPT on a tiny random BERT: routing, load counts, noise, prompt placement after a task prompt, exact save/load."""

from __future__ import annotations

import pytest
import torch

from transferkit.errors import InvalidInputError
from transferkit.methods import get_method
from transferkit.methods.structure import encoder_layers, hidden_states_argument
from transferkit.modeling import TaskModel
from transferkit.task_prompt import TaskPrompt


def _model(backbone, options=(), outputs=3, task_prompt=None):
    method = get_method("mept")
    torch.manual_seed(0)
    expert = method.build(method.config_class.from_options(list(options)), backbone)
    return TaskModel(backbone, expert, outputs, task_prompt=task_prompt)


def _batch(tokenizer, texts=("a good film", "a rather dull and long film", "fine", "bad")):
    return dict(tokenizer(list(texts), padding=True, return_tensors="pt"))


def test_shapes_parameter_count_and_export_names(tiny_backbone):
    d, layers = tiny_backbone.hidden_size, tiny_backbone.fingerprint.num_layers
    model = _model(tiny_backbone, ["num_virtual_tokens=3", "num_experts=4"])
    expert = model.expert
    assert expert.experts.shape == (layers, 4, 3, d) and expert.shared.shape == (layers, 3, d) and expert.router.shape == (layers, 4, d)
    assert torch.equal(expert.shared, torch.zeros_like(expert.shared))  # the shared expert starts at zero
    router = expert.router[0]
    assert torch.allclose(router @ router.t(), torch.eye(4), atol=1e-5)  # orthogonal init
    tensors = expert.export_tensors()
    assert set(tensors) == {f"layer{i}.{kind}" for i in range(layers) for kind in ("experts", "shared", "router")}
    assert sum(t.numel() for t in tensors.values()) == layers * (4 * 3 * d + 3 * d + 4 * d)


def test_exactly_top_k_experts_per_example_and_layer_in_training_only(tiny_backbone):
    model = _model(tiny_backbone, ["num_experts=4", "top_k=2", "num_virtual_tokens=2"])
    tokenizer, layers = tiny_backbone.tokenizer, tiny_backbone.fingerprint.num_layers
    model.train()
    model(**_batch(tokenizer, ["one example"]))
    load = model.expert.load
    assert load.shape == (layers, 4)
    assert all(sorted(row) == [0, 0, 1, 1] for row in load.tolist())  # two distinct experts, once each, per layer
    model(**_batch(tokenizer))
    assert int(load.sum()) == (1 + 4) * layers * 2  # examples x layers x top_k
    model.eval()
    with torch.no_grad():
        model(**_batch(tokenizer))
    assert int(load.sum()) == 5 * layers * 2  # evaluation does not count
    statistics = model.expert.training_statistics()
    assert statistics["expert_load"] == {f"layer{i}": load[i].tolist() for i in range(layers)}
    assert (statistics["activated_prompts"], statistics["total_prompts"]) == (3 * layers, 5 * layers)


def test_router_noise_only_while_training(tiny_backbone):
    model = _model(tiny_backbone, ["noise=1.0", "num_virtual_tokens=2"])
    expert = model.expert
    hidden = torch.randn(3, 5, tiny_backbone.hidden_size)
    mask = torch.ones(3, 5, dtype=torch.long)
    expert.eval()
    assert torch.equal(expert.route(0, hidden, mask)[0], expert.route(0, hidden, mask)[0])
    expert.train()
    assert not torch.equal(expert.route(0, hidden, mask)[0], expert.route(0, hidden, mask)[0])
    quiet = _model(tiny_backbone, ["noise=0", "num_virtual_tokens=2"]).expert.train()
    assert torch.equal(quiet.route(0, hidden, mask)[0], quiet.route(0, hidden, mask)[0])


def test_prompts_replace_exactly_the_virtual_positions_after_a_task_prompt(tiny_backbone):
    d, length, task_length = tiny_backbone.hidden_size, 3, 2
    model = _model(tiny_backbone, [f"num_virtual_tokens={length}", "layers=1"], task_prompt=TaskPrompt(torch.randn(task_length, d)))
    with torch.no_grad():
        model.expert.shared.normal_()
    block = encoder_layers(tiny_backbone, "test")[1]
    seen: dict[str, torch.Tensor] = {}
    # Registered before and after the expert's hook: the block's input as TaskModel built it, and as the block sees it.
    before = block.register_forward_pre_hook(
        lambda m, a, k: seen.update(before=hidden_states_argument(a, k)), with_kwargs=True, prepend=True
    )
    after = block.register_forward_pre_hook(lambda m, a, k: seen.update(after=hidden_states_argument(a, k)), with_kwargs=True)
    batch = _batch(tiny_backbone.tokenizer)
    model.eval()
    with torch.no_grad():
        model(**batch)
        real = seen["before"][:, task_length + length:]
        expected, _ = model.expert.route(0, real, batch["attention_mask"])
    before.remove(), after.remove()
    virtual = slice(task_length, task_length + length)
    assert torch.equal(seen["after"][:, virtual], expected)
    assert torch.equal(seen["after"][:, :task_length], seen["before"][:, :task_length])  # task prompt untouched
    assert torch.equal(seen["after"][:, task_length + length:], real)  # real tokens untouched
    assert not torch.equal(seen["before"][:, virtual], expected)


def test_padding_does_not_change_logits(tiny_backbone):
    model = _model(tiny_backbone, ["num_virtual_tokens=2", "top_k=2"])
    model.eval()
    tokenizer = tiny_backbone.tokenizer
    padded = tokenizer(["a good film", "a rather dull and long film that never ends"], padding=True, return_tensors="pt")
    alone = tokenizer(["a good film"], return_tensors="pt")
    with torch.no_grad():
        assert torch.allclose(model(**padded)[0], model(**alone)[0], atol=1e-5)


def test_export_import_reproduces_outputs_exactly(tiny_backbone):
    batch = _batch(tiny_backbone.tokenizer)
    options = ["num_virtual_tokens=2", "num_experts=3", "top_k=2", "layers=0,1"]
    trained = _model(tiny_backbone, options)
    optimizer = torch.optim.AdamW([p for p in trained.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        torch.nn.functional.cross_entropy(trained(**batch), torch.tensor([0, 1, 2, 0])).backward()
        optimizer.step()
        optimizer.zero_grad()
    trained.eval()
    assert trained.expert.shared.abs().sum() > 0
    with torch.no_grad():
        expected = trained(**batch)
    tensors = trained.export_tensors()
    trained.detach()
    restored = _model(tiny_backbone, options)
    restored.import_tensors(tensors)
    restored.eval()
    with torch.no_grad():
        assert torch.equal(restored(**batch), expected)


def test_only_chosen_layers_are_hooked(tiny_backbone):
    model = _model(tiny_backbone, ["layers=1", "num_virtual_tokens=2"])
    blocks = encoder_layers(tiny_backbone, "test")
    assert model.expert.layer_ids == [1] and len(blocks[0]._forward_pre_hooks) == 0 and len(blocks[1]._forward_pre_hooks) == 1
    assert set(model.expert.export_tensors()) == {"layer1.experts", "layer1.shared", "layer1.router"}


def test_layers_out_of_range_is_refused(tiny_backbone):
    method = get_method("mept")
    with pytest.raises(InvalidInputError, match="out of range for a 2-layer backbone"):
        method.build(method.config_class.from_options(["layers=0,5"]), tiny_backbone)


@pytest.mark.parametrize(
    "options,message",
    [
        (["top_k=5"], "top_k must be between 1 and num_experts=4"),
        (["num_experts=0"], "num_experts"),
        (["layers=1,1"], "distinct"),
        (["noise=-1"], "noise"),
        (["num_virtual_tokens=0"], "num_virtual_tokens"),
    ],
)
def test_bad_options_are_refused(options, message):
    with pytest.raises(InvalidInputError, match=message):
        get_method("mept").config_class.from_options(options)


def test_direct_backbone_calls_pass_through_while_attached(tiny_backbone):
    """Without TaskModel's virtual positions there is nothing to replace: the frozen backbone's output is unchanged."""
    batch = _batch(tiny_backbone.tokenizer)
    with torch.no_grad():
        plain = tiny_backbone.model(**batch).last_hidden_state
        model = _model(tiny_backbone, ["num_virtual_tokens=2"])
        model(**batch)  # a routed forward first: its state must not leak into the next call
        assert torch.equal(tiny_backbone.model(**batch).last_hidden_state, plain)


def test_bf16_autocast_trains(tiny_backbone):
    model = _model(tiny_backbone, ["num_virtual_tokens=2"])
    model.precision = "bf16"
    model.train()
    model(**_batch(tiny_backbone.tokenizer)).float().sum().backward()
    assert model.expert.experts.grad.abs().sum() > 0 and model.expert.router.grad.abs().sum() > 0
