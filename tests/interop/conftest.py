"""Import/export fixtures: a registry of tiny experts trained on real data (every method, and a pemt mixture)."""

from __future__ import annotations

import pytest

from transferkit.composition.transfer import TransferJob, transfer
from transferkit.registry import ExpertRecord, open_registry
from transferkit.training.loop import TrainingConfig
from transferkit.workflows import SourceJob, train_source

TINY_EXPERTS = {  # key: (task, method, method options, task prompt length)
    "prompt": ("rte", "prompt", ["num_virtual_tokens=3"], 8),
    "lora": ("rte", "lora", ["r=2"], 8),
    "prefix": ("rte", "prefix", ["num_virtual_tokens=3"], 0),
    "prefix-with-prompt": ("rte", "prefix", ["num_virtual_tokens=2"], 8),
    "adapter": ("rte", "adapter", [], 8),
    "mrpc-lora": ("mrpc", "lora", ["r=2"], 8),
}


@pytest.fixture(scope="session")
def tiny_source(tmp_path_factory, tiny_model_dir, shared_data) -> tuple[str, dict[str, ExpertRecord]]:
    """A registry with tiny experts of several methods, plus a pemt mixture of two LoRA sources (rte, mrpc -> cb).

    Shared by every test of this folder: tests read it, and copy it (`copy_registry`) to change it.
    """
    url = f"sqlite:///{tmp_path_factory.mktemp('interop')}/source.db"
    registry = open_registry(url)
    experts = {}
    for key, (task, method, options, prompt_length) in TINY_EXPERTS.items():
        experts[key] = train_source(registry, SourceJob(
            task=task, method=method, method_options=options, model=str(tiny_model_dir), data_dir=shared_data,
            name=f"tiny-{key}", max_train_examples=16, task_prompt_length=prompt_length, show_progress=False,
            training=TrainingConfig(max_steps=2, batch_size=8, eval_batch_size=256, seed=1),
        ))
    experts["mixture"] = transfer(registry, TransferJob(
        target="cb", strategy="pemt", sources=[experts["lora"].id, experts["mrpc-lora"].id], model=str(tiny_model_dir),
        data_dir=shared_data, name="tiny-cb-pemt", max_train_examples=16, show_progress=False,
        training=TrainingConfig(max_steps=2, batch_size=8, eval_batch_size=256, seed=3),
    )).expert
    registry.close()
    return url, experts
