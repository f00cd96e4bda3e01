from __future__ import annotations

from transferkit.methods.base import MethodType
from transferkit.methods.mept.config import MeptConfig
from transferkit.methods.mept.model import MeptExpert
from transferkit.methods.registration import register_method

METHOD = register_method(MethodType(
    "mept", MeptConfig, MeptExpert, "MEPT: per-layer prompt experts picked top-k by a router, plus a shared prompt",
    not_in_peft="MEPT's routed per-layer prompt experts, which PEFT does not implement",
))

__all__ = ["MeptConfig", "MeptExpert", "METHOD"]
