"""Helpers of the web UI tests: the real `transferkit ui` process on a free localhost port, plain HTTP requests
to it, and screenshots. All traffic goes to 127.0.0.1; servers are stopped by their process id."""

from __future__ import annotations

import base64
import http.client
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cli_helpers import EXECUTABLE

REPO = Path(__file__).resolve().parents[2]
SHARED_DATA = Path(os.environ.get("TRANSFERKIT_TEST_DATA", REPO.parent / "shared" / "data"))
CHROMIUM, CHROMEDRIVER = Path("/usr/bin/chromium"), Path("/usr/bin/chromedriver")
SCREENSHOTS = Path(__file__).resolve().parent / "screenshots"
WIDTH = 1200
TOKEN = "a-long-enough-test-token-0123"  # the token of the `locked_ui` server


@dataclass
class UiServer:
    backend: str
    registry: str  # the registry URL
    artifacts: str
    base: str  # http://127.0.0.1:<port>
    ids: dict[str, str]
    env: dict[str, str]
    process: subprocess.Popen


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def http_get(base: str, path: str, headers: dict | None = None, method: str = "GET", body: bytes | None = None):
    """(status, headers as a dict of lower-case names, body text) of one request to the server."""
    host, port = base.removeprefix("http://").split(":")
    connection = http.client.HTTPConnection(host, int(port), timeout=120)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read().decode("utf-8", "replace")
    finally:
        connection.close()


def ui_env(home: Path) -> dict[str, str]:
    """The environment of every process of these tests: offline, one thread, user folders of its own (no price table)."""
    return {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "OMP_NUM_THREADS": "1",
            "XDG_DATA_HOME": str(home / "data"), "XDG_CONFIG_HOME": str(home / "config"), "XDG_CACHE_HOME": str(home / "cache"),
            "TRANSFERKIT_CACHE_DIR": str(home / "token-cache")}


def start_ui(registry: str, artifacts: str, env: dict[str, str], log: Path, *extra: str) -> tuple[subprocess.Popen, str]:
    """`transferkit ui` as a real process; returns it and its base URL once it answers."""
    port = free_port()
    with log.open("w") as handle:
        process = subprocess.Popen([EXECUTABLE, "--registry", registry, "--artifacts", artifacts, "ui", "--port", str(port), *extra],
                                   env=env, stdout=handle, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while True:
        try:
            http_get(base, "/static/ui.css")
            return process, base
        except OSError:
            pass
        if process.poll() is not None or time.monotonic() > deadline:
            stop(process)
            pytest.fail(f"transferkit ui did not come up: {log.read_text()}")
        time.sleep(0.3)


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGINT)  # uvicorn's graceful shutdown
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def screenshot(driver, backend: str, name: str) -> Path:
    """The whole page (beyond the window, through the DevTools protocol) as tests/ui/screenshots/<backend>/<name>.png."""
    folder = SCREENSHOTS / backend
    folder.mkdir(parents=True, exist_ok=True)
    size = driver.execute_cdp_cmd("Page.getLayoutMetrics", {})["cssContentSize"]
    clip = {"x": 0, "y": 0, "width": WIDTH, "height": min(int(size["height"]), 4000), "scale": 1}
    shot = driver.execute_cdp_cmd("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True, "clip": clip})
    path = folder / f"{name}.png"
    path.write_bytes(base64.b64decode(shot["data"]))
    return path
