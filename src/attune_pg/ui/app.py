"""The web console: server-rendered pages over the console views, live through SSE.

Stack: Starlette (routing, requests, streaming responses) under uvicorn, Jinja2 for the
pages, psycopg_pool for connections. Pages are plain HTML with one small script of our own
(static/console.js); nothing is fetched from the internet, and the Content-Security-Policy
forbids it. Sync handlers run in Starlette's thread pool, as psycopg's sync API wants.

Safety: the console is exactly as powerful as the PostgreSQL role it connects as (the views
suffice for reading, as attune_reader); control buttons exist only with `allow_control`,
and every POST must carry the CSRF token of its page (double-submit cookie, checked with
the Origin header when the browser sends one).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import secrets
from collections.abc import AsyncIterator, Callable, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlencode

import psycopg
from jinja2 import Environment, PackageLoader, select_autoescape
from psycopg_pool import ConnectionPool
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import (
    HTMLResponse,
    JSONResponse,
    PlainTextResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles

from attune_pg import db, machine
from attune_pg.errors import AttuneError, NotFoundError, ParameterError
from attune_pg.graph import STATUS_COLOURS, render_graph
from attune_pg.spec.model import WorkflowSpec
from attune_pg.spec.params import check_inquiry_response
from attune_pg.store import console as store
from attune_pg.store import inquiries
from attune_pg.ui import forms, present, timeline
from attune_pg.ui.live import Broadcaster, Change

CSRF_COOKIE = "attune_csrf"
EXECUTION_PARTS = {
    "facts": "execution_facts.html",
    "controls": "execution_controls.html",
    "live": "execution_live.html",
}
CONTROL_VERBS = ("cancel", "pause", "resume", "retry")
CANCEL_POLICIES = ("allow_finish", "cancel_running")
COALESCE_SECONDS = 0.25  # changes within this window reach a page as one event
KEEPALIVE_SECONDS = 15.0
SECURITY_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self';"
        " connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


class Console:
    def __init__(self, dsn: str, *, allow_control: bool = False, pool_size: int = 4) -> None:
        self.allow_control = allow_control
        self.pool = ConnectionPool(
            dsn,
            min_size=1,
            max_size=pool_size,
            kwargs={"autocommit": True, **db.session_options("attune_ui")},
            open=False,
        )
        self.live = Broadcaster(dsn)
        self.pages = Environment(
            loader=PackageLoader("attune_pg.ui", "templates"),
            autoescape=select_autoescape(["html"]),
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.pages.filters.update(
            json=present.json_text,
            when=present.when,
            took=present.took,
            count=present.count,
            query=present.query,
        )
        self.pages.globals.update(status_colours=STATUS_COLOURS)
        self.login = "?"
        self._closing = asyncio.Event()  # set when the server stops: streams end at once
        self.can_control = False  # may the console's role call the control functions?

    # ------------------------------------------------------------ plumbing

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Starlette) -> AsyncIterator[None]:
        await run_in_threadpool(self.pool.open, True, 10.0)
        who = await run_in_threadpool(self.read, store.identity)
        self.login = str(who["login"])
        self.can_control = bool(who["can_control"])
        self.live.start(asyncio.get_running_loop())
        try:
            yield
        finally:
            self.live.stop()
            await run_in_threadpool(self.pool.close)

    def read(self, fn: Callable[..., Any], *args: Any) -> Any:
        with self.pool.connection() as conn:
            return fn(conn, *args)

    def page_text(self, request: Request, template: str, **context: Any) -> str:
        return self.pages.get_template(template).render(
            request=request,
            csrf=_csrf_token(request),
            allow_control=self.allow_control,
            controls=self.allow_control and self.can_control,
            login=self.login,
            notice=request.query_params.get("notice"),
            problem=request.query_params.get("error"),
            **context,
        )

    def render(
        self, request: Request, template: str, status: int = 200, **context: Any
    ) -> HTMLResponse:
        body = self.page_text(request, template, **context)
        # A region's digest lets a page skip swapping in what it already shows.
        headers = {**SECURITY_HEADERS, "X-Digest": _digest(body)}
        response = HTMLResponse(body, status_code=status, headers=headers)
        token = _csrf_token(request)
        if request.cookies.get(CSRF_COOKIE) != token:
            response.set_cookie(CSRF_COOKIE, token, httponly=True, samesite="strict")
        return response

    def failure(self, request: Request, exc: Exception) -> HTMLResponse:
        status = 404 if isinstance(exc, NotFoundError) else 400
        return self.render(request, "error.html", status=status, message=_message(exc))

    # ------------------------------------------------------------ pages

    def executions(self, request: Request) -> Response:
        try:
            filters, form = _filters(request.query_params)
            before = _int_param(request.query_params, "before")
            after = _int_param(request.query_params, "after")
        except ParameterError as exc:
            return self.failure(request, exc)

        def load(conn: psycopg.Connection) -> dict[str, Any]:
            return {
                "page": store.execution_page(conn, filters, before=before, after=after),
                "counts": store.execution_counts(conn, filters),
                "workflows": [w["ref"] for w in store.workflows(conn)],
            }

        data = self.read(load)
        part = request.query_params.get("part")
        template = "executions_rows.html" if part == "rows" else "executions.html"
        return self.render(
            request, template, filters=form, statuses=machine.WORKFLOW_STATES, **data
        )

    def execution(self, request: Request) -> Response:
        execution_id = int(request.path_params["id"])
        try:
            data = self.read(self._execution_data, execution_id)
        except AttuneError as exc:
            return self.failure(request, exc)
        parts = {}
        for name, template in EXECUTION_PARTS.items():
            html = self.page_text(request, template, **data)
            parts[name] = {"html": html, "digest": _digest(html)}
        if request.query_params.get("part") == "regions":
            return JSONResponse(parts, headers=SECURITY_HEADERS)
        return self.render(request, "execution.html", parts=parts, **data)

    def _execution_data(self, conn: psycopg.Connection, execution_id: int) -> dict[str, Any]:
        row = store.execution(conn, execution_id)
        tasks = store.execution_tasks(conn, execution_id)
        totals = store.task_totals(conn, execution_id)
        statuses = store.latest_statuses(conn, execution_id)
        graph = ""
        if row["definition"]:
            spec = WorkflowSpec.from_dict(row["definition"])
            graph = render_graph(spec, "svg", statuses)
        asks = store.open_inquiries(conn, execution_id)
        return {
            "e": row,
            "tasks": tasks,
            "tasks_capped": len(tasks) >= store.TASK_ROWS,
            "totals": totals,
            "graph": graph,
            "timeline": timeline.render(tasks, STATUS_COLOURS),
            "audit": store.audit(conn, execution_id),
            "children": store.children(conn, execution_id),
            "inquiries": [(ask, forms.fields(ask["schema"] or {})) for ask in asks],
            "live": row["status"] not in machine.WORKFLOW_TERMINAL,
            "can_pause": row["status"] == "running",
            "can_resume": row["status"] in ("paused", "pausing"),
            "can_cancel": row["status"] not in machine.WORKFLOW_TERMINAL,
            "can_retry": row["status"] == "failed",
            "policies": CANCEL_POLICIES,
        }

    def graph_svg(self, request: Request) -> Response:
        execution_id = int(request.path_params["id"])

        def load(conn: psycopg.Connection) -> str:
            row = store.execution(conn, execution_id)
            if not row["definition"]:
                raise NotFoundError(f"execution {execution_id} has no definition snapshot")
            statuses = store.latest_statuses(conn, execution_id)
            return render_graph(WorkflowSpec.from_dict(row["definition"]), "svg", statuses)

        try:
            svg = self.read(load)
        except AttuneError as exc:
            return PlainTextResponse(_message(exc), status_code=404)
        return Response(svg, media_type="image/svg+xml", headers=SECURITY_HEADERS)

    def workflows(self, request: Request) -> Response:
        return self.render(request, "workflows.html", workflows=self.read(store.workflows))

    def workflow(self, request: Request) -> Response:
        ref = str(request.path_params["ref"])
        try:
            row = self.read(store.workflow, ref)
        except AttuneError as exc:
            return self.failure(request, exc)
        graph = render_graph(WorkflowSpec.from_dict(row["definition"]), "svg")
        return self.render(request, "workflow.html", w=row, graph=graph)

    def workers(self, request: Request) -> Response:
        def load(conn: psycopg.Connection) -> dict[str, Any]:
            return {"workers": store.workers(conn), "queue": store.queue_depth(conn)}

        return self.render(request, "workers.html", **self.read(load))

    def automation(self, request: Request) -> Response:
        def load(conn: psycopg.Connection) -> dict[str, Any]:
            return {
                "rules": store.rules(conn),
                "triggers": store.triggers(conn),
                "timers": store.timers(conn),
                "policies": store.policies(conn),
            }

        return self.render(request, "automation.html", **self.read(load))

    def rule(self, request: Request) -> Response:
        ref = str(request.path_params["ref"])

        def load(conn: psycopg.Connection) -> dict[str, Any]:
            found = store.rule(conn, ref)
            return {"r": found, "enforcements": store.enforcements(conn, rule_ref=ref)}

        try:
            return self.render(request, "rule.html", **self.read(load))
        except AttuneError as exc:
            return self.failure(request, exc)

    def events(self, request: Request) -> Response:
        try:
            before = _int_param(request.query_params, "before")
        except ParameterError as exc:
            return self.failure(request, exc)
        trigger = request.query_params.get("trigger") or None

        def load(conn: psycopg.Connection) -> dict[str, Any]:
            rows, older = store.event_page(conn, trigger=trigger, before=before)
            triggers = [t["ref"] for t in store.triggers(conn)]
            return {"events": rows, "older": older, "triggers": triggers}

        part = request.query_params.get("part")
        template = "events_rows.html" if part == "rows" else "events.html"
        return self.render(request, template, trigger=trigger or "", **self.read(load))

    def event(self, request: Request) -> Response:
        event_id = int(request.path_params["id"])

        def load(conn: psycopg.Connection) -> dict[str, Any]:
            return {
                "ev": store.event(conn, event_id),
                "enforcements": store.enforcements(conn, event_id=event_id),
            }

        try:
            return self.render(request, "event.html", **self.read(load))
        except AttuneError as exc:
            return self.failure(request, exc)

    # ------------------------------------------------------------ control (POST)

    async def control(self, request: Request) -> Response:
        execution_id = int(request.path_params["id"])
        verb = str(request.path_params["verb"])
        form, refusal = await self._checked_form(request)
        if refusal is not None:
            return refusal
        if verb not in CONTROL_VERBS:
            return PlainTextResponse(f"unknown control {verb!r}", status_code=404)
        policy = form.get("policy") if verb == "cancel" else None
        if policy is not None and policy not in CANCEL_POLICIES:
            return _back(execution_id, error=f"unknown cancellation policy {policy!r}")

        def act(conn: psycopg.Connection) -> str:
            return inquiries.request(conn, verb, execution_id, policy)

        try:
            outcome = await run_in_threadpool(self.read, act)
        except (psycopg.Error, AttuneError) as exc:
            return _back(execution_id, error=f"{verb}: {_message(exc)}")
        return _back(execution_id, notice=f"{verb}: {outcome}")

    async def respond(self, request: Request) -> Response:
        inquiry_id = int(request.path_params["id"])
        form, refusal = await self._checked_form(request)
        if refusal is not None:
            return refusal

        def act(conn: psycopg.Connection) -> tuple[int, str]:
            ask = store.inquiry(conn, inquiry_id)
            schema = ask["schema"] or {}
            answer = forms.answer(schema, form)
            check_inquiry_response(inquiry_id, schema, answer)
            # The console answers as its own login: it has no users of its own.
            return int(ask["workflow_execution_id"]), inquiries.respond(
                conn, inquiry_id, answer, self.login
            )

        try:
            execution_id, outcome = await run_in_threadpool(self.read, act)
        except (psycopg.Error, AttuneError) as exc:
            back = _int_param(form, "execution")
            if back is None:
                return PlainTextResponse(_message(exc), status_code=400)
            return _back(back, error=_message(exc))
        return _back(execution_id, notice=f"inquiry {inquiry_id}: {outcome}")

    async def _checked_form(self, request: Request) -> tuple[dict[str, str], Response | None]:
        if not self.allow_control:
            refusal = "control is disabled: start the console with --allow-control"
            return {}, PlainTextResponse(refusal, status_code=403)
        origin = request.headers.get("origin")
        if origin is not None and origin != f"{request.url.scheme}://{request.url.netloc}":
            return {}, PlainTextResponse("cross-origin request refused", status_code=403)
        body = (await request.body()).decode("utf-8", "replace")
        form = dict(parse_qsl(body, keep_blank_values=True))
        cookie = request.cookies.get(CSRF_COOKIE, "")
        if not cookie or not hmac.compare_digest(cookie, form.get("csrf", "")):
            return form, PlainTextResponse("missing or wrong CSRF token", status_code=403)
        return form, None

    # ------------------------------------------------------------ live updates (SSE)

    async def stream(self, request: Request) -> Response:
        queue = self.live.subscribe()

        async def events() -> AsyncIterator[str]:
            closing = asyncio.ensure_future(self._closing.wait())
            try:
                yield "retry: 2000\n\n"
                while not self._closing.is_set():
                    getting = asyncio.ensure_future(queue.get())
                    done, _ = await asyncio.wait(
                        {getting, closing}, timeout=KEEPALIVE_SECONDS, return_when="FIRST_COMPLETED"
                    )
                    if getting not in done:
                        getting.cancel()
                        if not done:
                            yield ": keep-alive\n\n"
                        continue
                    await asyncio.sleep(COALESCE_SECONDS)
                    batch = {getting.result()}
                    while not queue.empty():
                        batch.add(queue.get_nowait())
                    yield _sse(batch)
            finally:
                closing.cancel()
                self.live.unsubscribe(queue)

        headers = {**SECURITY_HEADERS, "X-Accel-Buffering": "no"}
        return StreamingResponse(events(), media_type="text/event-stream", headers=headers)

    def close_streams(self, loop: asyncio.AbstractEventLoop) -> None:
        """End every live stream now (thread-safe): a server waits for open responses
        before it stops, and a browser would keep its stream open for ever."""
        loop.call_soon_threadsafe(self._closing.set)

    # ------------------------------------------------------------ the application

    def app(self) -> Starlette:
        routes = [
            Route("/", lambda _r: RedirectResponse("/executions", status_code=307)),
            Route("/healthz", lambda _r: PlainTextResponse("ok")),
            Route("/executions", self.executions),
            Route("/executions/{id:int}", self.execution),
            Route("/executions/{id:int}/graph.svg", self.graph_svg),
            Route("/executions/{id:int}/{verb:str}", self.control, methods=["POST"]),
            Route("/inquiries/{id:int}/respond", self.respond, methods=["POST"]),
            Route("/workflows", self.workflows),
            Route("/workflows/{ref:str}", self.workflow),
            Route("/workers", self.workers),
            Route("/automation", self.automation),
            Route("/rules/{ref:str}", self.rule),
            Route("/events", self.events),
            Route("/events/{id:int}", self.event),
            Route("/live", self.stream),
            Mount("/static", StaticFiles(packages=[("attune_pg.ui", "static")]), name="static"),
        ]
        return Starlette(routes=routes, lifespan=self.lifespan)


# ----------------------------------------------------------------- helpers


def _csrf_token(request: Request) -> str:
    """The browser's token, or a new one kept on the request so one response sets one."""
    token = request.cookies.get(CSRF_COOKIE) or request.scope.get("attune_csrf")
    if not token:
        token = secrets.token_urlsafe(32)
        request.scope["attune_csrf"] = token
    return str(token)


def _digest(text: str) -> str:
    return hashlib.sha1(text.encode(), usedforsecurity=False).hexdigest()[:16]


def _sse(batch: set[Change]) -> str:
    data = json.dumps(sorted([c.channel, c.payload] for c in batch))
    return f"event: change\ndata: {data}\n\n"


def _back(execution_id: int, **message: str) -> RedirectResponse:
    return RedirectResponse(f"/executions/{execution_id}?{urlencode(message)}", status_code=303)


def _message(exc: BaseException) -> str:
    if isinstance(exc, psycopg.Error):
        diag = getattr(exc, "diag", None)
        if diag is not None and diag.message_primary:
            return str(diag.message_primary)
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _int_param(params: Mapping[str, str], name: str) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        return int(raw)
    except ValueError:
        raise ParameterError(f"{name}: {raw!r} is not a number") from None


def _filters(params: Mapping[str, str]) -> tuple[store.ExecutionFilter, dict[str, str]]:
    form = {k: params.get(k, "") for k in ("status", "workflow", "since", "until", "q")}
    status = form["status"] or None
    if status is not None and status not in machine.WORKFLOW_STATES:
        raise ParameterError(f"status: {status!r} is not an execution status")
    filters = store.ExecutionFilter(
        status=status,
        workflow=form["workflow"] or None,
        since=_time(form["since"], "since"),
        until=_time(form["until"], "until"),
        text=form["q"].strip() or None,
    )
    return filters, form


def _time(raw: str, name: str) -> datetime | None:
    """An ISO date/time (as a datetime-local input sends it; UTC unless it says otherwise),
    or a relative age such as 15m, 2h, 7d."""
    raw = raw.strip()
    if not raw:
        return None
    units = {"m": "minutes", "h": "hours", "d": "days"}
    if raw[-1:] in units and raw[:-1].isdigit():
        return datetime.now(UTC) - timedelta(**{units[raw[-1]]: int(raw[:-1])})
    try:
        value = datetime.fromisoformat(raw)
    except ValueError:
        raise ParameterError(f"{name}: {raw!r} is not a date, a time or an age like 2h") from None
    return value if value.tzinfo else value.replace(tzinfo=UTC)
