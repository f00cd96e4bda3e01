"""`transferkit ui` is safe to leave running: over real HTTP, every page and error of a full crawl carries the
security headers, shows no absolute path and no traceback, has no inline script or style, and the registry is
byte-for-byte the same afterwards; a token locks every page; a non-loopback bind without one is refused."""

from __future__ import annotations

import hashlib
import re
import socket
import subprocess
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from cli_helpers import EXECUTABLE, assert_one_line_error
from ui_helpers import REPO, SHARED_DATA, TOKEN, http_get, start_ui, stop
from sqlalchemy import create_engine, text

from transferkit.registry.rows import Base
from transferkit.ui.security import CONTENT_SECURITY_POLICY, SESSION_COOKIE

MAX_PAGES = 120
ERRORS = [  # (path, expected status): refused parameters, unknown pages and experts, traversal, wrong methods
    ("/no/such/page", 404), ("/experts/no-such-expert", 404), ("/experts?page=0", 422), ("/experts?per_page=1000", 422),
    ("/experts?sort=evil", 422), ("/experts?zzz=1", 422), ("/experts?q=" + "x" * 201, 422), ("/experts?task=no-such-task", 422),
    ("/experts?q=%00", 422), ("/experts?page=99999999999999999999", 422), ("/cost?by=year", 422), ("/cost?since=yesterday", 422),
    ("/tasks?page=-1", 422), ("/compare?target=" + "t" * 201, 422), ("/runs?all=1", 422), ("/static/../../../etc/passwd", 404),
    ("/static/nope.css", 404), ("/experts/" + "e" * 201, 422), ("/experts/%2e%2e%2f%2e%2e%2fetc", 404),
]
ABSOLUTE = re.compile(r"(?<![\w.:/-])/(?:tmp|home|root|work|usr|var|opt|etc|srv|mnt|proc|private|Users)/")


class Links(HTMLParser):
    """Every href/src, and what must never be there: inline scripts, event handler attributes, style attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.problems: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        names = dict(attrs)
        self.links += [value for key, value in attrs if key in ("href", "src") and value]
        if tag == "script" and not names.get("src"):
            self.problems.append("inline <script>")
        self.problems += [f"{tag} {key}=" for key, _ in attrs if key.startswith("on") or key == "style"]
        if tag == "style":
            self.problems.append("<style> element")


def database_rows(url: str) -> dict:
    engine = create_engine(url)
    with engine.connect() as connection:
        rows = {name: sorted(map(repr, connection.execute(text(f"SELECT * FROM {name}")).all())) for name in Base.metadata.tables}
    engine.dispose()
    return rows


def snapshot(ui) -> dict:
    """Every row, and for SQLite the database file's bytes too."""
    state = {"rows": database_rows(ui.registry)}
    if ui.backend == "sqlite":
        state["file"] = hashlib.sha256(Path(ui.registry.removeprefix("sqlite:///")).read_bytes()).hexdigest()
    return state


def check_response(path: str, status: int, headers: dict, body: str, secrets: list[str]) -> None:
    assert headers.get("content-security-policy") == CONTENT_SECURITY_POLICY, path
    assert "script-src 'self'" in headers["content-security-policy"] and "unsafe-inline" not in headers["content-security-policy"]
    assert headers.get("x-content-type-options") == "nosniff" and headers.get("x-frame-options") == "DENY", path
    assert "Traceback" not in body and 'File "' not in body, path
    found = ABSOLUTE.search(body)
    assert found is None, (path, status, body[max(0, found.start() - 80):found.end() + 80])
    for secret in secrets:
        assert secret not in body, (path, secret)
    if headers.get("content-type", "").startswith("text/html"):
        parser = Links()
        parser.feed(body)
        assert parser.problems == [], (path, parser.problems)


def crawl(ui, headers: dict | None = None) -> dict[str, int]:
    """Every page reachable from / (static files included), with the checks on each, and no link or resource off this
    site; path -> status."""
    secrets = [str(REPO), str(SHARED_DATA), str(Path(ui.artifacts).parent), str(Path.home())]
    seen: dict[str, int] = {}
    queue = ["/"]
    while queue and len(seen) < MAX_PAGES:
        path = queue.pop(0)
        if path in seen:
            continue
        status, response_headers, body = http_get(ui.base, path, headers)
        seen[path] = status
        check_response(path, status, response_headers, body, secrets)
        assert status in (200, 303), (path, status, body[:300])
        if status == 303:
            queue.append(response_headers["location"])
        else:
            parser = Links()
            if response_headers.get("content-type", "").startswith("text/html"):
                parser.feed(body)
            elif response_headers.get("content-type", "").startswith("text/css"):  # the fonts
                parser.links += re.findall(r'url\("?([^")]+)"?\)', body)
            for link in parser.links:
                target = urlsplit(urljoin(ui.base + path, link))
                # Offline: every script, style, font, image and link is this server's (works with the network unplugged).
                assert target.netloc == urlsplit(ui.base).netloc, (path, link)
                queue.append(target.path + (f"?{target.query}" if target.query else ""))
    return seen


def test_crawl_shows_no_path_no_traceback_and_changes_nothing(ui):
    before = snapshot(ui)
    seen = crawl(ui)
    pages = [p for p in seen if not p.startswith("/static/")]
    assert {"/experts", "/tasks", "/compare", "/cost", "/runs", f"/experts/{ui.ids['pemt']}"} <= set(seen), sorted(seen)
    assert len([p for p in pages if p.startswith("/experts/")]) == 8 and len(pages) > 30
    assert {"/static/ui.css", "/static/ui.js", "/static/fonts/DejaVuSans.woff"} <= set(seen)
    secrets = [str(REPO), str(SHARED_DATA), str(Path(ui.artifacts).parent)]
    for path, expected in ERRORS:
        status, headers, body = http_get(ui.base, path)
        assert status == expected, (path, status, body[:400])
        check_response(path, status, headers, body, secrets)
    for method, path, expected in (("POST", "/experts", 405), ("DELETE", f"/experts/{ui.ids['rte']}", 405), ("PUT", "/cost", 405)):
        status, headers, body = http_get(ui.base, path, method=method, body=b"x=1")
        assert status == expected, (method, path, status)
        check_response(path, status, headers, body, secrets)
    assert snapshot(ui) == before  # no request wrote anything


def test_a_failure_inside_a_page_is_a_500_without_details(ui, monkeypatch, tmp_path):
    from starlette.testclient import TestClient

    import transferkit
    from transferkit.ui import views
    from transferkit.ui.app import create_app

    def broken(*_):
        raise RuntimeError(f"could not read {tmp_path}/secret/registry.db")

    monkeypatch.setattr(views, "runs_page", broken)
    with transferkit.Registry(ui.registry, artifacts=ui.artifacts, read_only=True) as registry:
        client = TestClient(create_app(registry), raise_server_exceptions=False)
        response = client.get("/runs")
    assert response.status_code == 500 and "reference" in response.text
    check_response("/runs", 500, {k.lower(): v for k, v in response.headers.items()}, response.text, [str(tmp_path), "secret"])


def test_a_token_locks_every_page(locked_ui, tmp_path):
    base, ids = locked_ui.base, locked_ui.ids
    pages = ["/", "/experts", f"/experts/{ids['pemt']}", "/tasks", "/compare", "/cost?by=day", "/runs", "/no/such/page",
             "/experts?page=0"]
    wrong = [{}, {"Authorization": "Bearer wrong-token-of-some-length"}, {"Authorization": f"Basic {TOKEN}"},
             {"Authorization": f"Bearer {TOKEN}x"}, {"Cookie": f"{SESSION_COOKIE}=forged"}, {"Cookie": f"{SESSION_COOKIE}={TOKEN}"}]
    for path in pages:
        for headers in wrong:
            status, response_headers, body = http_get(base, path, headers)
            assert status == 401, (path, headers, status)
            assert response_headers["www-authenticate"].startswith("Bearer") and "Sign in" in body
            shown = body.replace(f'value="{path.replace("&", "&amp;")}"', "")  # the page asked for, echoed in the form
            assert ids["pemt"] not in shown and "rte-lora" not in shown and "registry.db" not in shown  # nothing leaks
            check_response(path, status, response_headers, body, [TOKEN])
        status, _, body = http_get(base, path, {"Authorization": f"Bearer {TOKEN}"})
        assert status == {"/": 303, "/no/such/page": 404, "/experts?page=0": 422}.get(path, 200), (path, status)
    assert http_get(base, "/static/ui.css")[0] == 200  # the sign-in page's own style and script need no token

    form = {"Content-Type": "application/x-www-form-urlencoded"}
    status, _, body = http_get(base, "/login", form, "POST", b"token=wrong-token-of-some-length&next=/tasks")
    assert status == 401 and "not the right one" in body
    status, headers, _ = http_get(base, "/login", form, "POST", f"token={TOKEN}&next=//evil.example/x".encode())
    assert status == 303 and headers["location"] == "/experts"  # never sent off this site
    status, headers, _ = http_get(base, "/login", form, "POST", f"token={TOKEN}&next=/tasks".encode())
    cookie = headers["set-cookie"]
    assert status == 303 and headers["location"] == "/tasks"
    attributes = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= attributes and TOKEN not in cookie
    session = cookie.split(";")[0]
    assert http_get(base, "/tasks", {"Cookie": session})[0] == 200
    # Another server process (a restart) with the same token does not take the cookie: restarting signs everyone out.
    process, other = start_ui(locked_ui.registry, locked_ui.artifacts, locked_ui.env, tmp_path / "server.log", "--token", TOKEN)
    try:
        assert http_get(other, "/tasks", {"Cookie": session})[0] == 401
        assert http_get(other, "/tasks", {"Authorization": f"Bearer {TOKEN}"})[0] == 200
    finally:
        stop(process)


def run_ui(ui, *args: str, registry: str | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([EXECUTABLE, "--registry", registry or ui.registry, "ui", *args], env=ui.env,
                          capture_output=True, text=True, timeout=120)


def test_the_command_refuses_unsafe_or_impossible_starts(locked_ui, tmp_path):
    ui = locked_ui  # start-up checks do not depend on the registry backend: the SQLite registry
    assert_one_line_error(run_ui(ui, "--host", "0.0.0.0"), "needs a token", "TRANSFERKIT_UI_TOKEN")
    assert_one_line_error(run_ui(ui, "--host", "::"), "needs a token")
    assert_one_line_error(run_ui(ui, "--host", "0.0.0.0", "--token", "short"), "at least 16")
    assert_one_line_error(run_ui(ui, "--host", "db.internal"), "--host must be an IP address")
    assert_one_line_error(run_ui(ui, "--port", "70000"), "--port must be between 1 and 65535")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen(1)
        assert_one_line_error(run_ui(ui, "--port", str(taken.getsockname()[1])), "cannot listen on 127.0.0.1", "in use")
    assert_one_line_error(run_ui(ui, registry=f"sqlite:///{tmp_path}/none.db"), "there is no registry")
    assert not (tmp_path / "none.db").exists()
    behind = tmp_path / "behind.db"
    behind.write_bytes(Path(ui.registry.removeprefix("sqlite:///")).read_bytes())
    engine = create_engine(f"sqlite:///{behind}")
    with engine.begin() as connection:
        connection.execute(text("UPDATE alembic_version SET version_num = '0004'"))
    engine.dispose()
    digest = hashlib.sha256(behind.read_bytes()).hexdigest()
    assert_one_line_error(run_ui(ui, registry=f"sqlite:///{behind}"), "schema revision 0004", "not upgraded")
    assert hashlib.sha256(behind.read_bytes()).hexdigest() == digest
