"""What keeps `transferkit ui` safe to leave running: where it may listen, who may read it, what it never shows.

- Binding: loopback by default; any other address needs a token (`--token` or `TRANSFERKIT_UI_TOKEN`). Hosts are
  IP literals or `localhost` only, so starting the server never resolves a name over the network.
- Tokens: accepted as `Authorization: Bearer <token>`, or, for browsers, through the login form, which sets an
  HttpOnly, SameSite=Strict session cookie derived from the token and a per-process secret (restarting the server
  signs everyone out). Every comparison is constant-time (`hmac.compare_digest`).
- Responses: security headers on every one, errors included (a CSP without inline scripts or styles, no-sniff,
  frame-deny, no referrer, no caching of pages), and `redact_paths` removes absolute file paths from every
  value a page shows.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

from transferkit.errors import InvalidInputError
from transferkit.webserver import is_loopback

TOKEN_ENV = "TRANSFERKIT_UI_TOKEN"
SESSION_COOKIE = "transferkit_ui_session"
MIN_TOKEN_LENGTH = 16
# Page routes: an absolute path starting with one of these is a link of this app, not a file.
ROUTES = ("experts", "tasks", "compare", "cost", "runs", "static", "login")
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; font-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
SECURITY_HEADERS = {
    "content-security-policy": CONTENT_SECURITY_POLICY,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
    "permissions-policy": "camera=(), microphone=(), geolocation=()",
}


def check_bind(host: str, token: str | None) -> None:
    """Refuse (InvalidInputError, one line) a host that is not an address, or a non-loopback one without a good token."""
    if token is not None and (len(token) < MIN_TOKEN_LENGTH or not token.isprintable() or token != token.strip()):
        raise InvalidInputError(
            f"the token must be at least {MIN_TOKEN_LENGTH} printable characters without surrounding spaces "
            "(e.g. python -c 'import secrets; print(secrets.token_urlsafe(24))')"
        )
    if is_loopback(host) or token is not None:
        return
    raise InvalidInputError(
        f"serving on {host} (not this machine only) needs a token: pass --token or set {TOKEN_ENV}; "
        "or keep the default --host 127.0.0.1"
    )


class TokenGate:
    """Checks a request's bearer token or session cookie against the configured token (None: no token needed)."""

    def __init__(self, token: str | None) -> None:
        self.token = token
        self._secret = secrets.token_bytes(32)

    @property
    def required(self) -> bool:
        return self.token is not None

    def session_value(self) -> str:
        """The cookie a browser gets after logging in: bound to the token and to this server process."""
        assert self.token is not None
        return hmac.new(self._secret, self.token.encode(), hashlib.sha256).hexdigest()

    def token_matches(self, offered: str) -> bool:
        return self.token is not None and hmac.compare_digest(offered.encode(), self.token.encode())

    def allows(self, authorization: str | None, cookie: str | None) -> bool:
        """Whether a request carrying this Authorization header and session cookie may read pages."""
        if self.token is None:
            return True
        if authorization is not None:
            scheme, _, offered = authorization.partition(" ")
            if scheme.lower() == "bearer" and self.token_matches(offered.strip()):
                return True
        return cookie is not None and hmac.compare_digest(cookie.encode(), self.session_value().encode())


# An absolute file path: a URL without a host (file:///..., sqlite:////...), a POSIX path of two or more segments
# (not one of this app's routes, not part of a URL) or a Windows path.
_PATH = re.compile(
    r"\b[A-Za-z][\w+.-]*:///[^\s'\"<>]+"
    r"|(?<![\w.~:/%-])(?:[A-Za-z]:\\[^\s'\"<>]+|/(?!(?:" + "|".join(ROUTES) + r")\b)[^\s/'\"<>,;()\[\]{}]+(?:/[^\s/'\"<>,;()\[\]{}]*)+)"
)


def redact_paths(text: str) -> str:
    """`text` with every absolute file path replaced by `…/` and its last part (`/home/a/x.db` -> `…/x.db`)."""
    return _PATH.sub(_shorten, text)


def _shorten(match: re.Match) -> str:
    scheme, separator, path = match.group(0).rpartition(":///")
    parts = [part for part in re.split(r"[/\\]", path) if part]
    return f"{scheme}{separator}…/{parts[-1] if parts else ''}"
