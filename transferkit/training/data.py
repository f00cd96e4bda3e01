"""Tokenise once (cached on disk, written atomically), then batch by length with dynamic padding.

Padding every batch to 128 tokens wastes most of the compute on GLUE-length
inputs; sorting within shuffled mega-batches keeps batches random across steps
but nearly uniform in length inside each batch.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from transferkit.durable import write_failure
from transferkit.errors import OutputError
from transferkit.paths import CACHE_ENV, cache_root
from transferkit.tasks import Example

_CACHE_VERSION = "2"  # 2: pairs joined by PAIR_SEPARATOR for tokenizers that mark no pair boundary
# Decoder tokenizers (GPT-2, SmolLM2) put nothing between the two texts of a pair; a newline keeps them apart.
PAIR_SEPARATOR = "\n"
_MEGA_BATCH = 50


@dataclass
class TokenizedSplit:
    """Token ids of one split, stored flat with offsets (cheap to cache and slice)."""

    ids: np.ndarray  # int32, all sequences concatenated
    types: np.ndarray | None  # token type ids, same layout, when the tokenizer produces them
    offsets: np.ndarray  # int64, len = n + 1
    labels: np.ndarray  # int64 or float32
    groups: list[str | None]

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def total_tokens(self, indices: Sequence[int]) -> int:
        lengths = self.lengths()
        return int(sum(lengths[i] for i in indices))


def _tokenizer_identity(tokenizer) -> str:
    vocab = tokenizer.get_vocab()
    digest = hashlib.sha256(json.dumps(sorted(vocab.items())).encode()).hexdigest()[:16]
    return f"{tokenizer.name_or_path}:{digest}"


def cache_dir() -> Path:
    return cache_root() / "tokens"


def separates_pairs(tokenizer) -> bool:
    """Whether the tokenizer marks the boundary of a text pair with special tokens (BERT's [SEP]; Llama's BOS)."""
    return tokenizer.num_special_tokens_to_add(pair=True) > tokenizer.num_special_tokens_to_add(pair=False)


def tokenize_examples(
    examples: Sequence[Example], tokenizer, max_length: int, regression: bool, use_cache: bool = True
) -> TokenizedSplit:
    """Tokenise a split; the result is cached by (tokenizer, exact examples, max_length)."""
    key_source = json.dumps(
        [_CACHE_VERSION, _tokenizer_identity(tokenizer), max_length, [[e.texts, e.label, e.group] for e in examples]],
        sort_keys=True,
    )
    key = hashlib.sha256(key_source.encode()).hexdigest()
    path = cache_dir() / f"{key}.npz"
    groups = [e.group for e in examples]
    if use_cache and path.exists():
        try:
            with np.load(path, allow_pickle=False) as data:
                types = data["types"] if data["types"].size else None
                return TokenizedSplit(data["ids"], types, data["offsets"], data["labels"], groups)
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache entry is simply rebuilt
    first = [e.texts[0] for e in examples]
    second = [e.texts[1] for e in examples] if examples and len(examples[0].texts) > 1 else None
    if second is not None and not separates_pairs(tokenizer):
        first, second = [a + PAIR_SEPARATOR + b for a, b in zip(first, second)], None
    encoded = tokenizer(first, second, truncation=True, max_length=max_length) if examples else {"input_ids": []}
    sequences = encoded["input_ids"]
    offsets = np.zeros(len(sequences) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(s) for s in sequences])
    ids = np.fromiter((t for s in sequences for t in s), dtype=np.int32, count=int(offsets[-1]))
    types = None
    if "token_type_ids" in encoded:
        types = np.fromiter((t for s in encoded["token_type_ids"] for t in s), dtype=np.int8, count=int(offsets[-1]))
    labels = np.asarray([e.label for e in examples], dtype=np.float32 if regression else np.int64)
    split = TokenizedSplit(ids, types, offsets, labels, groups)
    if use_cache:
        _write_cache(path, ids=ids, types=types if types is not None else np.zeros(0, np.int8), offsets=offsets, labels=labels)
    return split


def _write_cache(path: Path, **arrays: np.ndarray) -> None:
    """Write a cache entry beside its name and rename it into place; a failed write leaves no partial file.

    A cache that cannot be written is reported, not skipped: on a full disk the run's checkpoints and its
    expert would fail next, after the training time is spent.
    """
    temporary = path.with_name(f".{path.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(temporary, "xb") as handle:  # a file object: np.savez appends no suffix
            np.savez(handle, **arrays)
        os.replace(temporary, path)
    except OSError as error:
        needed = sum(array.nbytes for array in arrays.values()) + 1024 * len(arrays)  # plus the zip headers
        raise OutputError(
            f"cannot write the tokenisation cache {path} ({write_failure(error, path, needed)}); free disk space "
            f"or set {CACHE_ENV} to a writable folder"
        ) from error
    finally:
        temporary.unlink(missing_ok=True)


def length_bucketed_batches(lengths: np.ndarray, batch_size: int, seed: int) -> list[list[int]]:
    """Shuffle, sort by length inside mega-batches, cut into batches, shuffle the batch order."""
    rng = random.Random(seed)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches: list[list[int]] = []
    mega = batch_size * _MEGA_BATCH
    for start in range(0, len(order), mega):
        chunk = sorted(order[start : start + mega], key=lambda i: lengths[i])
        batches.extend(chunk[i : i + batch_size] for i in range(0, len(chunk), batch_size))
    rng.shuffle(batches)
    return batches


def sequential_batches(lengths: np.ndarray, batch_size: int) -> list[list[int]]:
    """Evaluation order: sorted by length for speed; callers restore order by index."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def collate(split: TokenizedSplit, indices: Sequence[int], pad_id: int) -> dict[str, torch.Tensor]:
    """Pad a batch to its longest sequence."""
    lengths = [int(split.offsets[i + 1] - split.offsets[i]) for i in indices]
    width = max(lengths)
    input_ids = torch.full((len(indices), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(indices), width), dtype=torch.long)
    types = torch.zeros((len(indices), width), dtype=torch.long) if split.types is not None else None
    for row, (i, length) in enumerate(zip(indices, lengths)):
        start = int(split.offsets[i])
        input_ids[row, :length] = torch.from_numpy(split.ids[start : start + length].astype(np.int64))
        attention[row, :length] = 1
        if types is not None:
            types[row, :length] = torch.from_numpy(split.types[start : start + length].astype(np.int64))
    batch = {"input_ids": input_ids, "attention_mask": attention, "labels": torch.from_numpy(split.labels[list(indices)])}
    if types is not None:
        batch["token_type_ids"] = types
    return batch
