"""Running an ASGI app (`transferkit serve`, `transferkit ui`) with uvicorn on a socket bound beforehand.

Binding first turns a taken port, an address this machine does not have or a privileged port into one
`error:` line before any work starts, instead of a uvicorn log line after it. Hosts are IP literals or
`localhost` (checked by the callers), so binding never resolves a name over the network.
"""

from __future__ import annotations

import ipaddress
import socket

from transferkit.errors import InvalidInputError

# Concurrent connections beyond this get 503 from uvicorn instead of queueing without bound.
LIMIT_CONCURRENCY = 512


def is_loopback(host: str) -> bool:
    """True for `localhost` and loopback addresses; InvalidInputError for anything that is not an IP address."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        raise InvalidInputError(
            f"--host must be an IP address (127.0.0.1, ::1, 0.0.0.0, or one of this machine's addresses) or localhost, "
            f"got {host!r}"
        ) from None


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to (host, port), ready for `serve`; InvalidInputError (one line) if it cannot be."""
    if not 1 <= port <= 65535:
        raise InvalidInputError(f"--port must be between 1 and 65535, got {port}")
    address = "127.0.0.1" if host == "localhost" else host.strip("[]")
    # proto=IPPROTO_TCP, not 0: asyncio turns Nagle off (TCP_NODELAY) only on accepted sockets that say they are TCP;
    # with Nagle on, a keep-alive client waits ~40 ms for every response written in two parts (delayed ACK).
    sock = socket.socket(socket.AF_INET6 if ":" in address else socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn does: restart at once after a stop
    try:
        sock.bind((address, port))
    except (OSError, OverflowError) as error:
        sock.close()
        reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error)
        raise InvalidInputError(f"cannot listen on {host}:{port} ({reason}); is the port already in use? choose another --port") from None
    return sock


def serve(app: object, sock: socket.socket) -> None:
    """Serve `app` on the bound socket until Ctrl-C / SIGTERM (uvicorn's graceful shutdown)."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", limit_concurrency=LIMIT_CONCURRENCY))  # type: ignore[arg-type]
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
