"""Registry of expert methods. Adding a method = one folder + one line in `METHODS`."""

from __future__ import annotations

import difflib

from transferkit.errors import NotFoundError
from transferkit.methods.adapter import AdapterConfig, AdapterExpert
from transferkit.methods.adapter.stack import AdapterStack
from transferkit.methods.base import ExpertModule, ExpertStack, MethodConfig, MethodType
from transferkit.methods.ept import EptConfig, EptExpert
from transferkit.methods.lora import LoraConfig, LoraExpert
from transferkit.methods.lora.stack import LoraStack
from transferkit.methods.mept import MeptConfig, MeptExpert
from transferkit.methods.prefix import PrefixConfig, PrefixExpert
from transferkit.methods.prompt import PromptConfig, PromptExpert

METHODS: dict[str, MethodType] = {
    m.name: m
    for m in (
        MethodType("prompt", PromptConfig, PromptExpert, "soft prompt tuning: trainable virtual tokens before the input"),
        MethodType("lora", LoraConfig, LoraExpert, "LoRA: low-rank updates to the attention projections", LoraStack),
        MethodType("adapter", AdapterConfig, AdapterExpert, "bottleneck adapter after every feed-forward block", AdapterStack),
        MethodType("prefix", PrefixConfig, PrefixExpert, "prefix tuning: trainable keys/values in every attention layer (ReparamPrefix sharing)"),
        MethodType("ept", EptConfig, EptExpert, "EPT: short prompt + low-rank embedding update, prompt fusion, gated multi-space projection"),
        MethodType("mept", MeptConfig, MeptExpert, "MEPT: per-layer prompt experts picked top-k by a router, plus a shared prompt"),
    )
}

DEFAULT_METHOD = "lora"


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


__all__ = ["METHODS", "DEFAULT_METHOD", "ExpertModule", "ExpertStack", "MethodConfig", "MethodType", "get_method", "method_of_module"]
