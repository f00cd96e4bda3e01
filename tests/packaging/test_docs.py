"""The documentation site builds in strict mode: a broken link, a missing anchor, a page left out of the navigation
or an API reference to an object that no longer exists fails the build, and so this test (CI runs it)."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def _mkdocs_available() -> bool:
    return all(importlib.util.find_spec(name) is not None for name in ("mkdocs", "mkdocstrings", "material"))


@pytest.fixture(scope="module")
def built_site(tmp_path_factory) -> Path:
    if not _mkdocs_available():
        if os.environ.get("TRANSFERKIT_REQUIRE_DOCS") == "1":
            pytest.fail("TRANSFERKIT_REQUIRE_DOCS=1 but mkdocs, mkdocstrings or mkdocs-material is not installed (pip install -e '.[docs]')")
        pytest.skip("mkdocs is not installed (pip install -e '.[docs]'); set TRANSFERKIT_REQUIRE_DOCS=1 to fail instead")
    site = tmp_path_factory.mktemp("site")
    result = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--config-file", str(REPO / "mkdocs.yml"), "--site-dir", str(site)],
        capture_output=True, text=True, cwd=REPO, timeout=120, env={**os.environ, "NO_MKDOCS_2_WARNING": "1"},
    )
    assert result.returncode == 0, f"mkdocs build --strict failed:\n{result.stdout}\n{result.stderr}"
    return site


def test_the_site_builds_in_strict_mode(built_site):
    pages = {p.relative_to(built_site).as_posix() for p in built_site.rglob("index.html")}
    for page in ("concepts", "transfer", "methods", "custom-tasks", "registry", "guarantees", "cost", "interop",
                 "results", "performance", "architecture", "api"):
        assert f"{page}/index.html" in pages, sorted(pages)


def test_the_api_reference_is_generated_from_docstrings(built_site):
    html = (built_site / "api" / "index.html").read_text()
    # mkdocstrings renders each documented object with its full path as the heading's id.
    for name in ("transferkit.api.Registry", "transferkit.api.Expert", "transferkit.inference.ExpertModel",
                 "transferkit.methods.base.ExpertModule", "transferkit.composition.plugins.Strategy"):
        assert f'id="{name}"' in html, name
    assert 'id="transferkit.api.Registry.train_source"' in html


def test_the_ui_screenshots_are_linked_and_shipped(built_site):
    html = (built_site / "registry" / "index.html").read_text()
    images = re.findall(r'src="([^"]*images/ui/[^"]+\.png)"', html)
    assert len(images) == 6
    for src in images:
        assert (built_site / "registry" / src).resolve().is_file(), src


def test_the_readme_is_a_front_door():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    # Every link from the README into docs/ names a page that exists (the site build checks the links between pages).
    links = re.findall(r"\]\((docs/[^)#]+)(?:#[^)]*)?\)", readme)
    assert links and all((REPO / link).is_file() for link in links), [link for link in links if not (REPO / link).is_file()]
    for command in ("make demo", "make test", "make docs", "transferkit transfer --target superglue/cb"):
        assert command in readme, command
