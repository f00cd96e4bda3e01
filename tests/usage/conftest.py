"""Fixtures for using experts: a registry of tiny experts trained on real data (classification, regression, a mixture)."""

from __future__ import annotations

import pytest

from transferkit.composition.transfer import TransferJob, transfer
from transferkit.registry import ExpertRecord, open_registry
from transferkit.training.loop import TrainingConfig
from transferkit.workflows import SourceJob, train_source

TINY = {"rte": ("rte", []), "mrpc": ("mrpc", []), "stsb": ("stsb", [])}  # key: (task, method options)


@pytest.fixture(scope="session")
def tiny_experts(tmp_path_factory, tiny_model_dir, shared_data) -> tuple[str, dict[str, ExpertRecord]]:
    """(registry URL, experts): LoRA experts for RTE, MRPC and STS-B on the tiny BERT, and a pemt mixture of the first two
    for CB. Tests that change the registry copy it first (`interop_helpers.copy_registry`)."""
    url = f"sqlite:///{tmp_path_factory.mktemp('usage')}/experts.db"
    registry = open_registry(url)
    experts = {
        key: train_source(registry, SourceJob(
            task=task, method="lora", method_options=["r=2", *options], model=str(tiny_model_dir), data_dir=shared_data,
            name=f"tiny-{key}", max_train_examples=16, show_progress=False,
            training=TrainingConfig(max_steps=2, batch_size=8, eval_batch_size=256, seed=1),
        ))
        for key, (task, options) in TINY.items()
    }
    experts["mixture"] = transfer(registry, TransferJob(
        target="cb", strategy="pemt", sources=[experts["rte"].id, experts["mrpc"].id], model=str(tiny_model_dir),
        data_dir=shared_data, name="tiny-cb-pemt", max_train_examples=16, show_progress=False,
        training=TrainingConfig(max_steps=2, batch_size=8, eval_batch_size=256, seed=3),
    )).expert
    registry.close()
    return url, experts
