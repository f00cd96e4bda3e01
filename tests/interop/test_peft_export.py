"""`export --format peft` on tiny experts: PEFT loads the folder and the model card's code gives transferkit's logits."""

from __future__ import annotations

import json
import re

import pytest
import torch
from cli_helpers import assert_one_line_error, run_cli
from interop_helpers import copy_registry, model_card_code

from transferkit.backbone import load_backbone
from transferkit.errors import InvalidInputError, OutputError
from transferkit.interop import export_expert, import_path
from transferkit.registry import open_registry
from transferkit.rebuild import load_expert_model

PAIRS = (["a good film", "the plot is thin and the acting worse"], ["it is fine", "no"])


@pytest.mark.parametrize("key, peft_type", [("prompt", "PROMPT_TUNING"), ("lora", "LORA"), ("prefix", "PREFIX_TUNING")])
def test_peft_loads_the_export_and_the_logits_match(key, peft_type, tiny_source, tiny_model_dir, tmp_path):
    url, experts = tiny_source
    registry = open_registry(url)
    expert = experts[key]
    folder = tmp_path / "adapter"
    summary = export_expert(registry, expert, "peft", folder, model=str(tiny_model_dir))
    assert summary["peft_type"] == peft_type
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == peft_type and config["task_type"] == "FEATURE_EXTRACTION"
    assert config["modules_to_save"] == ["transferkit_head"]
    assert config["base_model_name_or_path"] == str(tiny_model_dir)

    code = model_card_code(folder)
    model, recipe = code["load_exported"](str(folder), str(tiny_model_dir))
    backbone = load_backbone(str(tiny_model_dir))
    reference = load_expert_model(registry, expert, backbone).eval()
    try:
        for batch in (backbone.tokenizer(*PAIRS, padding=True, return_tensors="pt"),
                      backbone.tokenizer(PAIRS[0], padding=True, return_tensors="pt")):
            with torch.no_grad():
                expected = reference(**batch)
            assert torch.allclose(code["transferkit_logits"](model, recipe, batch), expected, atol=1e-5, rtol=0)
    finally:
        reference.detach()


@pytest.mark.parametrize("key", ["prompt", "lora", "prefix"])
def test_reimporting_an_export_gives_back_the_same_tensors(key, tiny_source, tiny_model_dir, tmp_path):
    url, experts = tiny_source
    registry = open_registry(copy_registry(url, tmp_path / "copy"))
    original = experts[key]
    export_expert(registry, original, "peft", tmp_path / "adapter", model=str(tiny_model_dir))
    summary = import_path(registry, tmp_path / "adapter", model=str(tiny_model_dir), command=["test"])
    imported = registry.get_expert(summary["added"][0]["id"])
    assert (imported.method, imported.config, imported.task_name) == (original.method, original.config, original.task_name)
    before, _ = registry.load_expert_tensors(original)
    after, _ = registry.load_expert_tensors(imported)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert registry.get_run(imported.run_id).kind == "import"
    assert [(e.parent_id, e.role) for e in registry.lineage_edges(imported.id)["parents"]] == [(original.id, "imported-from")]


@pytest.mark.parametrize("key, fragment", [
    ("adapter", "bottleneck adapter"),
    ("mixture", "gated mixture"),
    ("prefix-with-prompt", "--task-prompt-length 0"),
])
def test_experts_peft_cannot_hold_are_refused(key, fragment, tiny_source, tiny_model_dir, tmp_path):
    url, experts = tiny_source
    with pytest.raises(InvalidInputError, match=re.escape(fragment)):
        export_expert(open_registry(url), experts[key], "peft", tmp_path / "x", model=str(tiny_model_dir))
    assert not (tmp_path / "x").exists()


def test_cli_refusals_are_one_line_and_write_nothing(tiny_source, tiny_model_dir, tmp_path):
    url, experts = tiny_source
    result = run_cli("--registry", url, "export", experts["mixture"].name, "--format", "peft", "--out", str(tmp_path / "x"),
                     "--model", str(tiny_model_dir), cwd=tmp_path)
    assert_one_line_error(result, "cannot be exported for PEFT", "--format bundle")
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    with pytest.raises(OutputError, match="not an empty folder"):
        export_expert(open_registry(url), experts["lora"], "peft", tmp_path / "taken", model=str(tiny_model_dir))
    assert [p.name for p in tmp_path.iterdir()] == ["taken"] and [p.name for p in (tmp_path / "taken").iterdir()] == ["keep.txt"]
