"""`transferkit ui`: browse a registry in a web browser (read-only; the app is `transferkit.ui.app`, served by uvicorn)."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from transferkit.cli.common import ArtifactsOption, RegistryOption, err, global_options
from transferkit.ui.security import TOKEN_ENV  # light: no web stack until the command runs


def register(app: typer.Typer) -> None:
    """Add `ui` to the CLI."""
    app.command("ui")(ui_command)


def ui_command(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to bind: this machine only by default; any other address needs a token.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8080,
    token: Annotated[
        Optional[str],
        typer.Option(envvar=TOKEN_ENV, show_default=False,
                     help=f"Token every page asks for (Bearer header or the sign-in form); required off this machine. Env: {TOKEN_ENV}."),
    ] = None,
    registry_url: RegistryOption = None,
    artifacts: ArtifactsOption = None,
) -> None:
    """Browse the registry in a web browser: experts, lineage, tasks, compare grids, cost and runs (read-only)."""
    from transferkit.ui.security import check_bind
    from transferkit.webserver import bind, serve

    check_bind(host, token)
    options = global_options(ctx, registry_url, None, artifacts)
    sock = bind(host, port)  # before anything slow: a taken port is one line at once
    try:
        from transferkit.api import Registry
        from transferkit.ui.app import create_app

        with Registry(options.registry_url, artifacts=options.artifacts, read_only=True) as browsed:
            app = create_app(browsed, token)
            shown = f"[{host}]" if ":" in host else host
            err.print(f"transferkit ui: http://{shown}:{port}/ ({app.state.registry_label}, read-only"
                      f"{', token required' if token else ''}); Ctrl-C stops", markup=False, highlight=False, soft_wrap=True)
            serve(app, sock)
    finally:
        sock.close()
