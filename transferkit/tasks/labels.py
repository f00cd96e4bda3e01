"""Reading one label value, as the official files and users' own files write it.

Classification labels may be label names (matched case-insensitively, names
first) or integer indices (JSON integers and booleans, or digit strings), as
the official files mix both ("entailment", "0", JSON booleans); regression
scores are finite floats rounded to 6 decimals (the Hub stores STS-B as float32).
Anything else is a `DataError` naming where the value came from.
"""

from __future__ import annotations

import math
import numbers
import re
from typing import Any

from transferkit.errors import DataError
from transferkit.tasks.catalog import TaskSpec


def shown(value: Any, limit: int = 60) -> str:
    """repr of a value from a data file, shortened: error messages stay one readable line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


ASCII_INDEX = re.compile(r"[0-9]+")  # ASCII digits only: str.isdigit() also accepts superscripts and other scripts


def parse_label(task: TaskSpec, value: Any, where: str) -> int | float:
    """The label index (classification) or score (regression) of one raw value; `where` names its row."""
    if task.label_names is None:
        try:
            number = float(value.strip() if isinstance(value, str) else value)
        except (TypeError, ValueError, OverflowError):
            raise DataError(f"{where}: {task.name} score {shown(value)} is not a number") from None
        if isinstance(value, bool) or not math.isfinite(number):
            raise DataError(f"{where}: {task.name} score {shown(value)} is not a finite number")
        return round(number, 6)
    index: int | None = None
    if isinstance(value, bool):  # JSON true/false: only meaningful for a two-class task
        index = int(value) if task.num_labels == 2 else None
    elif isinstance(value, numbers.Integral):
        index = int(value)
    elif isinstance(value, str):
        text = value.strip()
        by_name = {name.lower(): i for i, name in enumerate(task.label_names)}
        index = by_name.get(text.lower(), int(text) if ASCII_INDEX.fullmatch(text) else None)
    if index is None or not 0 <= index < task.num_labels:
        raise DataError(
            f"{where}: unknown {task.name} label {shown(value)} (expected one of {', '.join(task.label_names)} "
            f"or an index 0-{task.num_labels - 1})"
        )
    return index
