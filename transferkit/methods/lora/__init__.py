from __future__ import annotations

from transferkit.methods.base import MethodType
from transferkit.methods.lora.config import LoraConfig
from transferkit.methods.lora.model import LoraExpert
from transferkit.methods.lora.peft import PEFT
from transferkit.methods.lora.stack import LoraStack
from transferkit.methods.registration import register_method

METHOD = register_method(MethodType(
    "lora", LoraConfig, LoraExpert, "LoRA: low-rank updates to the attention projections",
    stack=LoraStack, peft=PEFT,
))

__all__ = ["LoraConfig", "LoraExpert", "METHOD"]
