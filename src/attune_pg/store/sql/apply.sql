-- name: task_insert
-- New task rows of many executions. fair_key: the key of the next claimable row plus the
-- row's rank among the rows its root execution creates in this transaction, so claims
-- interleave executions instead of serving a whole fan-out first (schema 0006).
-- policy_ref: the action's enabled concurrency policy, if any (schema 0009), so the slot
-- trigger fires only for those rows (its WHEN clause); rows go in in command order, so
-- slots are taken in the order the conductor decided.
-- Claimed as they are created (schema 0015): the first `slots` rows that are due now,
-- counted by no policy, go in `running` under the lease of worker `me`, unless a
-- claimable row of the same or a better priority waits (the queue's head is served
-- first: that row is older, or ranks ahead). Returns the rows so taken, as task_claim
-- does, for the worker to run once the transaction commits. `claims` counts the claims
-- from the queue (scheduled -> running, as the audit log shows them): 0 for these.
WITH head AS MATERIALIZED (
    SELECT h.priority, h.fair_key FROM attune.task_execution h
     WHERE h.status = 'scheduled' AND h.run_at <= now()
     ORDER BY h.priority, h.fair_key, h.id LIMIT 1
), rows AS (
    SELECT v.*, e.priority, p.ref AS policy_ref,
           v.status = 'scheduled' AND v.delay <= 0 AND p.ref IS NULL
           AND NOT EXISTS (SELECT 1 FROM head WHERE head.priority <= e.priority) AS takeable
      FROM jsonb_to_recordset(%(rows)s::jsonb)
           AS v(n int, e bigint, task_name text, iteration int, item_index int, attempt int,
                action_ref text, status text, input jsonb, delay float8, timeout float8,
                held bool, rank bigint)
      JOIN attune.workflow_execution e ON e.id = v.e
      LEFT JOIN attune.policy p ON p.resource_ref = v.action_ref AND p.enabled
), ranked AS (
    SELECT r.*, r.takeable AND count(*) FILTER (WHERE r.takeable) OVER (ORDER BY r.n)
                               <= %(slots)s::int AS taken
      FROM rows r
), inserted AS (
    INSERT INTO attune.task_execution (workflow_execution_id, task_name, iteration,
           item_index, attempt, action_ref, status, input, priority, run_at, timeout, held,
           fair_key, policy_ref, lease_owner, lease_expires_at, started_at)
    SELECT r.e, r.task_name, r.iteration, r.item_index, r.attempt, r.action_ref,
           CASE WHEN r.taken THEN 'running' ELSE r.status END,
           coalesce(r.input, 'null'), r.priority, now() + make_interval(secs => r.delay), r.timeout, r.held,
           coalesce((SELECT head.fair_key FROM head), 0) + r.rank, r.policy_ref,
           CASE WHEN r.taken THEN %(me)s::text END,
           CASE WHEN r.taken THEN now() + make_interval(secs => %(lease)s::float8) END,
           CASE WHEN r.taken THEN now() END
      FROM ranked r
     ORDER BY r.n
    RETURNING id, workflow_execution_id, task_name, iteration, item_index, attempt,
              action_ref, input, timeout, run_at, status
)
SELECT i.id, i.workflow_execution_id, i.task_name, i.iteration, i.item_index, i.attempt,
       i.action_ref, i.input, i.timeout, extract(epoch FROM i.run_at)::float8 AS ready_at,
       extract(epoch FROM now())::float8 AS claimed_at,
       coalesce(e.trace_id, lpad(to_hex(coalesce(e.root_id, e.id)), 32, '0')) AS trace_id
  FROM inserted i JOIN attune.workflow_execution e ON e.id = i.workflow_execution_id
 WHERE i.status = 'running'

-- name: publish_record
-- Published variables go to the audit log through the definer function (workers cannot
-- insert audit rows themselves, nor choose their actor).
SELECT attune.record_publish(%(ids)s::bigint[], %(task_names)s::text[], %(data)s::jsonb[])

-- name: execution_write
-- The conductor's writes of many executions, each guarded by its status as loaded;
-- task_rows adds the task rows the execution created in this transaction (its budget
-- use). A record without `before` only adds its task rows (an execution whose tasks
-- changed and nothing else): no status, no guard.
-- One JSON array of records (as every hot batched write: one parameter to encode); a
-- JSON value that is not written is absent (SQL NULL: the column keeps its value).
-- An execution that ends waits for nothing: any task state of it still pending (a join
-- short of arrivals, a trigger recorded while a failure drained, iterations the advance
-- did not load) is closed by the same statement. Returns how many executions it wrote.
WITH written AS (
    UPDATE attune.workflow_execution e
       SET status = coalesce(v.status, e.status),
           parameters = coalesce(v.parameters, e.parameters),
           vars = coalesce(v.vars, e.vars), active_tasks = coalesce(v.active_tasks, e.active_tasks),
           error = coalesce(v.error, e.error), output = coalesce(v.output, e.output),
           started_at = CASE WHEN v.before = 'requested' THEN now() ELSE e.started_at END,
           timeout_at = coalesce(to_timestamp(v.timeout_at), e.timeout_at),
           task_rows = e.task_rows + v.task_rows
      FROM jsonb_to_recordset(%(rows)s::jsonb)
           AS v(id bigint, before text, status text, parameters jsonb, vars jsonb,
                active_tasks int, error jsonb, output jsonb, timeout_at float8, task_rows int)
     WHERE e.id = v.id AND (v.before IS NULL OR e.status = v.before)
 RETURNING e.id, e.status, v.before IS NOT NULL AS moved
), closed AS (
    -- An array, so the pending states are looked up by execution id in their index,
    -- not scanned whole and joined.
    UPDATE attune.task_state s SET status = 'canceled'
     WHERE s.status = 'pending' AND s.workflow_execution_id = ANY(ARRAY(
           SELECT w.id FROM written w
            WHERE w.moved AND w.status IN ('succeeded', 'failed', 'canceled', 'timed_out')))
)
SELECT count(*)::int AS written FROM written

-- name: state_write
-- New task states (`new`) and updates of others (`rows`, each guarded by its status as
-- loaded) of many executions, as JSON arrays of records, in one statement: either may be
-- empty. The rows differ (a turn's start and the advance before it, or one round's new
-- and changed states), so neither part needs to see the other's. Returns how many rows
-- the guarded update wrote.
WITH inserted AS (
    INSERT INTO attune.task_state (workflow_execution_id, task_name, iteration, status,
           join_required, join_arrivals, items_total, items_released, items_done,
           items_failed, result, error, unhandled, route, join_from)
    SELECT v.e, v.n, v.i, v.status, v.jr, v.ja, v.t, v.r, v.d, v.f, v.result,
           v.error, v.unhandled, v.route, coalesce(v.jf, '{}')
      FROM jsonb_to_recordset(%(new)s::jsonb)
           AS v(e bigint, n text, i int, status text, jr int, ja int, t int, r int, d int,
                f int, result jsonb, error jsonb, unhandled bool, route text, jf text[])
), updated AS (
    UPDATE attune.task_state t SET status = v.status, join_required = v.join_required,
           join_arrivals = v.join_arrivals, items_total = v.items_total,
           items_released = v.items_released, items_done = v.items_done,
           items_failed = v.items_failed, result = v.result, error = v.error,
           unhandled = v.unhandled, join_from = coalesce(v.join_from, '{}')
      FROM (SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb)
              AS r(execution_id bigint, task_name text, iteration int, before text,
                   status text, join_required int, join_arrivals int, items_total int,
                   items_released int, items_done int, items_failed int, result jsonb,
                   error jsonb, unhandled bool, route text, join_from text[])
             LIMIT jsonb_array_length(%(rows)s::jsonb)) v  -- the batch's size (task_finish)
     WHERE t.workflow_execution_id = v.execution_id AND t.task_name = v.task_name
       AND t.iteration = v.iteration AND t.status = v.before
 RETURNING 1
)
SELECT count(*)::int AS updated FROM updated

-- name: task_release
-- Promote the next `n` pending items of a with-items task (by item index) to scheduled.
UPDATE attune.task_execution SET status = 'scheduled', run_at = now()
 WHERE id IN (SELECT id FROM attune.task_execution
               WHERE workflow_execution_id = %(id)s AND task_name = %(task)s
                 AND iteration = %(iteration)s AND status = 'pending' AND NOT held
               ORDER BY item_index LIMIT %(n)s)

-- name: task_release_held
-- Released while pausing: the next `n` pending items stay pending, marked held, until resume.
UPDATE attune.task_execution SET held = true
 WHERE id IN (SELECT id FROM attune.task_execution
               WHERE workflow_execution_id = %(id)s AND task_name = %(task)s
                 AND iteration = %(iteration)s AND status = 'pending' AND NOT held
               ORDER BY item_index LIMIT %(n)s)

-- name: task_cancel_pending_items
-- A with-items task that stops early: its items never released are canceled.
UPDATE attune.task_execution SET status = 'canceled'
 WHERE workflow_execution_id = %(id)s AND task_name = %(task)s AND iteration = %(iteration)s
   AND status = 'pending'

-- name: execution_start_jump
-- An execution that ends inside the transaction that starts it (every task skipped, an
-- empty with-items) still passes through `running`, as the state machine says and the
-- audit log should show. Parameters (defaults applied) are written by this first move:
-- they freeze once the execution is no longer requested (schema 0006).
UPDATE attune.workflow_execution e SET status = 'running', started_at = now(),
       parameters = coalesce(v.parameters, e.parameters)
  FROM unnest(%(ids)s::bigint[], %(parameters)s::jsonb[]) AS v(id, parameters)
 WHERE e.id = v.id AND e.status = 'requested'

-- name: task_cancel_queued
-- Cancel: the queued rows the cancel's count found (task_live_rows, which locked them).
-- Not every row queued now: one the reaper handed back since was counted running.
UPDATE attune.task_execution SET status = 'canceled', held = false
 WHERE id = ANY(%(rows)s::bigint[]) AND status IN ('pending', 'scheduled')

-- name: task_request_cancel
-- cancel_running: ask the workers running these executions' rows to kill them.
UPDATE attune.task_execution SET cancel_requested = true
 WHERE workflow_execution_id = ANY(%(ids)s::bigint[]) AND status = 'running'
   AND NOT cancel_requested

-- name: inquiry_cancel_open
UPDATE attune.inquiry SET status = 'canceled'
 WHERE workflow_execution_id = ANY(%(ids)s::bigint[]) AND status = 'pending'

-- name: child_cancel
-- Child executions of waiting rows: not started -> canceled; running -> canceling, with
-- the parent's policy.
UPDATE attune.workflow_execution c
   SET status = CASE WHEN c.status = 'requested' THEN 'canceled' ELSE 'canceling' END,
       cancel_policy = coalesce(p.cancel_policy, 'allow_finish'),
       control_requested_at = now()
  FROM attune.task_execution t JOIN attune.workflow_execution p
       ON p.id = t.workflow_execution_id
 WHERE c.parent_task_id = t.id AND t.workflow_execution_id = ANY(%(ids)s::bigint[])
   AND t.status = 'waiting' AND c.status IN ('requested', 'running', 'pausing', 'paused')

-- name: task_cancel_waiting
-- Waiting rows with nothing left to wait for (their inquiry was canceled) end now.
UPDATE attune.task_execution t SET status = 'canceled'
 WHERE t.workflow_execution_id = ANY(%(ids)s::bigint[]) AND t.status = 'waiting'
   AND NOT EXISTS (SELECT 1 FROM attune.workflow_execution c
                    WHERE c.parent_task_id = t.id
                      AND c.status <> ALL(ARRAY['succeeded', 'failed', 'canceled', 'timed_out']))

-- name: task_hold
-- Pause: the scheduled rows the pause's count found (task_count_running, which locked
-- them) go back to pending, held until resume. Not every row scheduled now: one the
-- reaper handed back since was counted running, and is left to run and report.
UPDATE attune.task_execution SET status = 'pending', held = true
 WHERE id = ANY(%(rows)s::bigint[]) AND status = 'scheduled'

-- name: child_pause
-- Pause: running child executions of waiting rows pause too.
UPDATE attune.workflow_execution c SET status = 'pausing', control_requested_at = now()
  FROM attune.task_execution t
 WHERE c.parent_task_id = t.id AND t.workflow_execution_id = ANY(%(ids)s::bigint[])
   AND t.status = 'waiting' AND c.status = 'running'

-- name: inquiry_create
-- The inquiry a parked `core.inquiry` task waits for.
INSERT INTO attune.inquiry (task_execution_id, workflow_execution_id, prompt, schema,
       assigned_to, expires_at)
VALUES (%(task)s, %(execution)s, %(prompt)s, %(schema)s, %(assigned_to)s,
        now() + make_interval(secs => %(timeout)s))

-- name: child_create
-- The child execution a parked workflow task waits for: in its parent's tree, one level
-- deeper, at its priority, on behalf of the same login.
INSERT INTO attune.workflow_execution (workflow_ref, parameters, parent_task_id, root_id,
       depth, priority, requested_by)
SELECT %(ref)s, %(parameters)s, %(task)s, coalesce(p.root_id, p.id), p.depth + 1, p.priority,
       p.requested_by
  FROM attune.workflow_execution p WHERE p.id = %(execution)s
