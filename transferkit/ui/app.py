"""The web app of `transferkit ui`: FastAPI routes over a read-only `Registry`, guarded by `Guard`.

Routes (all GET except the login form; none writes the registry):

- `/experts`: the experts table (`q` text filter, `task`, `method`, `strategy`, `tag`, `sort`, `page`, `per_page`);
- `/experts/{id, name or alias}`: one expert;
- `/tasks` (`page`, `per_page`), `/compare` (`target`, `arm`, repeatable), `/cost` (`by`, `measure`, `task`,
  `since`), `/runs`;
- `POST /login`: the token form (only when a token is set); `/static/...`: the app's CSS, JS and fonts.

Every parameter is validated (types, ranges, lengths, allowed values; unknown parameters are refused with 422).
`Guard` wraps everything: the token check, security headers on every response, and a generic 500 page (the
traceback goes to the server's log, never to the client).
"""

from __future__ import annotations

import logging
import secrets
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs

from fastapi import Depends, FastAPI, HTTPException, Query, Request
from fastapi import Path as PathParam
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse
from starlette.datastructures import MutableHeaders
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.staticfiles import StaticFiles
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from transferkit.version import __version__
from transferkit.accounting import GROUPINGS
from transferkit.api import Registry
from transferkit.errors import InvalidInputError, NotFoundError, TransferkitError
from transferkit.registry.expert_query import SORT_KEYS
from transferkit.ui import views
from transferkit.ui.render import page
from transferkit.ui.security import SECURITY_HEADERS, SESSION_COOKIE, TokenGate

STATIC = Path(__file__).resolve().parent / "static"
MAX_TEXT = 200
MAX_PAGE = 10_000_000
MAX_LOGIN_BODY = 4096
log = logging.getLogger("transferkit.ui")

Text = Annotated[str | None, Query(max_length=MAX_TEXT)]
PageNumber = Annotated[int, Query(ge=1, le=MAX_PAGE)]
SortKey = Annotated[str, Query(pattern="^-?(" + "|".join(SORT_KEYS) + ")$")]


def only(*names: str) -> Any:
    """A dependency refusing (422) query parameters a page does not take."""
    allowed = frozenset(names)

    def check(request: Request) -> None:
        unknown = sorted(set(request.query_params) - allowed)
        if unknown:
            takes = ", ".join(sorted(allowed)) or "no parameters"
            raise HTTPException(422, f"unknown parameter {unknown[0][:40]!r}; this page takes {takes}")

    return Depends(check)


def _blank(value: str | None) -> str | None:
    """Empty form fields mean 'no filter'."""
    return value.strip() or None if value is not None else None


def create_app(registry: Registry, token: str | None = None) -> FastAPI:
    """The UI over an open (read-only) registry; with `token`, every page needs it (bearer header or login cookie)."""
    gate = TokenGate(token)
    app = FastAPI(title="transferkit ui", version=__version__, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.registry_label = registry_label(registry)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.add_middleware(Guard, gate=gate)

    @app.get("/", dependencies=[only()])
    def home() -> RedirectResponse:
        return RedirectResponse("/experts", status_code=303)

    @app.get("/experts", dependencies=[only("q", "task", "method", "strategy", "tag", "sort", "page", "per_page")])
    def experts(
        request: Request, q: Text = None, task: Text = None, method: Text = None, strategy: Text = None, tag: Text = None,
        sort: SortKey = "-created", page_number: Annotated[int, Query(alias="page", ge=1, le=MAX_PAGE)] = 1,
        per_page: Annotated[int, Query(ge=5, le=100)] = 50,
    ) -> HTMLResponse:
        filters = views.ExpertFilters(_blank(q), _blank(task), _blank(method), _blank(strategy), _blank(tag), sort, page_number, per_page)
        try:
            data = views.experts_page(registry, filters)
        except NotFoundError as error:  # an unknown task in the filter is a bad parameter, not a missing page
            raise InvalidInputError(str(error)) from None
        return page(request, "experts.html", nav="experts", **data)

    @app.get("/experts/{reference}", dependencies=[only()])
    def expert(request: Request, reference: Annotated[str, PathParam(min_length=1, max_length=MAX_TEXT)]) -> HTMLResponse:
        data = views.expert_page(registry, reference)
        return page(request, "expert.html", nav="experts", **data)

    @app.get("/tasks", dependencies=[only("page", "per_page")])
    def tasks(request: Request, page_number: Annotated[int, Query(alias="page", ge=1, le=MAX_PAGE)] = 1,
              per_page: Annotated[int, Query(ge=5, le=50)] = 30) -> HTMLResponse:
        return page(request, "tasks.html", nav="tasks", **views.tasks_page(registry, page_number, per_page))

    @app.get("/compare", dependencies=[only("target", "arm")])
    def compare(request: Request, target: Annotated[list[str], Query(max_length=50)] = [],  # noqa: B006 - FastAPI copies it
                arm: Annotated[list[str], Query(max_length=50)] = []) -> HTMLResponse:  # noqa: B006
        if any(len(value) > MAX_TEXT for value in [*target, *arm]):
            raise InvalidInputError(f"target and arm values have at most {MAX_TEXT} characters")
        return page(request, "compare.html", nav="compare", **views.compare_page(registry, target, arm))

    @app.get("/cost", dependencies=[only("by", "measure", "task", "since")])
    def cost(request: Request, by: Annotated[str, Query(pattern="^(" + "|".join(GROUPINGS) + ")$")] = "task",
             measure: Annotated[str, Query(pattern="^(" + "|".join(views.MEASURES) + ")$")] = "wall_seconds",
             task: Text = None, since: Annotated[str | None, Query(max_length=40)] = None) -> HTMLResponse:
        moment = _since(_blank(since))
        try:
            data = views.cost_page(registry, by, measure, _blank(task), moment)
        except NotFoundError as error:
            raise InvalidInputError(str(error)) from None
        return page(request, "cost.html", nav="cost", **data)

    @app.get("/runs", dependencies=[only()])
    def runs(request: Request) -> HTMLResponse:
        return page(request, "runs.html", nav="runs", **views.runs_page(registry))

    @app.post("/login", dependencies=[only()], response_model=None)
    async def login(request: Request) -> HTMLResponse | RedirectResponse:
        body = await _small_body(request)
        form = parse_qs(body.decode("utf-8", "replace"), max_num_fields=4)
        target = form.get("next", ["/experts"])[0]
        if not target.startswith("/") or target.startswith("//") or "\\" in target:  # never redirect off this site
            target = "/experts"
        if not gate.required:
            return RedirectResponse(target, status_code=303)
        if not gate.token_matches(form.get("token", [""])[0]):
            return page(request, "login.html", 401, next=target, wrong=True, registry_label="")
        response = RedirectResponse(target, status_code=303)
        response.set_cookie(SESSION_COOKIE, gate.session_value(), httponly=True, samesite="strict", path="/",
                            secure=request.url.scheme == "https")
        return response

    app.add_exception_handler(StarletteHTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(TransferkitError, _transferkit_error)  # type: ignore[arg-type]
    return app


def registry_label(registry: Registry) -> str:
    """Which registry this is, without a password or a folder: `SQLite registry.db`, `postgresql db.host/name`."""
    url = registry.store.engine.url  # type: ignore[attr-defined]
    if url.get_backend_name() == "sqlite":
        return f"SQLite {Path(str(url.database or 'memory')).name}"
    return f"{url.get_backend_name()} {url.host or 'local'}/{url.database}"


def _since(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidInputError("since must be an ISO date (YYYY-MM-DD) or datetime") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


async def _small_body(request: Request) -> bytes:
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_LOGIN_BODY:
            raise HTTPException(413, "the form is too large")
    return bytes(body)


def _error(request: Request | None, status: int, title: str, message: str) -> HTMLResponse:
    return page(request, "error.html", status, title=title, message=message, nav=None)


async def _http_error(request: Request, error: StarletteHTTPException) -> HTMLResponse:
    titles = {404: "Not found", 405: "Method not allowed", 413: "Too large", 422: "Bad parameter"}
    message = error.detail if isinstance(error.detail, str) else "the request was refused"
    if error.status_code == 404 and message == "Not Found":
        message = f"there is no page at {request.url.path[:80]}"
    return _error(request, error.status_code, titles.get(error.status_code, "Refused"), message)


async def _validation_error(request: Request, error: RequestValidationError) -> HTMLResponse:
    problems = "; ".join(f"{'.'.join(str(part) for part in e['loc'][1:]) or 'request'}: {e['msg']}" for e in error.errors()[:5])
    return _error(request, 422, "Bad parameter", problems)


async def _transferkit_error(request: Request, error: TransferkitError) -> HTMLResponse:
    if isinstance(error, NotFoundError):
        return _error(request, 404, "Not found", str(error))
    if isinstance(error, InvalidInputError):
        return _error(request, 422, "Bad parameter", str(error))
    return _error(request, 503, "The registry could not be read", str(error))


class Guard:
    """ASGI middleware around the whole app: token check, security headers on every response, a generic 500 page."""

    def __init__(self, app: ASGIApp, gate: TokenGate) -> None:
        self.app = app
        self.gate = gate

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False
        static = scope["path"].startswith("/static/")

        async def secured(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers[name] = value
                headers["cache-control"] = "public, max-age=3600" if static and message["status"] == 200 else "no-store"
            await send(message)

        request = Request(scope, receive)
        if self.gate.required and not static and scope["path"] != "/login" and not self.gate.allows(
            request.headers.get("authorization"), request.cookies.get(SESSION_COOKIE)
        ):
            target = scope["path"] + (f"?{scope['query_string'].decode('latin-1')}" if scope.get("query_string") else "")
            response = page(request, "login.html", 401, next=target, wrong=False, registry_label="")  # not even which registry
            response.headers["www-authenticate"] = 'Bearer realm="transferkit"'
            await response(scope, receive, secured)
            return
        try:
            await self.app(scope, receive, secured)
        except Exception:  # noqa: BLE001 - any failure becomes a page without details; the log has them
            reference = secrets.token_hex(4)
            log.exception("transferkit ui: internal error %s on %s %s", reference, scope.get("method"), scope["path"])
            if not started:
                message = f"something went wrong on the server (reference {reference}, in its log)"
                await _error(request, 500, "Internal error", message)(scope, receive, secured)
