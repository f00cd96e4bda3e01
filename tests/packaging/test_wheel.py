"""The built wheel: one `transferkit` namespace, migrations inside, and a registry that migrates from it."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    result = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(REPO), "--no-deps", "--quiet", "-w", str(out)],
        capture_output=True, text=True, cwd=out, timeout=600,
    )
    assert result.returncode == 0, result.stderr
    [built] = out.glob("transferkit-*.whl")
    return built


def test_wheel_maps_folders_into_one_namespace(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    top_level = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top_level == {"transferkit"}
    for required in (
        "transferkit/registry/sql_store.py",
        "transferkit/cli/app.py",
        "transferkit/migrations/env.py",
        "transferkit/migrations/script.py.mako",
        "transferkit/migrations/versions/0001_initial.py",
        "transferkit/methods/lora/model.py",
    ):
        assert required in names
    # Everything a `transferkit ui` page loads ships inside the package (no CDN): templates, script, style, fonts.
    ui = Path(REPO / "transferkit" / "ui")
    shipped = [p.relative_to(REPO).as_posix() for p in (ui / "templates").iterdir()] + [
        p.relative_to(REPO).as_posix() for p in (ui / "static").rglob("*") if p.is_file()]
    assert len(shipped) >= 15 and not [f for f in shipped if f not in names]
    entry_points = next(n for n in names if n.endswith("entry_points.txt"))
    assert "transferkit = transferkit.cli.app:main" in zipfile.ZipFile(wheel).read(entry_points).decode()


# Source folder -> where its files land in the wheel (pyproject.toml's package-dir).
INSTALLED_AS = {"transferkit": "transferkit", "registry": "transferkit/registry", "cli": "transferkit/cli",
                "alembic": "transferkit/migrations"}


def test_wheel_holds_every_module_of_the_source_tree(wheel):
    """Packages are discovered, not listed: a new folder (a method, a subpackage) ships without any edit elsewhere."""
    names = set(zipfile.ZipFile(wheel).namelist())
    expected = {
        f"{installed}/{path.relative_to(REPO / folder).as_posix()}"
        for folder, installed in INSTALLED_AS.items()
        for path in (REPO / folder).rglob("*.py")
        if "__pycache__" not in path.parts
    }
    assert len(expected) > 100
    assert sorted(expected - names) == []


def test_registry_migrates_from_the_unpacked_wheel(wheel, tmp_path):
    site = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(site)
    code = (
        "import transferkit.registry as r, sys; s = r.open_registry(sys.argv[1]); "
        "assert 'site' in r.__file__, r.__file__; print(s.count_experts())"
    )
    env = {**os.environ, "PYTHONPATH": str(site)}
    # Run outside the repo so that the source tree cannot be imported instead of the wheel.
    result = subprocess.run(
        [sys.executable, "-S", "-c", f"import site; site.main(); import sys; sys.path.insert(0, {str(site)!r}); {code}",
         f"sqlite:///{tmp_path}/w.db"],
        capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "0"
