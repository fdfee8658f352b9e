"""The web console over HTTP, served by a real uvicorn against a real PostgreSQL."""

from __future__ import annotations

import html
import json
import re
import time
import urllib.parse
import urllib.request
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator

import psycopg
import pytest
from psycopg import conninfo

from attune_pg.store import queries
from tests.console.server import Client, console
from tests.helpers import start, wait_done

pytestmark = pytest.mark.console

CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def _ids(body: str) -> list[int]:
    return [int(x) for x in re.findall(r'<tr data-id="(\d+)"', body)]


def _count(body: str, status: str) -> str:
    match = re.search(rf'data-count="{status}">([^<]+)<', body)
    assert match, f"no count for {status}"
    return match.group(1)


@pytest.fixture
def finished(
    conn: psycopg.Connection,
    register: Callable[[str], None],
    worker_thread: Callable[..., object],
) -> dict[str, list[int]]:
    """5 succeeded and 1 failed execution, then the worker stops; 120 stay requested."""
    register("examples")
    register("console")
    worker = worker_thread()
    done = [start(conn, "examples.hello_join", {"name": f"n{i}"}) for i in range(5)]
    failed = [start(conn, "console.fails")]
    for execution_id in done + failed:
        wait_done(conn, execution_id)
    worker.request_stop()  # type: ignore[attr-defined]
    time.sleep(0.5)
    return {"succeeded": done, "failed": failed}


def test_list_counts_filters_and_keyset_pages(
    conn: psycopg.Connection, dsn: str, finished: dict[str, list[int]]
) -> None:
    # The worker has stopped: these stay requested.
    conn.execute(
        "INSERT INTO attune.workflow_execution (workflow_ref, parameters)"
        " SELECT 'examples.hello_join', jsonb_build_object('name', 'r' || i)"
        " FROM generate_series(1, 120) i"
    )
    with console(dsn) as base:
        client = Client(base)
        first = client.get("/executions")
        assert first.status == 200
        assert _count(first.body, "requested") == "120"
        assert _count(first.body, "succeeded") == "5"
        assert _count(first.body, "failed") == "1"
        page1 = _ids(first.body)
        assert len(page1) == 50 and page1 == sorted(page1, reverse=True)
        older = re.search(r'href="/executions\?before=(\d+)"', first.body)
        assert older and "← newer" not in first.body
        second = client.get(f"/executions?before={older.group(1)}")
        page2 = _ids(second.body)
        assert len(page2) == 50 and max(page2) < min(page1)
        third_link = re.search(r'href="/executions\?before=(\d+)"', second.body)
        assert third_link
        third = client.get(f"/executions?before={third_link.group(1)}")
        page3 = _ids(third.body)
        assert len(page3) == 126 - 100 and "older →" not in third.body
        newer = re.search(r'href="/executions\?after=(\d+)"', second.body)
        assert newer
        assert _ids(client.get(f"/executions?after={newer.group(1)}").body) == page1

        only_ok = _ids(client.get("/executions?status=succeeded").body)
        assert sorted(only_ok) == sorted(finished["succeeded"])
        failed_id = finished["failed"][0]
        assert _ids(client.get("/executions?workflow=console.fails").body) == [failed_id]
        assert _ids(client.get(f"/executions?q=%23{failed_id}").body) == [failed_id]
        assert _ids(client.get("/executions?q=exit+code").body) == [failed_id]
        assert len(_ids(client.get("/executions?since=1h").body)) == 50
        assert _ids(client.get("/executions?until=2000-01-01").body) == []
        bad = client.get("/executions?status=bogus")
        assert bad.status == 400 and "is not an execution status" in bad.body
        bad_time = client.get("/executions?since=yesterday")
        assert bad_time.status == 400 and "since" in bad_time.body
        rows = client.get("/executions?part=rows&status=failed")
        assert rows.status == 200 and "<html" not in rows.body and _ids(rows.body) == [failed_id]


def test_execution_page_graph_tasks_vars_audit(
    conn: psycopg.Connection, dsn: str, finished: dict[str, list[int]]
) -> None:
    execution_id = finished["succeeded"][0]
    failed_id = finished["failed"][0]
    with console(dsn) as base:
        client = Client(base)
        page = client.get(f"/executions/{execution_id}")
        assert page.status == 200
        assert 'data-status="succeeded"' in page.body
        svg = re.search(r"<svg[^>]*class=\"graph\".*?</svg>", page.body, re.S)
        assert svg, "no graph"
        graph = ET.fromstring(svg.group(0))
        tasks = {
            g.get("data-task"): g.get("data-status")
            for g in graph.iter("{http://www.w3.org/2000/svg}g")
            if g.get("class") == "node"
        }
        ran = {
            name: status
            for name, status in conn.execute(
                "SELECT DISTINCT ON (task_name) task_name, status FROM attune.task_execution"
                " WHERE workflow_execution_id = %s ORDER BY task_name, id DESC",
                (execution_id,),
            ).fetchall()
        }
        assert len(ran) >= 3
        assert {name: tasks.get(name) for name in ran} == ran
        assert "greet" in tasks and None in tasks.values()  # a task that did not run: no colour
        assert '<svg xmlns="http://www.w3.org/2000/svg" class="timeline"' in page.body
        assert "greeting" in page.body  # a published variable, in vars
        assert page.body.count('<tr data-task="') >= 3
        assert "Audit" in page.body and "requested" in page.body
        assert "Pause" not in page.body and "Cancel</button>" not in page.body  # read-only

        regions = json.loads(client.get(f"/executions/{execution_id}?part=regions").body)
        assert set(regions) == {"facts", "controls", "live"}
        assert all("<html" not in r["html"] and len(r["digest"]) == 16 for r in regions.values())
        assert f'data-digest="{regions["live"]["digest"]}"' in page.body  # same render
        alone = client.get(f"/executions/{execution_id}/graph.svg")
        assert alone.status == 200 and alone.headers["content-type"].startswith("image/svg+xml")
        ET.fromstring(alone.body)
        failed = client.get(f"/executions/{failed_id}")
        assert "exit code 3" in failed.body
        assert client.get("/executions/999999").status == 404
        workflows = client.get("/workflows")
        assert "examples.hello_join" in workflows.body
        one = client.get("/workflows/examples.hello_join")
        assert one.status == 200 and "count_letters" in one.body and "<svg" in one.body
        workers = client.get("/workers")
        assert workers.status == 200 and "Queue depth" in workers.body
        assert "content-security-policy" in workers.headers


def test_control_needs_allow_control_csrf_and_same_origin(
    conn: psycopg.Connection,
    dsn: str,
    register: Callable[[str], None],
    worker_thread: Callable[..., object],
) -> None:
    register("console")
    worker_thread()
    execution_id = start(conn, "console.slow")
    deadline = time.monotonic() + 20
    while conn.execute(
        "SELECT count(*) FROM attune.task_execution WHERE workflow_execution_id = %s"
        " AND task_name = 'nap' AND status = 'running'",
        (execution_id,),
    ).fetchone() != (1,):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    path = f"/executions/{execution_id}/cancel"
    with console(dsn) as base:
        client = Client(base)
        client.get(f"/executions/{execution_id}")
        refused = client.post(path, {"csrf": client.cookie("attune_csrf") or "", "policy": "x"})
        assert refused.status == 403 and "--allow-control" in refused.body
    with console(dsn, allow_control=True) as base:
        client = Client(base)
        page = client.get(f"/executions/{execution_id}")
        assert 'id="btn-cancel"' in page.body and 'id="btn-pause"' in page.body
        token = CSRF.search(page.body)
        assert token and token.group(1) == client.cookie("attune_csrf")
        assert client.post(path, {"policy": "cancel_running"}).status == 403
        assert client.post(path, {"csrf": "forged", "policy": "cancel_running"}).status == 403
        other = client.post(
            path,
            {"csrf": token.group(1), "policy": "cancel_running"},
            headers={"Origin": "http://evil.example"},
        )
        assert other.status == 403 and "cross-origin" in other.body
        assert conn.execute(
            "SELECT status FROM attune.workflow_execution WHERE id = %s", (execution_id,)
        ).fetchone() == ("running",)
        bad_policy = client.post(path, {"csrf": token.group(1), "policy": "sometime"})
        assert bad_policy.status == 303 and "error=" in bad_policy.headers["location"]
        done = client.post(path, {"csrf": token.group(1), "policy": "cancel_running"})
        assert done.status == 303 and "notice=cancel" in done.headers["location"]
        assert wait_done(conn, execution_id)["status"] == "canceled"
        after = client.get(done.headers["location"].removeprefix(base))
        assert "cancel:" in after.body and 'id="btn-cancel"' not in after.body


def test_inquiry_form_is_typed_and_validated(
    conn: psycopg.Connection,
    dsn: str,
    register: Callable[[str], None],
    worker_thread: Callable[..., object],
) -> None:
    register("console")
    worker_thread()
    execution_id = start(conn, "console.ask_count")
    deadline = time.monotonic() + 20
    while conn.execute(
        "SELECT count(*) FROM attune.inquiry WHERE workflow_execution_id = %s", (execution_id,)
    ).fetchone() != (1,):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    (inquiry_id,) = conn.execute(
        "SELECT id FROM attune.inquiry WHERE workflow_execution_id = %s", (execution_id,)
    ).fetchone() or (0,)
    with console(dsn, allow_control=True) as base:
        client = Client(base)
        page = client.get(f"/executions/{execution_id}")
        assert "How many copies?" in page.body
        assert 'type="number" step="1" name="count"' in page.body
        assert 'type="checkbox" name="urgent"' in page.body
        token = CSRF.search(page.body)
        assert token
        form = {"csrf": token.group(1), "execution": str(execution_id)}
        path = f"/inquiries/{inquiry_id}/respond"
        not_int = client.post(path, {**form, "count": "many"})
        assert not_int.status == 303 and "is+not+an+integer" in not_int.headers["location"]
        too_small = client.post(path, {**form, "count": "0"})
        assert "minimum" in urllib.parse.unquote_plus(too_small.headers["location"])
        assert conn.execute(
            "SELECT status FROM attune.inquiry WHERE id = %s", (inquiry_id,)
        ).fetchone() == ("pending",)
        answered = client.post(path, {**form, "count": "3", "note": "rush", "urgent": "on"})
        assert answered.status == 303 and "notice=" in answered.headers["location"]
    row = wait_done(conn, execution_id)
    assert row["status"] == "succeeded" and row["output"] == {"copies": 3}
    response = conn.execute(
        "SELECT response, responded_by FROM attune.inquiry WHERE id = %s", (inquiry_id,)
    ).fetchone()
    assert response is not None
    assert response[0] == {"count": 3, "note": "rush", "urgent": True}


@pytest.fixture
def reader_dsn(conn: psycopg.Connection, dsn: str) -> Iterator[str]:
    """A login that is only in attune_reader."""
    login = f"console_reader_{uuid.uuid4().hex[:8]}"
    conn.execute(f"CREATE ROLE {login} LOGIN PASSWORD 'pw' IN ROLE attune_reader")
    params = conninfo.conninfo_to_dict(dsn)
    params.update(user=login, password="pw")
    try:
        yield conninfo.make_conninfo(**params)  # type: ignore[arg-type]
    finally:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", (login,)
        )
        conn.execute(f"DROP OWNED BY {login}")
        conn.execute(f"DROP ROLE {login}")


def test_reader_role_sees_everything_and_cannot_control(
    conn: psycopg.Connection, reader_dsn: str, finished: dict[str, list[int]]
) -> None:
    execution_id = finished["succeeded"][0]
    with console(reader_dsn, allow_control=True) as base:
        client = Client(base)
        for path in (
            "/executions",
            f"/executions/{execution_id}",
            f"/executions/{execution_id}/graph.svg",
            "/workflows",
            "/workflows/examples.hello_join",
            "/workers",
        ):
            page = client.get(path)
            assert page.status == 200, (path, page.body[:300])
        page = client.get(f"/executions/{finished['failed'][0]}")
        assert "may not control executions" in page.body and 'id="btn-retry"' not in page.body
        # Posting anyway (the token is the page's cookie): the database refuses.
        token = client.cookie("attune_csrf") or ""
        retry = client.post(f"/executions/{finished['failed'][0]}/retry", {"csrf": token})
        location = urllib.parse.unquote_plus(retry.headers["location"])
        assert retry.status == 303 and "permission denied" in location


def test_live_stream_reports_changes(
    conn: psycopg.Connection, dsn: str, register: Callable[[str], None]
) -> None:
    register("examples")
    with console(dsn) as base, urllib.request.urlopen(base + "/live", timeout=10) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        assert stream.readline().startswith(b"retry:")
        execution_id = start(conn, "examples.hello_join")
        deadline = time.monotonic() + 10
        seen = b""
        while f'"{execution_id}:requested"'.encode() not in seen:
            assert time.monotonic() < deadline, seen
            seen += stream.readline()
        assert b"event: change" in seen


def test_page_queries_walk_indexes_not_sorts(conn: psycopg.Connection) -> None:
    """The list's queries stay flat with history: with seq scans and sorts priced out, the
    planner still finds an index-ordered plan (so none of them needs a full sort)."""
    conn.execute("SET enable_seqscan = off")
    conn.execute("SET enable_sort = off")
    params = {
        "status": "succeeded", "workflow": None, "since": None, "until": None, "text": None,
        "id_text": None, "before": 1000, "after": None, "limit": 51, "window": 10000,
    }  # fmt: skip
    for name, index in (
        ("console_execution_page_older", "workflow_execution_pkey"),
        ("console_execution_counts_live", "workflow_execution_live"),
        ("console_execution_counts_recent", "workflow_execution_pkey"),
    ):
        plan = "\n".join(
            row[0]
            for row in conn.execute(
                "EXPLAIN " + queries.Q[name],  # type: ignore[operator]
                params,
            ).fetchall()
        )
        assert index in plan, (name, plan)
        assert "Sort  " not in plan.replace("Sort Key", ""), (name, plan)


def test_automation_pages_rules_timers_events(
    conn: psycopg.Connection,
    reader_dsn: str,
    register: Callable[[str], None],
    worker_thread: Callable[..., object],
) -> None:
    """Rules, triggers, timers, policies and events, as attune_reader (views only)."""
    register("examples")
    (event_id,) = conn.execute(
        "SELECT attune.emit_event('examples.order_placed',"
        ' \'{"order_id": 7, "customer": "ada", "total": 250, "tags": ["vip"]}\')'
    ).fetchone() or (None,)
    worker_thread()  # matches the event: big_orders fires
    deadline = time.monotonic() + 20
    while not conn.execute(
        "SELECT workflow_execution_id FROM attune.enforcement WHERE event_id = %s", (event_id,)
    ).fetchone():
        assert time.monotonic() < deadline, "the event was not matched"
        time.sleep(0.05)
    (execution_id,) = conn.execute(
        "SELECT workflow_execution_id FROM attune.enforcement WHERE event_id = %s", (event_id,)
    ).fetchone() or (None,)
    with console(reader_dsn) as base:
        client = Client(base)
        page = client.get("/automation")
        assert page.status == 200
        assert 'data-rule="examples.big_orders"' in page.body
        assert 'data-timer="examples.nightly_report"' in page.body  # the nightly cron
        assert "examples.order_placed" in page.body and "core.crontimer" in page.body
        assert "examples.fulfil_order.per_customer" in page.body  # a policy
        rule = client.get("/rules/examples.big_orders")
        assert rule.status == 200 and "event.payload.total" in rule.body
        events = client.get("/events")
        assert f'data-event="{event_id}"' in events.body and "ada" in events.body
        only = client.get("/events?trigger=core.intervaltimer")
        assert f'data-event="{event_id}"' not in only.body
        one = client.get(f"/events/{event_id}")
        assert one.status == 200 and '"customer": "ada"' in html.unescape(one.body)
        assert f'href="/executions/{execution_id}"' in one.body
        assert f'href="/events/{event_id}"' in client.get("/rules/examples.big_orders").body
        assert client.get("/events/999999").status == 404
        assert client.get("/rules/nope.nope").status == 404
