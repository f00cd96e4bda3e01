"""`transferkit ui` on a 100k-expert registry: experts-page latency, and 50 concurrent clients.

Usage: python bench/ui_latency.py [--experts 100000] [--backend sqlite|postgresql] [--requests 40]
       [--clients 50] [--per-client 8] [--folder DIR]

The registry is built with `bench/registry_scale.py`'s bulk `fill` (one run per expert, synthetic tasks,
no artifacts: the experts page never reads them) and kept in --folder, so a second run reuses it (SQLite).
The real `transferkit ui` process serves it on a free localhost port; this process is the client.

Measured (p50 and p95 over --requests sequential requests on one keep-alive connection, after 3 warm-up
requests each): the first page (50 rows, newest first), filtered pages (a text search that matches one
expert, a method filter), sorted pages (by trainable parameters, by dev metric, by own cost) and a deep page
(page 1000). Then --clients threads, each with its own connection, send --per-client requests drawn from the
same pages at once: every answer must be 200. Target: the experts page under 300 ms at p50; the exit code is 1
when a target is missed.
"""

from __future__ import annotations

import argparse
import http.client
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

from postgres_server import TemporaryPostgres, installed_bindir  # noqa: E402
from registry_scale import fill  # noqa: E402

from transferkit.registry import open_registry  # noqa: E402

PAGES = {
    "first page": "/experts",
    "text search": "/experts?q=expert-012345",
    "method filter": "/experts?method=lora",
    "sort params": "/experts?sort=-params",
    "sort dev": "/experts?sort=dev",
    "sort cost": "/experts?sort=-cost",
    "page 1000": "/experts?page=1000",
}
TARGET_MS = 300.0


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def get(connection: http.client.HTTPConnection, path: str) -> tuple[int, float]:
    start = time.perf_counter()
    connection.request("GET", path)
    response = connection.getresponse()
    response.read()
    return response.status, 1000 * (time.perf_counter() - start)


def registry_url(args: argparse.Namespace, folder: Path, servers: list[TemporaryPostgres]) -> str:
    """The registry to serve, filled with --experts experts (reused when a SQLite file of that size is there)."""
    if args.backend == "sqlite":
        path = folder / f"ui-{args.experts}.db"
        url = f"sqlite:///{path}"
        if path.exists():
            return url
    else:
        server = TemporaryPostgres(installed_bindir()).start()
        servers.append(server)
        url = server.create_database("ui")
    store = open_registry(url, folder / "blobs")
    seconds = fill(store, args.experts, 1, np.random.default_rng(0))
    store.close()
    print(f"filled {args.experts:,} experts in {seconds:.0f} s", file=sys.stderr)
    return url


def start_server(url: str, folder: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    log = (folder / "ui-server.log").open("w")
    process = subprocess.Popen([str(Path(sys.executable).parent / "transferkit"), "--registry", url, "--artifacts", str(folder / "blobs"),
                                "ui", "--port", str(port)], env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            get(connection, "/static/ui.css")
            connection.close()
            return process, port
        except OSError:
            if process.poll() is not None:
                break
            time.sleep(0.3)
    process.kill()
    raise SystemExit(f"the server did not start: {(folder / 'ui-server.log').read_text()}")


def latency(port: int, requests: int) -> dict[str, tuple[float, float]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    results = {}
    for name, path in PAGES.items():
        for _ in range(3):
            get(connection, path)
        times = []
        for _ in range(requests):
            status, ms = get(connection, path)
            assert status == 200, (path, status)
            times.append(ms)
        results[name] = (statistics.median(times), float(np.percentile(times, 95)))
    connection.close()
    return results


def concurrent(port: int, clients: int, per_client: int) -> tuple[int, int, list[float], float]:
    paths = list(PAGES.values())

    def client(number: int) -> list[tuple[int, float]]:
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        answers = []
        for request in range(per_client):
            try:
                answers.append(get(connection, paths[(number + request) % len(paths)]))
            except (OSError, http.client.HTTPException):
                answers.append((0, 0.0))
                connection.close()
                connection = http.client.HTTPConnection("127.0.0.1", port, timeout=300)
        connection.close()
        return answers

    start = time.perf_counter()
    with ThreadPoolExecutor(clients) as pool:
        answers = [a for batch in pool.map(client, range(clients)) for a in batch]
    wall = time.perf_counter() - start
    errors = sum(1 for status, _ in answers if status != 200)
    return len(answers), errors, [ms for _, ms in answers], wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts", type=int, default=100_000)
    parser.add_argument("--backend", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--requests", type=int, default=40)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--per-client", type=int, default=8)
    parser.add_argument("--folder", type=Path, default=Path(tempfile.gettempdir()) / "transferkit-ui-bench")
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    servers: list[TemporaryPostgres] = []
    try:
        url = registry_url(args, args.folder, servers)
        process, port = start_server(url, args.folder)
        try:
            timings = latency(port, args.requests)
            total, errors, times, wall = concurrent(port, args.clients, args.per_client)
        finally:
            process.send_signal(signal.SIGINT)
            process.wait(timeout=60)
    finally:
        for server in servers:
            server.stop()
    print(f"transferkit ui, {args.experts:,} experts on {args.backend}; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"{'experts page':16} {'p50 ms':>8} {'p95 ms':>8}   ({args.requests} sequential requests each, one keep-alive connection)")
    for name, (p50, p95) in timings.items():
        print(f"{name:16} {p50:8.1f} {p95:8.1f}")
    print(f"{args.clients} concurrent clients x {args.per_client} requests: {total} answered, {errors} errors, "
          f"p50 {statistics.median(times):.0f} ms, p95 {np.percentile(times, 95):.0f} ms, {total / wall:.1f} requests/s")
    first = timings["first page"][0]
    print(f"target: experts page p50 < {TARGET_MS:.0f} ms: {'met' if first < TARGET_MS else 'MISSED'} ({first:.1f} ms); "
          f"{args.clients} clients without errors: {'met' if errors == 0 else 'MISSED'}")
    if first >= TARGET_MS or errors:
        sys.exit(1)


if __name__ == "__main__":
    main()
