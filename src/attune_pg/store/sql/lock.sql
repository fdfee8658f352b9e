-- name: execution_lock
-- Lock workflow rows in id order (the global lock order), with what the conductor needs,
-- the root's status (a canceled root stops its whole tree) and the tree's budget so far.
-- An empty object comes back NULL (lock.py reads it as {}): most executions have empty
-- vars and pack config, and each `{}` decoded is a JSON loader call per row.
SELECT e.id, e.workflow_ref AS ref, e.status, md5(e.definition::text) AS digest,
       nullif(e.parameters, '{}') AS parameters, nullif(e.vars, '{}') AS vars,
       e.active_tasks, e.error, e.output, nullif(e.pack_config, '{}') AS pack_config,
       coalesce(e.started_by, e.requested_by) AS login,
       extract(epoch FROM e.started_at)::float8 AS started_at, e.depth, e.cancel_policy,
       coalesce(e.root_id, e.id) AS root_id, coalesce(r.status, e.status) AS root_status,
       r.cancel_policy AS root_cancel_policy,
       coalesce(b.executions, 0) AS used_executions,
       coalesce(r.task_rows, e.task_rows) + coalesce(b.task_rows, 0) AS used_rows,
       coalesce(e.trace_id, r.trace_id, lpad(to_hex(coalesce(e.root_id, e.id)), 32, '0'))
           AS trace_id,
       extract(epoch FROM now())::float8 AS now
  FROM attune.workflow_execution e
  LEFT JOIN attune.workflow_execution r ON r.id = e.root_id
  LEFT JOIN attune.execution_budget b ON b.root_id = coalesce(e.root_id, e.id)
 WHERE e.id = ANY(%(ids)s::bigint[])
 ORDER BY e.id
   FOR UPDATE OF e

-- name: execution_claim_requested
-- Up to `n` executions waiting to start, locked (SKIP LOCKED: workers never collide);
-- not those a concurrency policy delays (schema 0009).
SELECT e.id, e.workflow_ref AS ref, e.status, md5(e.definition::text) AS digest,
       nullif(e.parameters, '{}') AS parameters, nullif(e.vars, '{}') AS vars,
       e.active_tasks, e.error, e.output, nullif(e.pack_config, '{}') AS pack_config,
       coalesce(e.started_by, e.requested_by) AS login,
       extract(epoch FROM e.started_at)::float8 AS started_at, e.depth, e.cancel_policy,
       coalesce(e.root_id, e.id) AS root_id, coalesce(r.status, e.status) AS root_status,
       r.cancel_policy AS root_cancel_policy,
       coalesce(b.executions, 0) AS used_executions,
       coalesce(r.task_rows, e.task_rows) + coalesce(b.task_rows, 0) AS used_rows,
       coalesce(e.trace_id, r.trace_id, lpad(to_hex(coalesce(e.root_id, e.id)), 32, '0'))
           AS trace_id,
       extract(epoch FROM now())::float8 AS now, e.priority
  FROM attune.workflow_execution e
  LEFT JOIN attune.workflow_execution r ON r.id = e.root_id
  LEFT JOIN attune.execution_budget b ON b.root_id = coalesce(e.root_id, e.id)
 WHERE e.status = 'requested' AND NOT e.delayed
 ORDER BY e.priority, e.id
   FOR UPDATE OF e SKIP LOCKED
 LIMIT %(n)s

-- name: execution_claim_requested_after
-- execution_claim_requested, resumed after the last (priority, id) this worker started
-- (store/lock.py StartCursor): the index range starts there, past the entries of what it
-- started before.
SELECT e.id, e.workflow_ref AS ref, e.status, md5(e.definition::text) AS digest,
       nullif(e.parameters, '{}') AS parameters, nullif(e.vars, '{}') AS vars,
       e.active_tasks, e.error, e.output, nullif(e.pack_config, '{}') AS pack_config,
       coalesce(e.started_by, e.requested_by) AS login,
       extract(epoch FROM e.started_at)::float8 AS started_at, e.depth, e.cancel_policy,
       coalesce(e.root_id, e.id) AS root_id, coalesce(r.status, e.status) AS root_status,
       r.cancel_policy AS root_cancel_policy,
       coalesce(b.executions, 0) AS used_executions,
       coalesce(r.task_rows, e.task_rows) + coalesce(b.task_rows, 0) AS used_rows,
       coalesce(e.trace_id, r.trace_id, lpad(to_hex(coalesce(e.root_id, e.id)), 32, '0'))
           AS trace_id,
       extract(epoch FROM now())::float8 AS now, e.priority
  FROM attune.workflow_execution e
  LEFT JOIN attune.workflow_execution r ON r.id = e.root_id
  LEFT JOIN attune.execution_budget b ON b.root_id = coalesce(e.root_id, e.id)
 WHERE e.status = 'requested' AND NOT e.delayed
   AND (e.priority, e.id) > (%(priority)s::int, %(id)s::bigint)
 ORDER BY e.priority, e.id
   FOR UPDATE OF e SKIP LOCKED
 LIMIT %(n)s

-- name: execution_requested_ids
-- Executions waiting to start (not locked): the one-at-a-time retry of a failed batch.
SELECT id FROM attune.workflow_execution WHERE status = 'requested' AND NOT delayed
 ORDER BY priority, id LIMIT %(n)s

-- name: execution_claim_one
-- One execution waiting to start, locked, if no other worker holds it.
SELECT e.id, e.workflow_ref AS ref, e.status, md5(e.definition::text) AS digest,
       nullif(e.parameters, '{}') AS parameters, nullif(e.vars, '{}') AS vars,
       e.active_tasks, e.error, e.output, nullif(e.pack_config, '{}') AS pack_config,
       coalesce(e.started_by, e.requested_by) AS login,
       extract(epoch FROM e.started_at)::float8 AS started_at, e.depth, e.cancel_policy,
       coalesce(e.root_id, e.id) AS root_id, coalesce(r.status, e.status) AS root_status,
       r.cancel_policy AS root_cancel_policy,
       coalesce(b.executions, 0) AS used_executions,
       coalesce(r.task_rows, e.task_rows) + coalesce(b.task_rows, 0) AS used_rows,
       coalesce(e.trace_id, r.trace_id, lpad(to_hex(coalesce(e.root_id, e.id)), 32, '0'))
           AS trace_id,
       extract(epoch FROM now())::float8 AS now
  FROM attune.workflow_execution e
  LEFT JOIN attune.workflow_execution r ON r.id = e.root_id
  LEFT JOIN attune.execution_budget b ON b.root_id = coalesce(e.root_id, e.id)
 WHERE e.id = %(id)s AND e.status = 'requested' AND NOT e.delayed
   FOR UPDATE OF e SKIP LOCKED

-- name: execution_definitions
-- Definition snapshots by digest, for the executions whose spec is not cached yet.
SELECT md5(definition::text) AS digest, definition FROM attune.workflow_execution
 WHERE id = ANY(%(ids)s::bigint[])

-- name: execution_follow_root
-- The root of these executions is canceling or has ended: they stop too, at once (a
-- requested one is canceled, a running one turns canceling with the root's policy), so
-- nothing more is created anywhere in the tree while the cancel walks down it.
UPDATE attune.workflow_execution e
   SET status = CASE WHEN e.status = 'requested' THEN 'canceled' ELSE 'canceling' END,
       cancel_policy = v.policy,
       control_requested_at = CASE WHEN e.status = 'requested' THEN NULL ELSE now() END
  FROM unnest(%(ids)s::bigint[], %(policies)s::text[]) AS v(id, policy)
 WHERE e.id = v.id AND e.status IN ('requested', 'running', 'pausing', 'paused')
RETURNING e.id, e.status

-- name: execution_lock_ids
-- Lock executions by id, in id order, before a statement that must see every row their
-- advances committed (execution_quarantine: its snapshot is taken before it would wait).
SELECT id FROM attune.workflow_execution WHERE id = ANY(%(ids)s::bigint[]) ORDER BY id
   FOR UPDATE

-- name: execution_quarantine
-- Fail executions a worker cannot process (an undecodable value, an error that would fail
-- every batch again), and close what they were doing, so no pass picks them up again.
-- The caller holds the executions' locks (execution_lock_ids) before this statement's
-- snapshot is taken, or a row an advance created meanwhile would stay queued.
WITH failed AS (
    UPDATE attune.workflow_execution e
       SET status = 'failed', error = v.error, control_requested_at = NULL
      FROM unnest(%(ids)s::bigint[], %(errors)s::jsonb[]) AS v(id, error)
     WHERE e.id = v.id
       AND e.status IN ('requested', 'running', 'pausing', 'paused', 'canceling')
    RETURNING e.id
), queued AS (
    -- Running rows are candidates too, and left running (their outcome is recorded and
    -- goes nowhere): a reaper may hand one back to the queue after this statement's
    -- snapshot, and the row lock makes this UPDATE re-read such a row and cancel it.
    -- Locked in id order, as the heartbeat locks a worker's rows.
    UPDATE attune.task_execution t
       SET status = CASE WHEN t.status = 'running' THEN t.status ELSE 'canceled' END,
           held = t.held AND t.status = 'running'
     WHERE t.id = ANY(ARRAY(
           SELECT l.id FROM attune.task_execution l
            WHERE l.workflow_execution_id IN (SELECT id FROM failed)
              AND l.status IN ('pending', 'scheduled', 'running')
            ORDER BY l.id FOR UPDATE))
    RETURNING t.id, t.status
), parked AS (
    UPDATE attune.task_execution t SET status = 'failed', error = jsonb_build_object(
           'type', 'Quarantined', 'message', 'its execution was failed by the worker')
     WHERE t.workflow_execution_id IN (SELECT id FROM failed) AND t.status = 'waiting'
    RETURNING t.id
), asked AS (
    UPDATE attune.inquiry i SET status = 'canceled'
     WHERE i.workflow_execution_id IN (SELECT id FROM failed) AND i.status = 'pending'
    RETURNING i.id
)
SELECT (SELECT count(*) FROM failed), (SELECT count(*) FROM queued WHERE status = 'canceled'),
       (SELECT count(*) FROM parked), (SELECT count(*) FROM asked)

-- name: budget_charge
-- What one transaction's descendants created under each root (a root's own rows are on
-- its row: workflow_execution.task_rows). In root order, so transactions that
-- charge several roots queue instead of deadlocking; taken last, held only to commit).
INSERT INTO attune.execution_budget AS b (root_id, executions, task_rows)
SELECT v.root_id, v.executions, v.task_rows
  FROM unnest(%(roots)s::bigint[], %(executions)s::bigint[], %(rows)s::bigint[])
       AS v(root_id, executions, task_rows)
 ORDER BY v.root_id
    ON CONFLICT (root_id) DO UPDATE
   SET executions = b.executions + EXCLUDED.executions,
       task_rows = b.task_rows + EXCLUDED.task_rows

-- name: signing_key_get
-- The key secret tokens are signed with (readable by the owner and attune_worker only).
SELECT key FROM attune.signing_key WHERE id = 1

