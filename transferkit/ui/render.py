"""Rendering pages: the Jinja environment (templates shipped in the package), its filters, and page responses.

Autoescaping is on for every template, and every value a template prints passes `redact_paths` first (Jinja's
`finalize`), so no page can show an absolute file path, whatever the registry recorded (a local `--model`, a
custom task's files, an error naming a database file).
"""

from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined
from markupsafe import Markup
from starlette.requests import Request
from starlette.responses import HTMLResponse

from transferkit.composition.grid_text import gates_text, score_text, versus_text
from transferkit.version import __version__
from transferkit.ui.security import redact_paths

TEMPLATES = Path(__file__).resolve().parent / "templates"


def _finalize(value: Any) -> Any:
    if isinstance(value, Markup):  # our own SVG: its text comes from the registry too
        return Markup(redact_paths(str(value)))
    if isinstance(value, str):
        return redact_paths(value)
    return value


def number(value: float | int | None, digits: int = 1) -> str:
    """Thousands separators and fixed decimals; '-' for a missing value."""
    if value is None:
        return "-"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return f"{value:,.{digits}f}"


def percent(value: float | None) -> str:
    """A metric in [0, 1] as ×100 with one decimal, as `compare` prints it."""
    return "-" if value is None else f"{100 * value:.1f}"


def when(value: datetime | str | None) -> str:
    if value is None:
        return "-"
    moment = datetime.fromisoformat(value) if isinstance(value, str) else value
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def exact(value: float | None) -> str:
    """A float as Python reads it back (`repr`), for data attributes the tests compare exactly."""
    return "" if value is None else repr(value)


environment = Environment(
    loader=FileSystemLoader(TEMPLATES), autoescape=True, finalize=_finalize, undefined=StrictUndefined,
    trim_blocks=True, lstrip_blocks=True,
)
environment.filters.update(number=number, percent=percent, when=when, exact=exact, score=score_text, versus=versus_text, gates=gates_text)
environment.globals.update(version=__version__)


def query_url(request: Request, **changes: Any) -> str:
    """This page's path and query with some parameters changed (None removes one; lists repeat it)."""
    params: dict[str, Any] = {}
    for key, value in request.query_params.multi_items():
        params.setdefault(key, []).append(value)
    for key, value in changes.items():
        params.pop(key, None)
        if value is not None:
            params[key] = value if isinstance(value, list) else [value]
    pairs = [(key, item) for key, values in params.items() for item in values if item != ""]
    return request.url.path + (f"?{urlencode(pairs)}" if pairs else "")


def page(request: Request | None, template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A rendered page; `registry_label` (which registry: from the app's state) and `nav` (the highlighted page) may be given."""
    state = request.app.state if request is not None else None
    context.setdefault("nav", None)
    context.setdefault("registry_label", getattr(state, "registry_label", ""))
    html = environment.get_template(template).render(
        request=request, query_url=(lambda **changes: query_url(request, **changes)) if request is not None else None, **context,
    )
    return HTMLResponse(html, status_code=status)
