"""The expert methods. A method is one folder that registers itself (`transferkit.methods.registration`);
the built-in folders are imported here, in the order `transferkit methods` lists them."""

from __future__ import annotations

# Each folder registers its method on import; this order is the order `transferkit methods` lists them.
from transferkit.methods import prompt, lora, adapter, prefix, ept, mept  # noqa: F401, I001
from transferkit.methods.base import ExpertModule, ExpertStack, MethodConfig, MethodType
from transferkit.methods.registration import DEFAULT_METHOD, METHODS, get_method, method_of_module, register_method

__all__ = ["METHODS", "DEFAULT_METHOD", "ExpertModule", "ExpertStack", "MethodConfig", "MethodType", "get_method",
           "method_of_module", "register_method"]
