"""Task embeddings: the packaged MiniLM, mean-pooled and L2-normalised.

Two per task: its one-sentence description, and its data (the normalised mean of the
embeddings of a seeded sample of `DATA_SAMPLE_SIZE` training inputs, the texts of a
pair joined by a space). The embedder is fixed (independent of the training backbone)
so that task similarities in one registry are always comparable. A data embedding is
kept in memory for the process, keyed by the sampled texts themselves: a `compare` grid
embeds its target's data once, not once per cell.
"""

from __future__ import annotations

import hashlib
import json
import random
from collections import OrderedDict
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

from transferkit.backbone import Backbone, load_backbone
from transferkit.modeling import mean_pool


@lru_cache(maxsize=1)
def _embedder() -> Backbone:
    return load_backbone(None)


def embedder_id() -> str:
    return f"all-MiniLM-L6-v2/mean-pool/{_embedder().backbone_id}"


@torch.no_grad()
def embed_texts(texts: list[str]) -> np.ndarray:
    """Unit-length sentence embeddings, one row per text."""
    backbone = _embedder()
    encoded = backbone.tokenizer(texts, padding=True, truncation=True, max_length=256, return_tensors="pt")
    hidden = backbone.model(**encoded).last_hidden_state
    pooled = mean_pool(hidden, encoded["attention_mask"])
    return torch.nn.functional.normalize(pooled, dim=-1).numpy()


DATA_SAMPLE_SIZE = 256
_BATCH = 64
_DATA_CACHE_SIZE = 16
_data_cache: OrderedDict[str, np.ndarray] = OrderedDict()  # sha256 of the sampled texts -> their unit mean embedding


def embed_task_data(examples: Sequence, task_name: str) -> np.ndarray:
    """Unit-length mean embedding of a seeded sample of the examples' inputs (`transferkit.tasks.Example`s)."""
    chosen = list(examples)
    if len(chosen) > DATA_SAMPLE_SIZE:
        chosen = random.Random(f"transferkit:{task_name}:data-embedding").sample(chosen, DATA_SAMPLE_SIZE)
    texts = [" ".join(example.texts) for example in chosen] or [""]
    key = hashlib.sha256(json.dumps([embedder_id(), texts]).encode()).hexdigest()
    if key in _data_cache:
        _data_cache.move_to_end(key)
        return _data_cache[key].copy()
    vectors = np.concatenate([embed_texts(texts[i : i + _BATCH]) for i in range(0, len(texts), _BATCH)])
    mean = vectors.mean(axis=0)
    unit = mean / max(float(np.linalg.norm(mean)), 1e-12)
    _data_cache[key] = unit
    if len(_data_cache) > _DATA_CACHE_SIZE:
        _data_cache.popitem(last=False)
    return unit.copy()
