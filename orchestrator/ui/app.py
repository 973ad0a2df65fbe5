"""The read-only web app: pages (Jinja2, autoescaped), JSON for the live parts, one
server-sent-event stream that says which runs changed, each run's best.py as a download, and
the static files.

Only GET routes exist. Every response, errors included, carries a strict Content-Security-Policy
(scripts and styles from this origin only, no inline code, no eval, no other origin) and the
usual hardening headers; requests must name an allowed Host (no DNS rebinding from a web page).
A malformed request gets a 4xx and one line on the console; responses but the event stream are
gzip-compressed. The routes that read journals are plain functions, which Starlette runs in its
thread pool: a long read holds up no other page and no event stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from urllib.parse import urlencode

import orjson
from jinja2 import Environment, FileSystemLoader
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.requests import Request
from starlette.responses import FileResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from orchestrator.analysis.stats import default_threshold
from orchestrator.store.run import Run
from orchestrator.ui.compare import MAX_RUNS, TooMany, compare_lines, compare_view, pick
from orchestrator.ui.data import Runs, best_file, run_url
from orchestrator.ui.iteration import highlight_css, iteration_view
from orchestrator.ui.settings import key_settings

HERE = Path(__file__).parent
CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; font-src 'self'; object-src 'none'; base-uri 'none'; "
       "form-action 'none'; frame-ancestors 'none'")
SECURITY_HEADERS = {
    "content-security-policy": CSP,
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}
LOCAL_HOSTS = ["127.0.0.1", "localhost", "[::1]"]  # Host names of loopback (IPv6 bracketed)
WHOLE = re.compile(r"[0-9]{1,9}")  # ASCII digits only (str.isdigit takes "²"), below 10**9


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every HTTP response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.decode().lower() not in SECURITY_HEADERS]
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_headers)


class App(Starlette):
    """Starlette with SecurityHeaders outside its error handler, so that a 500 has them too."""

    def build_middleware_stack(self) -> ASGIApp:
        return SecurityHeaders(super().build_middleware_stack())


def whole(request: Request, key: str, default: int | None = None) -> int | None:
    """Query parameter `key` as a whole number below 10**9; 400 for anything else."""
    value = request.query_params.get(key)
    if value is None:
        return default
    if not WHOLE.fullmatch(value):
        raise HTTPException(400, f"{key} must be a whole number below 10**9")
    return int(value)


def _json(data: object) -> Response:
    return Response(orjson.dumps(data, option=orjson.OPT_SERIALIZE_NUMPY),
                    media_type="application/json")


def create_app(results_dir: Path, poll: float = 1.0, hosts: list[str] | None = None) -> Starlette:
    """The app over the runs under `results_dir`; the event stream checks the journals' sizes
    and mtimes every `poll` seconds; `hosts`: the Host names accepted (default: loopback)."""
    runs = Runs(Path(results_dir))
    templates = Jinja2Templates(env=Environment(
        loader=FileSystemLoader(HERE / "templates"), autoescape=True))

    def get_run(request: Request, records: bool = True) -> Run:
        try:
            name = request.path_params["name"]
            return runs.get(name) if records else runs.meta(name)
        except KeyError:
            raise HTTPException(404, "no such run") from None

    async def runs_page(request: Request) -> Response:
        return templates.TemplateResponse(request, "runs.html", {"root": str(runs.root),
                                                                   "max_compare": MAX_RUNS})

    def prefetch_detail(name: str, window: int | None) -> None:
        if runs.current(name):  # held as it is: the page's own request is quick
            return
        with contextlib.suppress(KeyError, OSError):  # gone since: the page's request says so
            runs.detail(name, window)

    def run_page(request: Request) -> Response:
        """The page names the run from its config alone; its records, which the page asks for
        next, are read and worked out once the page is sent, while the browser loads it."""
        run = get_run(request, records=False)
        name = request.path_params["name"]
        window = request.query_params.get("window")
        prefetch = BackgroundTask(prefetch_detail, name,
                                  int(window) if window and WHOLE.fullmatch(window) else None)
        return templates.TemplateResponse(request, "run.html", {
            "name": name, "api": f"/api{run_url(name)}", "dataset": run.dataset,
            "config": run.config, "settings": key_settings(run.config),
            "threshold": default_threshold(run.dataset),
            "parallel": run.config.get("parallel") or 1}, background=prefetch)

    def best_code(request: Request) -> Response:
        path = best_file(get_run(request))
        if path is None:
            raise HTTPException(404, "no best.py in this run")
        return FileResponse(path, media_type="text/x-python",
                            filename=f"{request.path_params['name']}-best.py")

    def picked(request: Request) -> list[tuple[str, Run]]:
        try:
            return pick(runs, request.query_params.getlist("run"))
        except TooMany as exc:
            raise HTTPException(400, str(exc)) from None
        except KeyError:
            raise HTTPException(404, "no such run") from None

    def compare_page(request: Request) -> Response:
        chosen = picked(request)
        return templates.TemplateResponse(request, "compare.html", {
            **compare_view(chosen),
            "api": "/api/compare?" + urlencode([("run", name) for name, _ in chosen])})

    def api_compare(request: Request) -> Response:
        return _json(compare_lines(picked(request)))

    def iteration_page(request: Request) -> Response:
        run = get_run(request)
        iteration = request.path_params["iteration"]
        try:
            if not WHOLE.fullmatch(iteration):
                raise KeyError(iteration)
            rec = run.record(int(iteration), whole(request, "chain"))
        except KeyError:
            raise HTTPException(404, "no such iteration") from None
        full = runs.full(request.path_params["name"], rec)
        run = replace(run, records=[full if r is rec else r for r in run.records])
        view = iteration_view(run, request.path_params["name"], full)
        return templates.TemplateResponse(request, "iteration.html", {"it": view})

    def api_runs(request: Request) -> Response:
        return _json(runs.rows())

    def api_run(request: Request) -> Response:
        size = whole(request, "window") or None
        since = whole(request, "since", 0) or 0
        get_run(request)  # a 404 for no run
        return _json(runs.detail(request.path_params["name"], size, since))

    async def events(request: Request) -> Response:
        # Looked at before the stream opens: a page that loads after its `open` misses nothing.
        seen = runs.signatures()

        async def changes() -> AsyncIterator[dict]:
            nonlocal seen
            while True:
                await asyncio.sleep(poll)
                now = runs.signatures()
                changed = sorted(n for n in now.keys() | seen.keys() if now.get(n) != seen.get(n))
                seen = now
                if changed:
                    yield {"event": "runs", "data": orjson.dumps(changed).decode()}

        return EventSourceResponse(changes(), ping=15)

    async def css(request: Request) -> Response:
        return PlainTextResponse(highlight_css(), media_type="text/css")

    async def client_error(request: Request, exc: HTTPException) -> Response:
        target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        print(f"orchestrator ui: {exc.status_code} {request.method} {target[:200]!r}: "
              f"{exc.detail}", file=sys.stderr, flush=True)
        return PlainTextResponse(str(exc.detail), status_code=exc.status_code)

    routes = [
        Route("/", runs_page),
        Route("/runs/{name}", run_page),
        Route("/runs/{name}/iterations/{iteration}", iteration_page),
        Route("/runs/{name}/best.py", best_code),
        Route("/compare", compare_page),
        Route("/api/compare", api_compare),
        Route("/api/runs", api_runs),
        Route("/api/runs/{name}", api_run),
        Route("/events", events),
        Route("/highlight.css", css),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    middleware = [Middleware(TrustedHostMiddleware, allowed_hosts=hosts or LOCAL_HOSTS),
                  Middleware(GZipMiddleware, minimum_size=1000, compresslevel=6)]
    app = App(routes=routes, middleware=middleware,
              exception_handlers={HTTPException: client_error})
    app.state.runs = runs  # what the server holds parsed
    return app

