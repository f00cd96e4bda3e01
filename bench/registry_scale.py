"""Registry scale: search and list latency with 1k, 10k and 100k synthetic experts, on SQLite and PostgreSQL.

Usage: python bench/registry_scale.py [--sizes 1000,10000,100000] [--backends sqlite,postgresql,pgvector]
       [--experts-per-task 1] [--queries 50]

Rows are written in bulk with SQLAlchemy (the same shapes the store writes; artifacts are not
written: search and list never read them). By default every expert has its own task, so a
search ranks as many vectors as there are experts (the worst case; catalog tasks are ~20).
Embeddings are random 384-d unit vectors (the packaged MiniLM's size).

Measured, per backend and size (p50 over --queries random queries, in one process, warm):
- search: `nearest_tasks` (numpy brute force over the cached matrix; pgvector: exact scan in PostgreSQL),
  wall time and this process's CPU time (the machine may be shared: CPU time is not inflated by waiting);
- search + experts: what `transferkit search` does after embedding the text (5 nearest tasks, their
  counts and 3 best experts each);
- first search: building the index from the database (numpy: reading every vector, writing the cache);
- new process: the first search of a fresh index object whose cache file is on disk (a new CLI process);
- list 50: `list_experts(limit=50)` + `count_experts()`, what `transferkit list` queries;
- `transferkit list` process: wall time of the whole command, median of 5, next to the baseline
  measured in the same run, `python -c pass` (interpreter start-up alone).
PostgreSQL runs on a throwaway local server (tests/postgres_server.py); pgvector on the server of
the pgserver wheel (PostgreSQL 16 + pgvector) unless the installed one has the extension.
Targets: search over 100k experts p50 < 50 ms; list --limit 50 < 100 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
from sqlalchemy import insert, update

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))

from postgres_server import TemporaryPostgres, installed_bindir, pgserver_bindir  # noqa: E402

from transferkit.cli.search import nearest_tasks_with_experts  # noqa: E402
from transferkit.registry import open_registry  # noqa: E402
from transferkit.registry.rows import CounterRow, ExpertRow, RunRow, TaskRow  # noqa: E402
from transferkit.registry.search import NumpyTaskIndex, PgvectorTaskIndex  # noqa: E402

DIM = 384
EMBEDDER = "bench-embedder"
CHUNK = 5000


def fill(store, experts: int, per_task: int, rng: np.random.Generator) -> float:
    """Bulk-insert `experts` experts (one run each) over experts / per_task tasks; returns seconds."""
    tasks = max(1, experts // per_task)
    start = time.perf_counter()
    epoch = datetime(2026, 1, 1, tzinfo=timezone.utc)
    with store.engine.begin() as connection:
        for first in range(0, tasks, CHUNK):
            vectors = rng.standard_normal((min(CHUNK, tasks - first), DIM)).astype(np.float32)
            vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
            connection.execute(insert(TaskRow), [
                {"name": f"synthetic/task{first + i:06d}", "description": f"synthetic task {first + i}", "spec": {},
                 "embedding": vector, "embedder_id": EMBEDDER, "revision": first + i + 1}
                for i, vector in enumerate(vectors)
            ])
        connection.execute(update(CounterRow).where(CounterRow.name == "tasks").values(value=tasks))
        for first in range(0, experts, CHUNK):
            ids = range(first, min(first + CHUNK, experts))
            connection.execute(insert(RunRow), [
                {"id": f"r{i:011d}", "kind": "train-source", "status": "finished", "command": [], "hyperparams": {},
                 "seed": 1, "code_version": {}, "package_versions": {}, "data_fingerprint": {},
                 "started_at": epoch, "ended_at": epoch, "wall_seconds": 1.0, "cost_extra": {}}
                for i in ids
            ])
            scores = rng.random(len(ids))
            connection.execute(insert(ExpertRow), [
                {"id": f"{i:012x}", "name": f"expert-{i:06d}", "task_name": f"synthetic/task{i % tasks:06d}",
                 "method": ("lora", "adapter", "prompt")[i % 3], "config": {"r": 8}, "backbone": {"name": "bench"},
                 "backbone_id": "bench-backbone", "artifact_uri": f"sha256/00/{i:064x}.safetensors",
                 "artifact_sha256": f"{i:064x}", "artifact_bytes": 1000, "trainable_params": 1000,
                 "metrics": {"primary": "accuracy", "dev": {"accuracy": float(score)}, "test": {"accuracy": 0.5}},
                 "dev_score": float(score), "run_id": f"r{i:011d}", "created_at": epoch + timedelta(seconds=i),
                 "extra": {"steps": 10}}
                for i, score in zip(ids, scores)
            ])
    return time.perf_counter() - start


def p50_ms(action, repeats: int) -> tuple[float, float]:
    """Median wall and CPU milliseconds of this process (CPU time is what contention with other work cannot inflate)."""
    walls, cpus = [], []
    for _ in range(repeats):
        start, cpu = time.perf_counter(), time.process_time()
        action()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return 1000 * statistics.median(walls), 1000 * statistics.median(cpus)


def process_ms(command: list[str], repeats: int = 5) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        subprocess.run(command, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return 1000 * statistics.median(times)


def measure(backend: str, url: str, experts: int, args, rng: np.random.Generator, folder: Path) -> dict:
    store = open_registry(url, folder / "blobs")
    inserted = fill(store, experts, args.experts_per_task, rng)
    cache = folder / f"cache-{backend}-{experts}"
    store.search_index = PgvectorTaskIndex.create(store.engine) if backend == "pgvector" else NumpyTaskIndex(store.engine, cache)
    queries = [rng.standard_normal(DIM).astype(np.float32) for _ in range(args.queries)]
    start = time.perf_counter()
    store.nearest_tasks(queries[0], EMBEDDER, limit=5)
    first = time.perf_counter() - start
    fresh = PgvectorTaskIndex.create(store.engine) if backend == "pgvector" else NumpyTaskIndex(store.engine, cache)
    start = time.perf_counter()
    fresh.nearest(queries[1], EMBEDDER, 5)
    new_process = 1000 * (time.perf_counter() - start)
    search = iter(queries * 2)
    row = {
        "backend": backend, "experts": experts, "tasks": max(1, experts // args.experts_per_task),
        "insert_s": inserted, "first_s": first, "new_process_ms": new_process,
    }
    row["search_ms"], row["search_cpu_ms"] = p50_ms(lambda: store.nearest_tasks(next(search), EMBEDDER, limit=5), args.queries)
    row["search_experts_ms"], _ = p50_ms(lambda: nearest_tasks_with_experts(store, next(search), EMBEDDER, 5, 3), args.queries)
    row["list_ms"], _ = p50_ms(lambda: (store.list_experts(limit=50), store.count_experts()), args.queries)
    transferkit = str(Path(sys.executable).parent / "transferkit")
    row["list_process_ms"] = process_ms([transferkit, "--registry", url, "list", "--limit", "50"])
    store.close()
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="1000,10000,100000")
    parser.add_argument("--backends", default="sqlite,postgresql,pgvector")
    parser.add_argument("--experts-per-task", type=int, default=1)
    parser.add_argument("--queries", type=int, default=50)
    args = parser.parse_args()
    sizes = [int(s) for s in args.sizes.split(",")]
    backends = args.backends.split(",")
    rng = np.random.default_rng(0)
    folder = Path(tempfile.mkdtemp(prefix="transferkit-bench-"))
    servers: dict[str, TemporaryPostgres] = {}
    if "postgresql" in backends or "pgvector" in backends:
        servers["postgresql"] = TemporaryPostgres(installed_bindir()).start()
    if "pgvector" in backends:
        has_vector = "vector" in servers["postgresql"].available_extensions()
        servers["pgvector"] = servers["postgresql"] if has_vector else TemporaryPostgres(pgserver_bindir()).start()
    floor = process_ms([sys.executable, "-c", "pass"])
    rows = []
    try:
        for backend in backends:
            for size in sizes:
                url = f"sqlite:///{folder}/{size}.db" if backend == "sqlite" else servers[backend].create_database(f"b{size}")
                rows.append(measure(backend, url, size, args, rng, folder))
                print(f"done {backend} {size}", file=sys.stderr, flush=True)
    finally:
        for server in {id(s): s for s in servers.values()}.values():
            server.stop()
    print(f"registry scale: {args.queries} queries per cell, {args.experts_per_task} expert(s) per task, {DIM}-d vectors; "
          f"baseline `python -c pass` = {floor:.0f} ms; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print("(cpu) = this process's CPU time per search: pgvector's work happens in the server and is not in it")
    print(f"{'backend':10} {'experts':>8} {'tasks':>7} {'insert s':>8} {'search p50':>10} {'(cpu)':>7} {'+experts':>9} {'1st search':>10} "
          f"{'new proc':>9} {'list 50':>8} {'list cmd':>9} {'cmd-floor':>9}")
    for r in rows:
        print(f"{r['backend']:10} {r['experts']:8,d} {r['tasks']:7,d} {r['insert_s']:8.1f} {r['search_ms']:8.1f}ms "
              f"{r['search_cpu_ms']:5.1f}ms "
              f"{r['search_experts_ms']:7.1f}ms {r['first_s']:9.2f}s {r['new_process_ms']:7.1f}ms {r['list_ms']:6.1f}ms "
              f"{r['list_process_ms']:7.0f}ms {r['list_process_ms'] - floor:7.0f}ms")
    largest = [r for r in rows if r["experts"] == max(sizes)]
    for r in largest:
        search_ok = "met" if r["search_ms"] < 50 else "MISSED"
        list_ok = "met" if r["list_ms"] < 100 else "MISSED"
        print(f"targets at {r['experts']:,} experts on {r['backend']}: search p50 < 50 ms {search_ok}, list 50 < 100 ms {list_ok}")


if __name__ == "__main__":
    main()
