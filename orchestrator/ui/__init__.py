"""`orchestrator ui`: a live, read-only local web view of the runs under a results folder.

`serve` needs the `ui` extra (Starlette, uvicorn, sse-starlette); the host package imports none
of it until the command runs.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

REQUIRED = ("starlette", "uvicorn", "sse_starlette", "jinja2", "pygments")
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def missing() -> list[str]:
    """The UI's Python packages that are not installed."""
    return [name for name in REQUIRED if importlib.util.find_spec(name) is None]


def serve(results_dir: Path, host: str = "127.0.0.1", port: int = 8765,
          poll: float = 1.0) -> None:
    """Serve the UI until interrupted."""
    import uvicorn

    from orchestrator.ui.app import LOCAL_HOSTS, create_app

    hosts = LOCAL_HOSTS if host in LOOPBACK else ["*"]
    app = create_app(results_dir, poll=poll, hosts=hosts)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False)
