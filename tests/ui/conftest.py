"""Web UI fixtures: a real registry (see `ui_registry.py`) on SQLite and PostgreSQL, the real `transferkit ui`
server process over it, and Debian's headless Chromium driven through its chromedriver.

Every test using `ui` runs once per backend (ids `sqlite`, `postgresql`). Screenshots go to
tests/ui/screenshots/<backend>/ (git-ignored) for review.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from ui_helpers import CHROMEDRIVER, CHROMIUM, TOKEN, WIDTH, UiServer, start_ui, stop, ui_env
from ui_registry import copy_registry, populate


@pytest.fixture(scope="session")
def ui_home(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("ui-home")


@pytest.fixture(scope="session")
def ui_sqlite(tmp_path_factory, shared_data, tiny_model_dir, ui_home) -> tuple[str, str, dict[str, str]]:
    """(registry URL, artifacts folder, expert ids) of the real registry, trained once per session."""
    folder = tmp_path_factory.mktemp("ui-sqlite")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ui_env(ui_home).items():
            patch.setenv(key, value)
        ids = populate(f"sqlite:///{folder}/registry.db", shared_data, tiny_model_dir, folder)
    return f"sqlite:///{folder}/registry.db", str(folder / "registry-artifacts"), ids


@pytest.fixture(scope="session")
def ui_postgres(tmp_path_factory, postgres_server, ui_sqlite, tiny_model_dir, ui_home) -> tuple[str, str, dict[str, str]]:
    """The same experts in a PostgreSQL registry (copied through bundles: same ids, records and artifacts)."""
    url, folder = postgres_server.create_database("ui"), tmp_path_factory.mktemp("ui-postgres")
    with pytest.MonkeyPatch.context() as patch:
        for key, value in ui_env(ui_home).items():
            patch.setenv(key, value)
        copy_registry(ui_sqlite[0], ui_sqlite[1], url, str(folder / "artifacts"), folder, tiny_model_dir)
    return url, str(folder / "artifacts"), ui_sqlite[2]


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def ui(request, ui_home, tmp_path_factory) -> Iterator[UiServer]:
    """`transferkit ui` over the real registry, per backend, for the whole session."""
    registry, artifacts, ids = request.getfixturevalue(f"ui_{'postgres' if request.param == 'postgresql' else 'sqlite'}")
    env = ui_env(ui_home)
    process, base = start_ui(registry, artifacts, env, tmp_path_factory.mktemp("ui-log") / "server.log")
    yield UiServer(request.param, registry, artifacts, base, ids, env, process)
    stop(process)


@pytest.fixture(scope="session")
def locked_ui(ui_sqlite, ui_home, tmp_path_factory) -> Iterator[UiServer]:
    """`transferkit ui --token TOKEN` over the SQLite registry, shared by the HTTP and browser tests of signing in and the
    start-up checks (none of them depends on the registry backend, so they run once)."""
    registry, artifacts, ids = ui_sqlite
    env = ui_env(ui_home)
    process, base = start_ui(registry, artifacts, env, tmp_path_factory.mktemp("ui-locked-log") / "server.log", "--token", TOKEN)
    yield UiServer("sqlite", registry, artifacts, base, ids, env, process)
    stop(process)


def chromium(javascript: bool = True) -> Iterator[object]:
    """Headless Chromium (Debian's, through its chromedriver) with a fresh profile and no outbound traffic."""
    if not (CHROMIUM.is_file() and CHROMEDRIVER.is_file()):
        message = "the browser tests need Debian's chromium and chromium-driver (apt-get install chromium chromium-driver)"
        if os.environ.get("TRANSFERKIT_REQUIRE_BROWSER") == "1":
            pytest.fail(message)
        pytest.skip(message)
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download a driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="transferkit-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={WIDTH},900"):
        options.add_argument(flag)
    if not javascript:
        options.add_experimental_option("prefs", {"profile.managed_default_content_settings.javascript": 2})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the console, for `console_problems`
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    driver.set_page_load_timeout(120)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def console_problems(driver) -> list[str]:
    """Errors and warnings the browser's console got since the last call (CSP violations, failed loads, script errors);
    a refused sign-in's own 401 is expected."""
    return [entry["message"] for entry in driver.get_log("browser")
            if entry["level"] in ("SEVERE", "WARNING") and "status of 401" not in entry["message"]]


@pytest.fixture(autouse=True)
def clean_console(request) -> Iterator[None]:
    """Every browser test ends with a console free of errors: nothing was blocked by the CSP or failed to load."""
    drivers = [request.getfixturevalue(name) for name in ("browser", "browser_without_js") if name in request.fixturenames]
    for driver in drivers:
        driver.get_log("browser")  # what earlier tests left
    yield
    for driver in drivers:
        assert console_problems(driver) == []


@pytest.fixture(scope="session")
def browser() -> Iterator[object]:
    yield from chromium()


@pytest.fixture(scope="session")
def browser_without_js() -> Iterator[object]:
    """The same browser with JavaScript switched off: pages must still work (links, forms, server-drawn SVG)."""
    yield from chromium(javascript=False)
