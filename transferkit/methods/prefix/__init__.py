from transferkit.methods.prefix.config import PrefixConfig
from transferkit.methods.prefix.model import PrefixExpert

__all__ = ["PrefixConfig", "PrefixExpert"]
