from __future__ import annotations

from transferkit.methods.base import MethodType
from transferkit.methods.prompt.config import PromptConfig
from transferkit.methods.prompt.model import PromptExpert
from transferkit.methods.prompt.peft import PEFT
from transferkit.methods.registration import register_method

METHOD = register_method(MethodType(
    "prompt", PromptConfig, PromptExpert, "soft prompt tuning: trainable virtual tokens before the input",
    peft=PEFT,
))

__all__ = ["PromptConfig", "PromptExpert", "METHOD"]
