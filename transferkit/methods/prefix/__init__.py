from __future__ import annotations

from transferkit.methods.base import MethodType
from transferkit.methods.prefix.config import PrefixConfig
from transferkit.methods.prefix.model import PrefixExpert
from transferkit.methods.prefix.peft import PEFT
from transferkit.methods.registration import register_method

METHOD = register_method(MethodType(
    "prefix", PrefixConfig, PrefixExpert, "prefix tuning: trainable keys/values in every attention layer (ReparamPrefix sharing)",
    peft=PEFT,
))

__all__ = ["PrefixConfig", "PrefixExpert", "METHOD"]
