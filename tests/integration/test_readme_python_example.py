"""The README's Python example runs as written: real MiniLM, real SST-2, its own 20-step budget, a temporary registry."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.real

README = Path(__file__).resolve().parents[2] / "README.md"


def readme_example() -> str:
    match = re.search(r"<!-- readme-python-example -->\n```python\n(.*?)```", README.read_text(), flags=re.S)
    assert match, "the README marks its Python example with <!-- readme-python-example -->"
    return match.group(1)


def test_the_example_is_ten_lines():
    assert len(readme_example().splitlines()) == 10


def test_the_readme_python_example_runs_as_written(tmp_path, shared_data):
    # The example reads "../shared/data", as the README's commands do from a clone beside shared/.
    (tmp_path / "shared").symlink_to(shared_data.parent, target_is_directory=True)
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "example.py").write_text(readme_example())
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFERKIT_REGISTRY": f"sqlite:///{tmp_path}/registry.db"}
    result = subprocess.run([sys.executable, "example.py"], cwd=tmp_path / "work", env=env, capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert all(line.split()[0] in ("negative", "positive") for line in lines[:2])
    assert lines[2].startswith("accuracy ") and "'low'" in lines[2]
    assert lines[3].startswith("Expert('sst2-lora'")
