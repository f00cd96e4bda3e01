"""Package discovery: every package under the source folders, in the one `transferkit` import namespace.

pyproject.toml holds the metadata and the folder -> namespace mapping (`package-dir`); this finds the packages
under each mapped folder, so a new method folder (or any new subpackage) ships without being listed anywhere.
"""

from setuptools import find_namespace_packages, find_packages, setup

# Source folder -> its import name (the same mapping as pyproject.toml's package-dir).
ROOTS = {"transferkit": "transferkit", "registry": "transferkit.registry", "cli": "transferkit.cli"}
# Alembic's folders are plain directories without __init__.py, installed as namespace packages.
NAMESPACE_ROOTS = {"alembic": "transferkit.migrations"}


def discover() -> list[str]:
    packages = []
    for roots, finder in ((ROOTS, find_packages), (NAMESPACE_ROOTS, find_namespace_packages)):
        for folder, name in roots.items():
            packages += [name, *(f"{name}.{found}" for found in finder(folder, exclude=["*__pycache__*"]))]
    return sorted(packages)


setup(packages=discover())
