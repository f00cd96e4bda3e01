"""The target's task prompt: PEMT's correlation with the sources' prompts, at full weight or scaled by a learned scalar."""

from __future__ import annotations

import torch

from transferkit.task_prompt import TaskPrompt


def _prompt(learn_source_scale: bool, sources: int = 3) -> TaskPrompt:
    torch.manual_seed(0)
    prompt = TaskPrompt(torch.randn(4, 8), [torch.randn(5, 8) for _ in range(sources)], learn_source_scale=learn_source_scale)
    return prompt.eval()  # no dropout: compare exact values


def _correlated(prompt: TaskPrompt) -> torch.Tensor:
    return sum(torch.softmax(prompt.embedding @ s.t(), dim=-1) @ s for s in prompt.sources)


def test_fixed_correlation_adds_every_sources_term_at_full_weight():
    prompt = _prompt(learn_source_scale=False)
    assert prompt.source_scale is None
    assert torch.allclose(prompt(), prompt.embedding + _correlated(prompt), atol=1e-6)


def test_learned_scale_starts_at_the_targets_own_prompt_and_learns():
    prompt = _prompt(learn_source_scale=True)
    assert torch.equal(prompt(), prompt.embedding)  # s = 0: the sources' prompts add nothing yet
    target = torch.randn(4, 8)
    ((prompt() - target) ** 2).sum().backward()
    assert prompt.source_scale.grad is not None and prompt.source_scale.grad.abs() > 0  # s moves off 0
    assert prompt.embedding.grad is not None
    assert all(s.grad is None and not s.requires_grad for s in prompt.sources)  # the sources stay frozen


def test_export_collapses_the_learned_scale_into_one_stored_prompt():
    prompt = _prompt(learn_source_scale=True)
    with torch.no_grad():
        prompt.source_scale.fill_(0.25)
    exported = prompt.export_tensors()
    assert set(exported) == {"embedding"}  # the stored expert holds the composed prompt only
    assert torch.allclose(exported["embedding"], prompt.embedding + 0.25 * _correlated(prompt), atol=1e-6)
    reloaded = TaskPrompt(exported["embedding"])
    assert torch.equal(reloaded.eval()(), exported["embedding"])


def test_without_sources_there_is_no_scale_to_learn():
    prompt = TaskPrompt(torch.randn(4, 8), [], learn_source_scale=True)
    assert prompt.source_scale is None and [n for n, _ in prompt.named_parameters()] == ["embedding"]
