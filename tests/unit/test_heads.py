"""Label mapping between a source's and a target's labels, and the head it starts the target from."""

from __future__ import annotations

import pytest
import torch

from transferkit.composition.heads import map_labels, mapped_head, mix_heads

MNLI = ("entailment", "neutral", "contradiction")
QNLI = ("entailment", "not_entailment")


def test_same_names_map_in_the_targets_order():
    mapping = map_labels(("entailment", "contradiction", "neutral"), MNLI, "mnli")
    assert mapping.rows == {"entailment": ["entailment"], "contradiction": ["contradiction"], "neutral": ["neutral"]}
    assert set(mapping.how.values()) == {"name"}


def test_a_negated_label_takes_every_other_source_label_and_a_negated_source_label_serves_the_rest():
    rte = map_labels(("entailment", "not_entailment"), MNLI, "mnli")
    assert rte.rows["not_entailment"] == ["neutral", "contradiction"] and rte.how["not_entailment"] == "negation of entailment"
    cb = map_labels(("entailment", "contradiction", "neutral"), QNLI, "qnli")
    assert cb.rows == {"entailment": ["entailment"], "contradiction": ["not_entailment"], "neutral": ["not_entailment"]}


def test_similar_names_map_one_to_one_and_unrelated_or_bare_labels_do_not():
    cr = map_labels(("neg", "pos"), ("negative", "positive"), "sst2")
    assert cr.rows == {"neg": ["negative"], "pos": ["positive"]} and cr.how["neg"].startswith("similarity")
    assert map_labels(("0", "1"), ("negative", "positive"), "sst2") is None
    assert map_labels(("unacceptable", "acceptable"), ("negative", "positive"), "sst2") is None
    assert map_labels(("entailment", "not_entailment"), ("not_duplicate", "duplicate"), "qqp") is None


def test_mapped_head_averages_matched_rows_and_mixing_averages_heads():
    weight = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 3.0]])
    bias = torch.tensor([0.5, 1.0, 2.0])
    mapping = map_labels(("entailment", "not_entailment"), MNLI, "mnli")
    w, b = mapped_head(mapping, MNLI, weight, bias, ("entailment", "not_entailment"))
    assert torch.equal(w, torch.tensor([[1.0, 0.0], [0.0, 2.0]])) and torch.equal(b, torch.tensor([0.5, 1.5]))
    mixed_w, mixed_b = mix_heads([(1.0, w, b), (3.0, torch.zeros(2, 2), torch.zeros(2))])
    assert torch.allclose(mixed_w, w / 4) and torch.allclose(mixed_b, b / 4)
    with pytest.raises(KeyError):  # a mapping for other labels cannot be applied
        mapped_head(mapping, MNLI, weight, bias, ("yes", "no"))
