"""Predicting and evaluating with stored experts through the Python API: tiny experts trained on real data."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from interop_helpers import copy_registry

import transferkit
from transferkit.errors import IncompatibleBackboneError, InvalidInputError, NotFoundError
from transferkit.tasks import compute_metrics, load_splits, resolve_task


@pytest.fixture
def registry(tiny_experts, shared_data, tmp_path):
    """A copy of the tiny registry: evaluations and aliases written here stay out of the shared one."""
    with transferkit.Registry(copy_registry(tiny_experts[0], tmp_path / "registry"), data_dir=shared_data) as opened:
        yield opened


def test_public_names_are_exported_lazily():
    assert {"Registry", "Expert", "ExpertModel", "Prediction", "EvaluationRecord"} <= set(transferkit.__all__)
    assert transferkit.Registry.__module__ == "transferkit.api.registry"
    with pytest.raises(AttributeError):
        transferkit.NoSuchThing  # noqa: B018


def test_registry_finds_experts_by_every_kind_of_reference(registry, tiny_experts):
    _, experts = tiny_experts
    rte = experts["rte"]
    assert registry.get(rte.id).name == registry.get(rte.id[:6]).name == registry["tiny-rte"].name == "tiny-rte"
    assert [e.name for e in registry.experts(task="rte")] == ["tiny-rte"]
    assert "Expert('tiny-rte'" in repr(registry.get("tiny-rte")) and "<table>" in registry.get("tiny-rte")._repr_html_()
    assert "experts=4" in repr(registry)
    with pytest.raises(NotFoundError, match="id, name or alias"):
        registry.get("no-such-expert")


def test_predictions_have_labels_probabilities_and_match_argmax(registry):
    model = registry.load("tiny-rte")
    pairs = [("A man is sleeping.", "A person sleeps."), ("The cat sat.", "Nobody sat anywhere at all.")]
    predictions = model.predict(pairs)
    assert [p.label for p in predictions] == [model.inputs.label_names[p.label_id] for p in predictions]
    for p in predictions:
        assert abs(sum(p.probabilities.values()) - 1) < 1e-4 and p.score == max(p.probabilities.values())
    assert model(pairs[0]) == predictions[0]  # one pair -> one prediction, like a transformers pipeline
    assert transferkit.ExpertModel.from_pretrained("tiny-rte", registry=registry.store)(pairs[0]) == predictions[0]


def test_regression_expert_gives_a_score(registry):
    [prediction] = registry.predict("tiny-stsb", [("A plane is taking off.", "An air plane is taking off.")])
    assert prediction.label is None and prediction.probabilities is None and isinstance(prediction.score, float)


@pytest.mark.parametrize("inputs,fragment", [
    ([("only one text",)], "has 1 text(s), but expert tiny-rte (glue/rte) reads 2"),
    (["a bare string"], "has 1 text(s)"),
    ([("a", "b", "c")], "has 3 text(s)"),
    ([("fine", "   ")], "text 2 is empty"),
])
def test_bad_inputs_are_refused_in_one_line(registry, inputs, fragment):
    with pytest.raises(InvalidInputError, match=fragment.replace("(", r"\(").replace(")", r"\)")):
        registry.predict("tiny-rte", inputs)


def test_an_expert_on_another_backbone_is_refused(registry):
    with pytest.raises(IncompatibleBackboneError, match="pass the matching --model"):
        registry.load("tiny-rte", model="minilm")


def test_evaluate_reproduces_the_training_test_metric_and_predict_agrees(registry, shared_data):
    expert = registry.get("tiny-rte")
    evaluation = expert.evaluate("rte")
    assert evaluation.metrics == {"accuracy": round(expert.metrics["test"]["accuracy"], 6)}  # same split, seed and model
    assert evaluation.interval["low"] <= evaluation.score <= evaluation.interval["high"]
    assert evaluation.details["seed"] == 1 and evaluation.examples == 139
    test = load_splits(resolve_task("rte"), shared_data, seed=1).test
    assert evaluation.data_fingerprint["split_fingerprint"] == load_splits(resolve_task("rte"), shared_data, seed=1).split_fingerprints["test"]
    labels = [expert.load().inputs.label_names.index(p.label) for p in expert.predict([e.texts for e in test])]
    assert compute_metrics(resolve_task("rte"), labels, [e.label for e in test])["accuracy"] == pytest.approx(evaluation.score, abs=1e-6)
    assert [(e.name, ev.id) for e, ev in registry.best_on("rte")] == [("tiny-rte", evaluation.id)]


def test_labelled_file_gives_the_same_score_as_the_task_rows(registry, shared_data, tmp_path):
    test = load_splits(resolve_task("rte"), shared_data, seed=1).test
    names = ("entailment", "not_entailment")
    path = tmp_path / "mine.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["premise", "hypothesis", "gold"])
        writer.writerows([e.texts[0], e.texts[1], names[e.label]] for e in test)
    task_score = registry.evaluate("tiny-rte", "rte").score
    on_file = registry.get("tiny-rte").evaluate(file=path, columns={"sentence1": "premise", "sentence2": "hypothesis"},
                                               label_column="gold")
    assert (on_file.task_name, on_file.split, on_file.examples) == ("file:mine.csv", "file", len(test))
    assert on_file.score == task_score and len(on_file.data_fingerprint["sha256"]) == 64


def test_label_sets_must_match_or_be_mapped(registry):
    assert registry.evaluate("tiny-rte", "superglue/rte").examples > 0  # the same label names: compatible
    with pytest.raises(InvalidInputError, match=r"predicts \{entailment, not_entailment\} but superglue/cb has"):
        registry.evaluate("tiny-rte", "cb")
    mapped = registry.evaluate("tiny-rte", "cb", label_map={"entailment": "entailment", "not_entailment": "contradiction"})
    assert mapped.details["label_map"] == {"entailment": "entailment", "not_entailment": "contradiction"}
    with pytest.raises(InvalidInputError, match="does not map the expert's label 'not_entailment'"):
        registry.evaluate("tiny-rte", "cb", label_map={"entailment": "entailment"})
    with pytest.raises(InvalidInputError, match="a score and classes"):
        registry.evaluate("tiny-stsb", "mrpc")
    with pytest.raises(InvalidInputError, match="reads 2 text"):
        registry.evaluate("tiny-rte", "sst2")


def test_mixture_predicts_and_loses_its_sources_only_with_force(tiny_experts, shared_data, tmp_path):
    url = copy_registry(tiny_experts[0], tmp_path / "copy")
    with transferkit.Registry(url, data_dir=shared_data) as registry:
        mixture = registry.get("tiny-cb-pemt")
        before = mixture.predict([("It rained.", "The ground is wet.")])
        assert before[0].label in ("entailment", "contradiction", "neutral")
        with pytest.raises(InvalidInputError, match="made from it"):
            registry.delete("tiny-rte")
        assert registry.get("tiny-cb-pemt").predict([("It rained.", "The ground is wet.")]) == before
        deletion = registry.delete("tiny-rte", force=True)
        assert [(o.child_name, o.needs_parent_to_load) for o in deletion.orphaned] == [("tiny-cb-pemt", True)]
        with pytest.raises(NotFoundError, match="tiny-cb-pemt cannot be loaded: a source it reads is gone"):
            registry.get("tiny-cb-pemt").load()


def test_bf16_predictions_are_valid(registry):
    [prediction] = registry.load("tiny-rte", precision="bf16").predict([("A man sleeps.", "Someone sleeps.")])
    assert prediction.label in ("entailment", "not_entailment") and 0.5 <= prediction.score <= 1.0
    assert np.isclose(sum(prediction.probabilities.values()), 1.0, atol=1e-3)
    json.dumps(prediction.to_dict())


def test_a_merged_expert_predicts_what_its_mixture_predicts(tiny_experts, shared_data, tmp_path, tiny_model_dir):
    from transferkit.composition.merge import merge_expert

    url = copy_registry(tiny_experts[0], tmp_path / "copy")
    with transferkit.Registry(url, data_dir=shared_data) as registry:
        mixture = registry.transfer(
            "cb", strategy="pemt", gate_input="task", sources=["tiny-rte", registry.get("tiny-mrpc")], model=str(tiny_model_dir),
            name="tiny-cb-taskgate", max_train_examples=16, max_steps=2, batch_size=8, seed=3,
        )
        assert mixture.method == "mixture" and mixture.record.config["gate_input"] == "task"
        merged, _ = merge_expert(registry.store, mixture.id, data_dir=shared_data, name=None, command=["test"])
        pairs = [("It rained.", "The ground is wet."), ("He left early.", "He stayed until the end."), ("A dog barks.", "An animal makes noise.")]
        composed, collapsed = registry.predict(mixture.id, pairs), registry.predict(merged.id, pairs)
        assert [p.label for p in collapsed] == [p.label for p in composed]
        for a, b in zip(composed, collapsed):
            assert b.probabilities == pytest.approx(a.probabilities, abs=1e-4)


def test_search_and_compare_through_the_api(registry, tiny_model_dir):
    [nearest, *_] = registry.search("Does the first sentence entail the second?", limit=3)
    assert nearest["task"] in ("glue/rte", "superglue/cb", "glue/mrpc") and all(e.task == nearest["task"] for e in nearest["experts"])
    [row] = registry.compare(["cb"], strategies=["scratch"], seeds=[1], grid="api", max_steps=2, model=str(tiny_model_dir))
    assert (row["target"], row["strategy"], row["seeds"]) == ("superglue/cb", "scratch", 1)
    assert registry.get("api-cb-scratch-s1").task == "superglue/cb"
