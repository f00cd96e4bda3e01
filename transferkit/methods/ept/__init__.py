from __future__ import annotations

from transferkit.methods.base import MethodType
from transferkit.methods.ept.config import EptConfig
from transferkit.methods.ept.model import EptExpert
from transferkit.methods.registration import register_method

METHOD = register_method(MethodType(
    "ept", EptConfig, EptExpert, "EPT: short prompt + low-rank embedding update, prompt fusion, gated multi-space projection",
    not_in_peft="EPT's low-rank embedding update and gated multi-space projection, which PEFT does not implement",
))

__all__ = ["EptConfig", "EptExpert", "METHOD"]
