from transferkit.methods.ept.config import EptConfig
from transferkit.methods.ept.model import EptExpert

__all__ = ["EptConfig", "EptExpert"]
