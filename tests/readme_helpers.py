"""The README's Python example, as printed there."""

from __future__ import annotations

import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def readme_python_example() -> str:
    """The code block marked with <!-- readme-python-example --> in the README."""
    match = re.search(r"<!-- readme-python-example -->\n```python\n(.*?)```", README.read_text(), flags=re.S)
    assert match, "the README marks its Python example with <!-- readme-python-example -->"
    return match.group(1)
