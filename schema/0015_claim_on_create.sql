-- Task rows created already claimed (issue 10, docs/scaling.md lever 1): a transaction
-- that creates task rows due now, run by a worker with free slots, inserts them
-- `running` under that worker's lease instead of `scheduled`, and the worker runs them
-- once it commits. No claim statement, no `scheduled` row version, no dead entry in the
-- claimable index, one audit row fewer. Only when no claimable row of the same or a
-- better priority waits (the queue head is served first), never for a row a concurrency
-- policy counts (store/sql/apply.sql: task_insert). A row created running that its
-- worker never finishes is reaped like any claimed row: its lease expires. Its `claims`
-- (claims from the queue, scheduled -> running in the audit log) start at 0.
--
-- The guard below is generated from machine.py (INITIAL["task"] gained `running`):
-- tests/integration/test_machine_sql.py checks it against `sqlgen.replaced_guard`.

-- @generated replaced_guard task
CREATE OR REPLACE FUNCTION attune.guard_task_execution() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        IF NEW.status <> ALL ('{pending,scheduled,running}'::text[]) THEN
            RAISE EXCEPTION 'a task_execution row cannot be created with status %', quote_literal(NEW.status)
                USING ERRCODE = 'check_violation';
        END IF;
        IF NEW.status = 'running' AND (NEW.lease_owner IS NULL OR NEW.lease_expires_at IS NULL) THEN
            RAISE EXCEPTION 'a task_execution row created running needs a lease (lease_owner, lease_expires_at)'
                USING ERRCODE = 'check_violation';
        END IF;
    ELSIF (OLD.status || '>' || NEW.status) <> ALL ('{pending>canceled,pending>failed,pending>scheduled,pending>skipped,running>canceled,running>failed,running>scheduled,running>succeeded,running>timed_out,running>waiting,scheduled>canceled,scheduled>failed,scheduled>pending,scheduled>running,waiting>canceled,waiting>failed,waiting>succeeded,waiting>timed_out}'::text[]) THEN
        RAISE EXCEPTION 'illegal task_execution status change % -> %', OLD.status, NEW.status
            USING ERRCODE = 'check_violation',
                  DETAIL = 'the legal moves are in attune.status_transition';
    END IF;
    IF NEW.status IN ('succeeded', 'failed', 'canceled', 'timed_out', 'skipped') THEN
        NEW.finished_at := coalesce(NEW.finished_at, now());
    END IF;
    NEW.updated_at := now();
    INSERT INTO attune.execution_event
        (workflow_execution_id, task_execution_id, task_name, kind, from_status, to_status, data)
    VALUES (NEW.workflow_execution_id, NEW.id, NEW.task_name, 'task_status',
            CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END, NEW.status,
            jsonb_build_object('attempt', NEW.attempt, 'iteration', NEW.iteration,
                               'item_index', NEW.item_index, 'worker', NEW.lease_owner));
    IF NEW.status = 'scheduled' THEN
        PERFORM pg_notify('attune_work', '');
    END IF;
    RETURN NEW;
END $$;
INSERT INTO attune.status_initial (entity, status) VALUES
    ('task', 'pending'),
    ('task', 'scheduled'),
    ('task', 'running')
    ON CONFLICT DO NOTHING;
-- @end
-- CREATE OR REPLACE resets a function's attributes: the guard writes the audit log with
-- the owner's rights, as every trigger function of the schema (schema 0005).
ALTER FUNCTION attune.guard_task_execution()
    SECURITY DEFINER SET search_path = pg_catalog, attune, pg_temp;
