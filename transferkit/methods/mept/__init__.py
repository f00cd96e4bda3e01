from transferkit.methods.mept.config import MeptConfig
from transferkit.methods.mept.model import MeptExpert

__all__ = ["MeptConfig", "MeptExpert"]
