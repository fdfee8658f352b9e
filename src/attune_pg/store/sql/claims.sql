-- name: task_claim
-- Claim up to `n` due task rows (SKIP LOCKED: workers never wait for each other), in queue
-- order (priority, fair_key, id), under a lease of `lease` seconds. refused: set when a
-- concurrency policy (`cancel`) refused the row (schema 0009). trace_id: the root
-- execution's (schema 0010); rows from before it have none, and a stable id derived from
-- the root's id stands in, the same for a family.
UPDATE attune.task_execution t
   SET status = 'running', lease_owner = %(me)s,
       lease_expires_at = now() + make_interval(secs => %(lease)s),
       started_at = now(), claims = t.claims + 1
 WHERE t.id IN (SELECT id FROM attune.task_execution
                 WHERE status = 'scheduled' AND run_at <= now()
                 ORDER BY priority, fair_key, id
                 FOR UPDATE SKIP LOCKED
                 LIMIT %(n)s)
RETURNING t.id, t.workflow_execution_id, t.task_name, t.iteration, t.item_index, t.attempt,
          t.action_ref, t.input, t.timeout,
          extract(epoch FROM t.run_at)::float8 AS ready_at,
          extract(epoch FROM now())::float8 AS claimed_at,
          CASE WHEN t.policy_ref IS NOT NULL AND NOT t.policy_slot THEN t.error END AS refused,
          (SELECT coalesce(e.trace_id, lpad(to_hex(coalesce(e.root_id, e.id)), 32, '0'))
             FROM attune.workflow_execution e WHERE e.id = t.workflow_execution_id) AS trace_id

-- name: queue_next_due
-- Seconds until the next scheduled task is due and until the next deadline (a workflow
-- timeout, an inquiry expiry, a timer's tick), and the clock. Reads only the partial
-- indexes of live rows; rows a concurrency policy delays wait at run_at = infinity.
SELECT extract(epoch FROM (SELECT min(run_at) FROM attune.task_execution
                            WHERE status = 'scheduled' AND run_at < 'infinity')
               - now())::float8 AS due,
       extract(epoch FROM least(
           (SELECT min(timeout_at) FROM attune.workflow_execution
             WHERE status NOT IN ('succeeded', 'failed', 'canceled', 'timed_out')
               AND status IN ('running', 'pausing', 'paused')),
           (SELECT min(expires_at) FROM attune.inquiry WHERE status = 'pending'),
           (SELECT min(next_fire_at) FROM attune.timer WHERE next_fire_at IS NOT NULL))
               - now())::float8 AS deadline,
       extract(epoch FROM now())::float8 AS now

-- name: task_heartbeat
-- Extend the leases of the rows this worker runs; which of them are asked to stop. By
-- primary key (COLLATE "C": see fence.sql task_finish).
UPDATE attune.task_execution SET lease_expires_at = now() + make_interval(secs => %(lease)s)
 WHERE id = ANY(%(ids)s::bigint[]) AND status COLLATE "C" = 'running' AND lease_owner = %(me)s
RETURNING id, cancel_requested

-- name: worker_heartbeat
UPDATE attune.worker SET heartbeat_at = now(), running = %(running)s, tasks_done = %(done)s
 WHERE id = %(me)s

-- name: task_reap
-- Rows whose lease expired (their worker died) go back to the queue, oldest lease first;
-- those of an execution that has ended (failed by a quarantine while they ran: nothing
-- waits for them) are closed instead, never run again. The execution's status is read,
-- not locked: the reaper must not wait for, or skip, an execution being advanced (a busy
-- one is locked most of the time). A quarantine committing after this statement's
-- snapshot re-reads the rows it hands back (execution_quarantine takes running rows).
-- The status is a literal, so that the worker's generic plan walks the partial index of
-- leased rows (task_execution_leased); with a parameter it scanned every task row ever
-- run, every few seconds in every worker. The outer guard is the trigger's (machine.py).
WITH expired AS MATERIALIZED (
    SELECT t.id, e.status IN ('succeeded', 'failed', 'canceled', 'timed_out') AS ended
      FROM attune.task_execution t
      JOIN attune.workflow_execution e ON e.id = t.workflow_execution_id
     WHERE t.status = 'running' AND t.lease_expires_at < now()
     ORDER BY t.lease_expires_at
       FOR UPDATE OF t SKIP LOCKED
     LIMIT %(n)s
), requeued AS (
    UPDATE attune.task_execution t SET status = 'scheduled', run_at = now(),
           lease_owner = NULL, lease_expires_at = NULL
     WHERE t.id = ANY(ARRAY(SELECT id FROM expired WHERE NOT ended))
    RETURNING t.id
), closed AS (
    UPDATE attune.task_execution t SET status = 'canceled',
           lease_owner = NULL, lease_expires_at = NULL,
           error = jsonb_build_object('type', 'ExecutionEnded', 'message',
               'its worker stopped heartbeating after its execution had ended: not run again')
     WHERE t.id = ANY(ARRAY(SELECT id FROM expired WHERE ended))
    RETURNING t.id
)
SELECT (SELECT count(*) FROM requeued)::int AS requeued,
       (SELECT count(*) FROM closed)::int AS closed

-- name: task_hand_back
-- Graceful stop: unfinished rows go back to the queue for another worker, now; those of
-- an execution that has ended are closed instead, as the reaper closes them.
WITH mine AS MATERIALIZED (
    SELECT t.id, e.status IN ('succeeded', 'failed', 'canceled', 'timed_out') AS ended
      FROM attune.task_execution t
      JOIN attune.workflow_execution e ON e.id = t.workflow_execution_id
     WHERE t.id = ANY(%(ids)s::bigint[]) AND t.status = 'running' AND t.lease_owner = %(me)s
       FOR UPDATE OF t
), requeued AS (
    UPDATE attune.task_execution t SET status = 'scheduled', run_at = now(),
           lease_owner = NULL, lease_expires_at = NULL
     WHERE t.id = ANY(ARRAY(SELECT id FROM mine WHERE NOT ended))
    RETURNING t.id
), closed AS (
    UPDATE attune.task_execution t SET status = 'canceled',
           lease_owner = NULL, lease_expires_at = NULL,
           error = jsonb_build_object('type', 'ExecutionEnded', 'message',
               'its worker stopped after its execution had ended: not run again')
     WHERE t.id = ANY(ARRAY(SELECT id FROM mine WHERE ended))
    RETURNING t.id
)
SELECT (SELECT count(*) FROM requeued)::int + (SELECT count(*) FROM closed)::int AS handed

-- name: worker_register
INSERT INTO attune.worker (id, hostname, pid, concurrency)
VALUES (%(me)s, %(hostname)s, %(pid)s, %(concurrency)s)
    ON CONFLICT (id) DO UPDATE SET heartbeat_at = now(), stopped_at = NULL

-- name: worker_stop
UPDATE attune.worker SET stopped_at = now(), running = 0, tasks_done = %(done)s
 WHERE id = %(me)s

-- name: session_plans_forget
-- Drop this session's prepared statements (psycopg sees the command and prepares afresh):
-- their cached plans were made for the tables as they were then (worker.loop, replan).
DEALLOCATE ALL

-- name: session_plans_generic
-- The worker's statements are written for generic plans (literal status predicates, batch
-- sizes the planner is told): re-planning each batch with its values cost more than the
-- batch's writes.
SET plan_cache_mode = force_generic_plan
