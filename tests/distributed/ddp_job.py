"""Runs the unchanged `transferkit` CLI in this process: `train-source`, then `transfer` from that source.

test_distributed.py launches it under torchrun (2 processes, gloo) and as one plain process, then
compares the two registries. The training sets (71 and 37 examples, batches of 16) end in an odd-sized
batch, which the two processes split unevenly. Dropout is switched off (the identity) because a batch split across
processes draws other masks than the same batch in one process; everything else is what users run.
Usage: python ddp_job.py REGISTRY_URL MODEL_DIR DATA_DIR
"""

from __future__ import annotations

import sys

import torch

from transferkit.cli.app import main


def run_cli(*args: str) -> None:
    sys.argv = ["transferkit", *args]
    try:
        main()
    except SystemExit as exit_:
        if exit_.code:
            raise


if __name__ == "__main__":
    registry, model, data_dir = sys.argv[1:4]
    torch.nn.Dropout.forward = lambda self, input: input  # see the module docstring
    common = ["--model", model, "--batch-size", "16", "--max-length", "64", "--quiet"]
    run_cli("--registry", registry, "--data-dir", data_dir, "train-source", "glue/rte", "--method", "lora",
            "--max-train-examples", "71", "--max-steps", "6", "--eval-every", "3", "--name", "rte-source", *common)
    run_cli("--registry", registry, "--data-dir", data_dir, "transfer", "--target", "superglue/cb",
            "--sources", "rte-source", "--max-train-examples", "37", "--max-steps", "4", "--eval-every", "2",
            "--name", "cb-pemt", *common)
