"""`orchestrator ui`: a live, read-only local web view of the runs under a results folder.

`serve` needs the `ui` extra (Starlette, uvicorn, sse-starlette); the host package imports none
of it until the command runs.
"""

from __future__ import annotations

import importlib.util
import socket
from pathlib import Path

REQUIRED = ("starlette", "uvicorn", "sse_starlette", "jinja2", "pygments")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def missing() -> list[str]:
    """The UI's Python packages that are not installed."""
    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on `host`:`port` (OSError when it cannot be had, e.g. taken), so
    that the address is announced only once it is ours."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET  # as uvicorn binds
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    return sock


def serve(results_dir: Path, sock: socket.socket, host: str = "127.0.0.1",
          poll: float = 1.0) -> None:
    """Serve the UI on a socket from `bind` until interrupted."""
    import uvicorn

    from orchestrator.ui.app import LOCAL_HOSTS, create_app

    hosts = LOCAL_HOSTS if host in LOOPBACK else ["*"]
    app = create_app(results_dir, poll=poll, hosts=hosts)
    config = uvicorn.Config(app, log_level="warning", access_log=False)
    uvicorn.Server(config).run(sockets=[sock])
