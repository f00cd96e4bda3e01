from __future__ import annotations

from transferkit.methods.adapter.config import AdapterConfig
from transferkit.methods.adapter.model import AdapterExpert
from transferkit.methods.adapter.stack import AdapterStack
from transferkit.methods.base import MethodType
from transferkit.methods.registration import register_method

METHOD = register_method(MethodType(
    "adapter", AdapterConfig, AdapterExpert, "bottleneck adapter after every feed-forward block",
    stack=AdapterStack, not_in_peft="a bottleneck adapter after every feed-forward block, which PEFT does not implement",
))

__all__ = ["AdapterConfig", "AdapterExpert", "METHOD"]
