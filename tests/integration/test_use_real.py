"""Using a real SST-2 expert (packaged MiniLM, real data, a 20-step budget): `predict` on 1,000 sentences from a file
agrees with `evaluate` on the same rows, and the PEFT-exported copy gives identical labels, both imported back into
a registry and run by PEFT itself (the exported model card's code)."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from cli_helpers import run_cli
from interop_helpers import model_card_code

from transferkit.backbone import default_model_path, load_backbone
from transferkit.tasks import load_splits, resolve_task

pytestmark = pytest.mark.real

LABELS = ("negative", "positive")


@pytest.fixture(scope="module")
def sst2(tmp_path_factory, shared_data):
    """A short real SST-2 LoRA expert and its 1,000 dev sentences as a labelled TSV file."""
    folder = tmp_path_factory.mktemp("use-real")
    env = {"TRANSFERKIT_REGISTRY": f"sqlite:///{folder}/registry.db", "TRANSFERKIT_DATA_DIR": str(shared_data)}
    trained = run_cli("train-source", "sst2", "--method", "lora", "--max-steps", "20", "--max-train-examples", "300",
                      "--seed", "1", "--name", "sst2-demo", "--json", "--quiet", cwd=folder, env_extra=env)
    assert trained.returncode == 0, trained.stderr
    dev = load_splits(resolve_task("sst2"), shared_data, seed=1).dev
    assert len(dev) == 1000
    # GLUE's TSV layout: SST-2 sentences hold no tabs or line breaks, so no quoting is needed (or read back).
    (folder / "sst2-1000.tsv").write_text("sentence\tlabel\n" + "".join(f"{e.texts[0]}\t{LABELS[e.label]}\n" for e in dev))
    return folder, env, dev


def _predicted(result) -> list[str]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line)["label"] for line in result.stdout.splitlines()]


def test_predict_on_a_file_matches_evaluate_on_the_same_rows(sst2):
    folder, env, dev = sst2
    start = time.perf_counter()
    labels = _predicted(run_cli("predict", "sst2-demo", "--input", "sst2-1000.tsv", "--jsonl", "-q", cwd=folder, env_extra=env))
    predict_seconds = time.perf_counter() - start
    accuracy = float(np.mean([label == LABELS[e.label] for label, e in zip(labels, dev)]))
    on_file = json.loads(run_cli("evaluate", "sst2-demo", "--task", "sst2-1000.tsv", "--json", "-q", cwd=folder, env_extra=env).stdout)
    on_split = json.loads(run_cli("evaluate", "sst2-demo", "--task", "sst2", "--split", "dev", "--json", "-q",
                                  cwd=folder, env_extra=env).stdout)
    print(f"\n1,000 SST-2 dev sentences: predict accuracy {accuracy:.4f} ({predict_seconds:.1f} s with start-up), "
          f"evaluate on the file {on_file['score']:.4f} {on_file['interval']}, on the dev split {on_split['score']:.4f}")
    assert len(labels) == on_file["examples"] == on_split["examples"] == 1000
    assert on_file["score"] == pytest.approx(accuracy, abs=1e-6) == on_split["score"]
    assert accuracy > 0.6  # 20 steps on MiniLM already beat chance clearly


def test_the_peft_exported_copy_gives_identical_labels(sst2):
    folder, env, dev = sst2
    original = _predicted(run_cli("predict", "sst2-demo", "--input", "sst2-1000.tsv", "--jsonl", "-q", cwd=folder, env_extra=env))
    exported = run_cli("export", "sst2-demo", "--format", "peft", "--out", "sst2-peft", cwd=folder, env_extra=env)
    assert exported.returncode == 0, exported.stderr
    other = {**env, "TRANSFERKIT_REGISTRY": f"sqlite:///{folder}/other.db"}
    imported = run_cli("import", "sst2-peft", "--name", "sst2-from-peft", cwd=folder, env_extra=other)
    assert imported.returncode == 0, imported.stderr
    assert _predicted(run_cli("predict", "sst2-from-peft", "--input", "sst2-1000.tsv", "--jsonl", "-q",
                              cwd=folder, env_extra=other)) == original

    code = model_card_code(folder / "sst2-peft")  # PEFT's own model, as the model card loads it
    model, recipe = code["load_exported"](str(folder / "sst2-peft"), default_model_path())
    tokenizer = load_backbone(None).tokenizer
    peft_labels = []
    for start in range(0, len(dev), 100):
        chunk = [e.texts[0] for e in dev[start:start + 100]]
        batch = tokenizer(chunk, truncation=True, max_length=128, padding=True, return_tensors="pt")
        peft_labels += [LABELS[i] for i in code["transferkit_logits"](model, recipe, batch).argmax(-1).tolist()]
    assert peft_labels == original
