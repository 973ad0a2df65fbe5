"""`orchestrator ui` under load and abuse: malformed requests, many tabs, long journals.

Browser tests drive a real headless Chromium against the real command, as tests/test_ui.py does
(whose fixtures these share).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.test_ui import Watched, browser, client, serve  # noqa: F401 (fixtures)
from tests.ui_runs import parallel_run

starlette = pytest.importorskip(
    "starlette", reason="NOT TESTED: the [ui] extra is not installed (pip install '.[ui]')")

SECURITY = ("content-security-policy", "x-content-type-options", "x-frame-options",
            "referrer-policy")
MALFORMED = [  # each once gave a 500 (issue 23), or could
    "/api/runs/parallel?window=%C2%B2",  # "²".isdigit(), but int("²") fails
    "/api/runs/parallel?window=99999999999999999999",  # past orjson's integers
    "/api/runs/parallel?window=" + "9" * 5000,  # past int()'s 4300 digits
    "/runs/parallel/iterations/" + "9" * 5000,
    "/runs/parallel/iterations/1?chain=" + "9" * 5000,
    "/runs/parallel/iterations/%C2%B2",
    "/api/runs/parallel?since=-1",
    "/api/runs/parallel?since=1e3",
    "/static/ui.js%00",
    "/runs/%00",
]


def append(run: Path, *records: dict) -> None:
    with (run / "iterations.jsonl").open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)


# ---------------------------------------------------------------- malformed requests


@pytest.mark.parametrize("path", MALFORMED)
def test_a_malformed_request_is_a_client_error_with_the_security_headers(tmp_path, path,
                                                                          capsys):
    parallel_run(tmp_path)
    response = client(tmp_path).get(path)  # a 500 would raise here
    assert 400 <= response.status_code < 500, response.status_code
    assert all(h in response.headers for h in SECURITY)
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err  # one line, not a traceback
    assert len(err) < 400


def test_a_server_error_carries_the_security_headers_too(tmp_path):
    from starlette.routing import Route
    from starlette.testclient import TestClient

    from orchestrator.ui.app import create_app

    async def broken(request):
        raise RuntimeError("a bug in a handler")

    app = create_app(tmp_path, hosts=["testserver"])
    app.router.routes.append(Route("/broken", broken))
    response = TestClient(app, raise_server_exceptions=False).get("/broken")
    assert response.status_code == 500
    assert all(h in response.headers for h in SECURITY)
