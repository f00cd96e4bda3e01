"""`transferkit serve`: an HTTP endpoint for predictions (FastAPI app from `transferkit.serve`, run by uvicorn)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from transferkit.cli.common import ArtifactsOption, RegistryOption, err, global_options, registry_from
from transferkit.errors import InvalidInputError


def register(app: typer.Typer) -> None:
    """Add `serve` to the CLI."""
    app.command("serve")(serve_command)


def serve_command(
    ctx: typer.Context,
    experts: Annotated[list[str], typer.Argument(help="Experts to serve: ids, id prefixes, names or aliases.")],
    host: Annotated[str, typer.Option(help="Address to bind (default: this machine only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8000,
    max_body_bytes: Annotated[int, typer.Option(help="Largest request body accepted (413 above it).")] = 1 << 20,
    max_inputs: Annotated[int, typer.Option(help="Most inputs in one request (413 above it).")] = 256,
    max_batch: Annotated[int, typer.Option(help="Most inputs run together when concurrent requests are batched.")] = 64,
    max_wait_ms: Annotated[float, typer.Option(help="How long a batch waits for more concurrent requests.")] = 10.0,
    precision: Annotated[str, typer.Option(help="fp32, or bf16: the frozen backbone's weights held in bf16.")] = "fp32",
    model: Annotated[Optional[str], typer.Option("--model", help="Backbone (default: the one each expert was trained on).")] = None,
    registry_url: RegistryOption = None,
    artifacts: ArtifactsOption = None,
) -> None:
    """Serve predictions over HTTP: POST /predict {"expert": NAME, "inputs": [...]}, GET /health (OpenAPI docs at /docs)."""
    from transferkit.serve import ServeLimits

    from transferkit.webserver import bind, is_loopback, serve

    limits = ServeLimits(max_body_bytes, max_inputs, max_batch, max_wait_ms)
    limits.validate()
    if not 1 <= port <= 65535:
        raise InvalidInputError(f"--port must be between 1 and 65535, got {port}")
    is_loopback(host)  # an IP address or localhost: binding never looks a name up
    registry = registry_from(global_options(ctx, registry_url, None, artifacts))
    records = {name: registry.get_expert(name) for name in experts}  # every name resolves before anything loads
    sock = bind(host, port)  # a taken port is one line now, before the experts load

    from transferkit.inference import load_predictor
    from transferkit.serve import create_app

    loaded = {}
    for record in records.values():
        if record.id not in loaded:
            loaded[record.id] = load_predictor(registry, record, model=model, precision=precision)  # verifies every sha256
            err.print(f"loaded {record.name} ({record.id}, {record.task_name}): artifact sha256 {record.artifact_sha256} verified",
                      markup=False, highlight=False, soft_wrap=True)
    app = create_app(list(loaded.values()), limits, names={name: loaded[record.id] for name, record in records.items()})
    err.print(f"serving {len(loaded)} expert(s) on http://{host}:{port} (POST /predict, GET /health, docs at /docs); Ctrl-C stops",
              markup=False, highlight=False, soft_wrap=True)
    serve(app, sock)
