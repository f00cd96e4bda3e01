"""Where transferkit keeps derived data that can always be rebuilt (token and search caches)."""

from __future__ import annotations

import os
from pathlib import Path

import platformdirs

CACHE_ENV = "TRANSFERKIT_CACHE_DIR"


def cache_root() -> Path:
    """`$TRANSFERKIT_CACHE_DIR`, else the user cache dir (e.g. ~/.cache/transferkit)."""
    return Path(os.environ.get(CACHE_ENV) or platformdirs.user_cache_dir("transferkit"))
