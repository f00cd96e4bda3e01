"""The registered methods, in one place. A method folder registers itself: its `__init__` calls `register_method`
with a `MethodType` (config, module, stack where it can be mixed, PEFT mapping where PEFT has one)."""

from __future__ import annotations

import difflib

from transferkit.errors import NotFoundError
from transferkit.methods.base import ExpertModule, MethodType

METHODS: dict[str, MethodType] = {}
DEFAULT_METHOD = "lora"


def register_method(method: MethodType) -> MethodType:
    """Make `method` available by name (`--method`, stored experts, `transferkit methods`); returns it."""
    METHODS[method.name] = method
    return method


def get_method(name: str) -> MethodType:
    if name not in METHODS:
        close = difflib.get_close_matches(name, list(METHODS), n=3)
        hint = f" (did you mean {', '.join(close)}?)" if close else ""
        raise NotFoundError(f"unknown method {name!r}{hint}; available: {', '.join(METHODS)} (see `transferkit methods`)")
    return METHODS[name]


def method_of_module(module: ExpertModule) -> MethodType:
    """The registered method whose module class `module` is."""
    for method in METHODS.values():
        if type(module) is method.module_class:
            return method
    raise NotFoundError(f"{type(module).__name__} is not the module of a registered method")
