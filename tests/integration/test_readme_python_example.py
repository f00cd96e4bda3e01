"""The README's Python example runs as written: real MiniLM, real SST-2, its own 20-step budget, a temporary registry.

The run itself is the session fixture `readme_example` (tests/conftest.py), whose expert test_use_real.py uses too.
"""

from __future__ import annotations

import pytest
from readme_helpers import readme_python_example

pytestmark = pytest.mark.real


def test_the_example_is_ten_lines():
    assert len(readme_python_example().splitlines()) == 10


def test_the_readme_python_example_runs_as_written(readme_example):
    _, result = readme_example
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(line.split()[0] in ("negative", "positive") for line in lines[:2])
    assert lines[2].startswith("accuracy ") and "'low'" in lines[2]
    assert lines[3].startswith("Expert('sst2-lora'")
