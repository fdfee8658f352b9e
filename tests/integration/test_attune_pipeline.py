"""Attune's deployment pipeline (docs/examples/complete-workflow.yaml, as Attune wrote it,
in packs/examples with stand-in actions) through a real worker: every path the issue
names. The stand-ins succeed, except that an app named `*-bad-canary` fails its canary."""

from __future__ import annotations

import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import conninfo, sql

from attune_pg.errors import SpecError
from attune_pg.spec.loader import load_workflow_file
from tests.helpers import start, tasks, wait_done

REF = "examples.complete_deployment_workflow"
GROUP = "deployment-approvers"
PRISTINE = Path(__file__).parents[1] / "fixtures/attune/docs/examples/complete-workflow.yaml"

PREFIX = ["start_workflow", "validate_inputs", "check_environment_type"]
DEPLOY = [
    "create_deployment_record", "parallel_pre_deployment_checks", "build_and_test",
    "push_container_image", "check_canary_enabled",
]  # fmt: skip
FINISH = [
    "run_smoke_tests", "verify_metrics", "update_load_balancer", "finalize_deployment",
    "post_deployment_tasks", "notify_deployment_success",
]  # fmt: skip
# Sub-tasks of the parallel blocks start together, in no particular row order.
BLOCKS = {
    "check_docker_registry": "parallel_pre_deployment_checks",
    "check_kubernetes_clusters": "parallel_pre_deployment_checks",
    "check_database_migrations": "parallel_pre_deployment_checks",
    "verify_secrets": "parallel_pre_deployment_checks",
    "update_service_catalog": "post_deployment_tasks",
    "trigger_integration_tests": "post_deployment_tasks",
    "update_documentation": "post_deployment_tasks",
}


@pytest.fixture
def pipeline(conn: psycopg.Connection, register: Any, worker_thread: Any) -> psycopg.Connection:
    register("examples")  # with its bundled stand-in packs
    worker_thread(concurrency=8)
    return conn


@pytest.fixture
def approvers(server_dsn: str, dsn: str) -> Iterator[Callable[[bool], str]]:
    """The group role `deployment-approvers` and `user(member)`: a login (submitter) in
    the group or not, as a DSN. All dropped at teardown."""
    created: list[str] = []
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        admin.execute(
            'DO $$ BEGIN CREATE ROLE "deployment-approvers" NOLOGIN;'
            " EXCEPTION WHEN duplicate_object THEN NULL; END $$"
        )

    def user(member: bool) -> str:
        name = f"u_{'approver' if member else 'other'}_{secrets.token_hex(4)}"
        password = secrets.token_hex(8)
        roles = [GROUP, "attune_submitter"] if member else ["attune_submitter"]
        with psycopg.connect(server_dsn, autocommit=True) as admin:
            admin.execute(
                sql.SQL("CREATE ROLE {} LOGIN PASSWORD {} IN ROLE {}").format(
                    sql.Identifier(name),
                    sql.Literal(password),
                    sql.SQL(", ").join(sql.Identifier(r) for r in roles),
                )
            )
        created.append(name)
        return conninfo.make_conninfo(dsn, user=name, password=password)

    yield user
    with psycopg.connect(server_dsn, autocommit=True) as admin:
        for name in created:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s",
                (name,),
            )
            admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(name)))
        admin.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(GROUP)))


def ran(conn: psycopg.Connection, execution_id: int) -> list[str]:
    """Task names in the order they were dispatched (first row of each), items once,
    parallel blocks as one step (after checking all their sub-tasks succeeded)."""
    seen: list[str] = []
    for row in tasks(conn, execution_id):
        name = BLOCKS.get(row["task_name"], row["task_name"])
        if row["task_name"] in BLOCKS:
            assert row["status"] == "succeeded", row
        if name not in seen:
            seen.append(name)
    return seen


def result_of(conn: psycopg.Connection, execution_id: int, name: str) -> Any:
    row = conn.execute(
        "SELECT result FROM attune.task_state WHERE workflow_execution_id = %s AND task_name = %s"
        " ORDER BY iteration DESC LIMIT 1",
        (execution_id, name),
    ).fetchone()
    assert row is not None, name
    return row[0]


def inquiry_of(conn: psycopg.Connection, execution_id: int) -> tuple[int, str, str]:
    deadline = time.monotonic() + 30
    while True:
        row = conn.execute(
            "SELECT id, assigned_to, prompt FROM attune.inquiry WHERE workflow_execution_id = %s",
            (execution_id,),
        ).fetchone()
        if row is not None:
            return int(row[0]), str(row[1]), str(row[2])
        assert time.monotonic() < deadline, "no inquiry was opened"
        time.sleep(0.05)


def test_attune_file_loads_unchanged_but_for_its_undefined_task() -> None:
    # The pristine upstream file names `handle_canary_failure` without defining it:
    # that, and only that, stops it (everything else is accepted as written).
    with pytest.raises(SpecError) as info:
        load_workflow_file(PRISTINE)  # outside a pack: its ref: key names it
    assert "transition target 'handle_canary_failure' does not exist" in str(info.value)
    shipped = (
        Path(__file__).parents[2] / "packs/examples/workflows/complete_deployment_workflow.yaml"
    )
    original = PRISTINE.read_text(encoding="utf-8")
    ours = shipped.read_text(encoding="utf-8")
    # Ours is Attune's text with one task added before output_map.
    head, tail = original.split("# Workflow output mapping\n")
    assert ours.startswith(head) and ours.endswith("# Workflow output mapping\n" + tail)
    assert "- name: handle_canary_failure" in ours[len(head) :]
    assert len(load_workflow_file(shipped, pack="examples").all_tasks()) == 54


def test_dev_deploy(pipeline: psycopg.Connection) -> None:
    conn = pipeline
    params = {"app_name": "shop", "version": "1.2.3", "regions": ["us-east-1", "eu-west-1"]}
    execution_id = start(conn, REF, params)
    row = wait_done(conn, execution_id, timeout=60)
    assert row["status"] == "succeeded", row["error"]
    assert ran(conn, execution_id) == [
        *PREFIX, *DEPLOY, "deploy_to_all_regions", "parallel_health_checks", *FINISH,
    ]  # fmt: skip
    output = row["output"]
    assert output["deployment_id"] == "deploy-shop-1.2.3-dev"
    assert output["status"] == "success"  # `rollback_initiated ? 'rolled_back' : 'success'`
    assert output["deployed_version"] == "1.2.3"
    assert output["deployment_urls"] == [
        "https://shop.us-east-1.example.test/health",
        "https://shop.eu-west-1.example.test/health",
    ]  # map(attribute='health_url') | list over the with-items results
    assert isinstance(output["duration_seconds"], int) and output["duration_seconds"] >= 0
    # batch_size: 5 -> one item holding both URLs
    checks = [t for t in tasks(conn, execution_id) if t["task_name"] == "parallel_health_checks"]
    assert [t["input"]["url"] for t in checks] == [output["deployment_urls"]]
    # system.identity.login: the login that started it (this test's session user)
    (login,) = conn.execute("SELECT session_user").fetchone()  # type: ignore[misc]
    assert result_of(conn, execution_id, "create_deployment_record")["initiated_by"] == login
    message = result_of(conn, execution_id, "notify_deployment_success")["message"]
    assert "✅ Deployment Successful" in message
    assert "Regions: us-east-1, eu-west-1" in message  # join(', ')
    finalize = result_of(conn, execution_id, "finalize_deployment")
    assert isinstance(finalize["metadata"]["duration"], int)  # timestamp - start_time


def test_production_approval_granted_by_a_member_of_the_group(
    pipeline: psycopg.Connection, approvers: Callable[[bool], str]
) -> None:
    conn = pipeline
    params = {"app_name": "shop", "version": "2.0.0", "environment": "production",
              "regions": ["us-east-1", "eu-west-1"]}  # fmt: skip
    execution_id = start(conn, REF, params)
    inquiry, assigned_to, prompt = inquiry_of(conn, execution_id)
    assert assigned_to == GROUP
    assert "Regions: us-east-1, eu-west-1" in prompt
    member_dsn = approvers(True)
    member_name = str(conninfo.conninfo_to_dict(member_dsn)["user"])
    # A login outside the group is refused, and nothing changes; naming a member as
    # `who` does not help (membership is the login's).
    with psycopg.connect(approvers(False), autocommit=True) as other:
        with pytest.raises(psycopg.errors.InsufficientPrivilege) as info:
            other.execute("SELECT attune.respond_inquiry(%s, '{\"approved\": true}')", (inquiry,))
        assert f"is assigned to {GROUP}" in str(info.value)
        assert f"is not a member of {GROUP}" in str(info.value)
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="may not answer as"):
            other.execute(
                "SELECT attune.respond_inquiry(%s, '{\"approved\": true}', %s)",
                (inquiry, member_name),
            )
    # `who` that is no role at all cannot be a member either.
    with pytest.raises(psycopg.errors.InsufficientPrivilege, match="is not a PostgreSQL role"):
        conn.execute(
            "SELECT attune.respond_inquiry(%s, '{\"approved\": true}', 'nobody-at-all')",
            (inquiry,),
        )
    conn.rollback()
    # A NULL `who` does not skip the check (as migration 0006 has it).
    with pytest.raises(psycopg.errors.NullValueNotAllowed, match="who must name"):
        conn.execute("SELECT attune.respond_inquiry(%s, '{}', NULL)", (inquiry,))
    conn.rollback()
    (status,) = conn.execute(
        "SELECT status FROM attune.inquiry WHERE id = %s", (inquiry,)
    ).fetchone()  # type: ignore[misc]
    assert status == "pending"
    # Any member answers.
    with psycopg.connect(member_dsn, autocommit=True) as member:
        member.execute("SELECT attune.respond_inquiry(%s, '{\"approved\": true}')", (inquiry,))
        (member_login,) = member.execute("SELECT session_user").fetchone()  # type: ignore[misc]
    row = wait_done(conn, execution_id, timeout=60)
    assert row["status"] == "succeeded", row["error"]
    assert ran(conn, execution_id) == [
        *PREFIX, "require_production_approval", *DEPLOY, "deploy_to_all_regions",
        "parallel_health_checks", *FINISH,
    ]  # fmt: skip
    approval = result_of(conn, execution_id, "require_production_approval")
    assert approval["approved"] is True and approval["responded_by"] == member_login
    assert row["output"]["status"] == "success"
    assert row["output"]["deployment_id"] == "deploy-shop-2.0.0-production"


def test_production_approval_denied(
    pipeline: psycopg.Connection, approvers: Callable[[bool], str]
) -> None:
    conn = pipeline
    params = {"app_name": "shop", "version": "2.0.1", "environment": "production"}
    execution_id = start(conn, REF, params)
    inquiry, _, _ = inquiry_of(conn, execution_id)
    with psycopg.connect(approvers(True), autocommit=True) as member:
        member.execute("SELECT attune.respond_inquiry(%s, '{\"approved\": false}')", (inquiry,))
    row = wait_done(conn, execution_id, timeout=60)
    # publish approval_granted, then the decision's default: cancel_deployment.
    assert ran(conn, execution_id) == [
        *PREFIX, "require_production_approval", "cancel_deployment",
        "notify_deployment_cancelled",
    ]  # fmt: skip
    cancel = result_of(conn, execution_id, "cancel_deployment")
    assert cancel == {"deployment_id": None, "status": "cancelled",
                      "metadata": {"reason": "approval_denied"}}  # fmt: skip
    # Attune's output schema wants a string deployment_id, and a denied deployment
    # never created one: the output does not validate, so the execution fails.
    assert row["status"] == "failed"
    assert row["error"]["type"] == "OutputInvalid"
    assert "deployment_id" in row["error"]["message"]
    assert row["output"]["deployment_id"] is None


def test_canary_passed(pipeline: psycopg.Connection) -> None:
    conn = pipeline
    params = {"app_name": "shop", "version": "3.0.0", "enable_canary": True,
              "regions": ["us-east-1", "eu-west-1", "ap-south-1"]}  # fmt: skip
    execution_id = start(conn, REF, params)
    row = wait_done(conn, execution_id, timeout=60)
    assert row["status"] == "succeeded", row["error"]
    # parallel_health_checks iterates vars.health_check_urls, which only the
    # all-regions path publishes: an empty with-items, done at once (no rows).
    assert ran(conn, execution_id) == [
        *PREFIX, *DEPLOY, "deploy_canary", "monitor_canary", "promote_canary",
        "deploy_to_remaining_regions", *FINISH,
    ]  # fmt: skip
    canary = [t for t in tasks(conn, execution_id) if t["task_name"] == "deploy_canary"]
    assert canary[0]["input"]["region"] == "us-east-1"  # regions | first
    rest = sorted(
        (t for t in tasks(conn, execution_id) if t["task_name"] == "deploy_to_remaining_regions"),
        key=lambda t: t["item_index"],
    )
    assert [t["input"]["region"] for t in rest] == ["eu-west-1", "ap-south-1"]  # slice(start=1)
    assert row["output"]["status"] == "success"
    assert row["output"]["deployment_urls"] == []


def test_canary_failed(pipeline: psycopg.Connection) -> None:
    conn = pipeline
    params = {"app_name": "shop-bad-canary", "version": "3.0.1", "enable_canary": True}
    execution_id = start(conn, REF, params)
    row = wait_done(conn, execution_id, timeout=60)
    assert row["status"] == "succeeded", row["error"]
    assert ran(conn, execution_id) == [
        *PREFIX, *DEPLOY, "deploy_canary", "monitor_canary", "rollback_canary",
        "notify_canary_failed",
    ]  # fmt: skip
    assert result_of(conn, execution_id, "monitor_canary")["success"] is False
    assert row["output"]["status"] == "rolled_back"  # rollback_initiated ? ... : ...
    assert row["output"]["deployment_id"] == "deploy-shop-bad-canary-3.0.1-dev"
    message = result_of(conn, execution_id, "notify_canary_failed")["message"]
    assert "Canary has been rolled back" in message


def test_simple_workflow_as_attune_wrote_it(pipeline: psycopg.Connection) -> None:
    conn = pipeline
    execution_id = start(
        conn, "examples.simple_sequential_workflow", {"message": "hi", "uppercase": True}
    )
    row = wait_done(conn, execution_id)
    assert row["status"] == "succeeded", row["error"]
    assert row["output"] == {
        "original": "hi",
        "processed": "HI",
        "final": "Workflow complete. Result: HI",
    }


def test_identity_login_is_the_inserting_login_and_children_inherit_it(
    pipeline: psycopg.Connection,
) -> None:
    conn = pipeline
    (login,) = conn.execute("SELECT session_user").fetchone()  # type: ignore[misc]
    row = conn.execute(
        "INSERT INTO attune.workflow_execution (workflow_ref, parameters, requested_by)"
        " VALUES ('examples.nested', '{}', 'someone-else') RETURNING id, started_by"
    ).fetchone()
    assert row is not None
    parent, started_by = row
    assert started_by == login  # requested_by is what the caller says; started_by is not
    conn.commit()
    # Even a caller allowed to write the column cannot claim another login.
    claimed = conn.execute(
        "INSERT INTO attune.workflow_execution (workflow_ref, parameters, started_by)"
        " VALUES ('examples.child', '{\"name\": \"x\"}', 'mallory') RETURNING id, started_by"
    ).fetchone()
    assert claimed is not None and claimed[1] == login
    conn.commit()
    assert wait_done(conn, claimed[0], timeout=60)["status"] == "succeeded"
    assert wait_done(conn, parent, timeout=60)["status"] == "succeeded"
    children = conn.execute(
        "SELECT started_by FROM attune.workflow_execution WHERE root_id = %s AND id <> %s",
        (parent, parent),
    ).fetchall()
    assert children and all(c == (login,) for c in children)
