"""Using a real SST-2 expert (packaged MiniLM, real data, a 20-step budget): `predict` on 1,000 sentences from a file
agrees with `evaluate` on the same rows, and the PEFT-exported copy gives identical labels, both imported back into
a registry and run by PEFT itself (the exported model card's code).

The expert is the one the README's Python example trains (the session fixture `readme_example`: `train_source("sst2",
method="lora", max_steps=20, max_train_examples=300)`), so the suite trains that 20-step expert once."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from cli_helpers import run_cli, run_cli_in_process
from interop_helpers import model_card_code

from transferkit.backbone import default_model_path, load_backbone
from transferkit.registry import open_registry
from transferkit.tasks import load_splits, resolve_task

pytestmark = pytest.mark.real

LABELS = ("negative", "positive")


@pytest.fixture(scope="module")
def sst2(tmp_path_factory, shared_data, readme_example):
    """The README example's real SST-2 LoRA expert (sst2-lora) and 1,000 SST-2 dev sentences as a labelled TSV file."""
    url, example = readme_example
    assert example.returncode == 0, example.stderr
    folder = tmp_path_factory.mktemp("use-real")
    env = {"TRANSFERKIT_REGISTRY": url, "TRANSFERKIT_DATA_DIR": str(shared_data)}
    store = open_registry(url)
    seed = store.get_run(store.get_expert("sst2-lora").run_id).seed  # `evaluate --split dev` splits with the training seed
    store.close()
    dev = load_splits(resolve_task("sst2"), shared_data, seed=seed).dev
    assert len(dev) == 1000
    # GLUE's TSV layout: SST-2 sentences hold no tabs or line breaks, so no quoting is needed (or read back).
    (folder / "sst2-1000.tsv").write_text("sentence\tlabel\n" + "".join(f"{e.texts[0]}\t{LABELS[e.label]}\n" for e in dev))
    return folder, env, dev


def _predicted(result) -> list[str]:
    assert result.returncode == 0, result.stderr
    return [json.loads(line)["label"] for line in result.stdout.splitlines()]


@pytest.fixture(scope="module")
def predicted(sst2) -> tuple[list[str], float]:
    """`transferkit predict` on the 1,000-sentence file, once, through the installed script: (labels, seconds)."""
    folder, env, _ = sst2
    start = time.perf_counter()
    labels = _predicted(run_cli("predict", "sst2-lora", "--input", "sst2-1000.tsv", "--jsonl", "-q", cwd=folder, env_extra=env))
    return labels, time.perf_counter() - start


def test_predict_on_a_file_matches_evaluate_on_the_same_rows(sst2, predicted):
    folder, env, dev = sst2
    labels, predict_seconds = predicted
    accuracy = float(np.mean([label == LABELS[e.label] for label, e in zip(labels, dev)]))
    # The evaluations run the same main() in this process (no second interpreter importing torch for each).
    on_file = json.loads(run_cli_in_process("evaluate", "sst2-lora", "--task", "sst2-1000.tsv", "--json", "-q",
                                            cwd=folder, env_extra=env).stdout)
    on_split = json.loads(run_cli_in_process("evaluate", "sst2-lora", "--task", "sst2", "--split", "dev", "--json", "-q",
                                             cwd=folder, env_extra=env).stdout)
    print(f"\n1,000 SST-2 dev sentences: predict accuracy {accuracy:.4f} ({predict_seconds:.1f} s with start-up), "
          f"evaluate on the file {on_file['score']:.4f} {on_file['interval']}, on the dev split {on_split['score']:.4f}")
    assert len(labels) == on_file["examples"] == on_split["examples"] == 1000
    assert on_file["score"] == pytest.approx(accuracy, abs=1e-6) == on_split["score"]
    assert accuracy > 0.6  # 20 steps on MiniLM already beat chance clearly


def test_the_peft_exported_copy_gives_identical_labels(sst2, predicted):
    folder, env, dev = sst2
    original, _ = predicted
    exported = run_cli_in_process("export", "sst2-lora", "--format", "peft", "--out", "sst2-peft", cwd=folder, env_extra=env)
    assert exported.returncode == 0, exported.stderr
    other = {**env, "TRANSFERKIT_REGISTRY": f"sqlite:///{folder}/other.db"}
    imported = run_cli_in_process("import", "sst2-peft", "--name", "sst2-from-peft", cwd=folder, env_extra=other)
    assert imported.returncode == 0, imported.stderr
    assert _predicted(run_cli_in_process("predict", "sst2-from-peft", "--input", "sst2-1000.tsv", "--jsonl", "-q",
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
