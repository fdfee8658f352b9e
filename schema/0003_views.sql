-- Helper views for DBAs and dashboards. Documented in docs/operations.md.

-- One row per workflow execution, with its task counts.
CREATE VIEW attune.workflow_execution_summary AS
SELECT e.id,
       e.workflow_ref,
       e.status,
       e.priority,
       e.requested_by,
       e.parent_task_id,
       e.depth,
       e.idempotency_key,
       e.created_at,
       e.started_at,
       e.finished_at,
       coalesce(e.finished_at, now()) - coalesce(e.started_at, e.created_at) AS duration,
       e.error ->> 'message' AS error_message,
       t.tasks_total,
       t.tasks_succeeded,
       t.tasks_failed,
       t.tasks_active
  FROM attune.workflow_execution e
  LEFT JOIN LATERAL (
        SELECT count(*) AS tasks_total,
               count(*) FILTER (WHERE status = 'succeeded') AS tasks_succeeded,
               count(*) FILTER (WHERE status IN ('failed', 'timed_out')) AS tasks_failed,
               count(*) FILTER (WHERE status IN ('pending', 'scheduled', 'running', 'waiting')) AS tasks_active
          FROM attune.task_execution x
         WHERE x.workflow_execution_id = e.id) t ON true;

-- One row per task occurrence, item and attempt.
CREATE VIEW attune.workflow_task_detail AS
SELECT t.id,
       t.workflow_execution_id,
       e.workflow_ref,
       t.task_name,
       t.iteration,
       t.item_index,
       t.attempt,
       t.action_ref,
       t.status,
       t.input,
       t.result,
       t.error,
       t.error ->> 'message' AS error_message,
       t.run_at,
       t.started_at,
       t.finished_at,
       t.finished_at - t.started_at AS duration,
       t.lease_owner,
       t.lease_expires_at,
       t.claims
  FROM attune.task_execution t
  JOIN attune.workflow_execution e ON e.id = t.workflow_execution_id;

-- Which action each task of each registered workflow runs (workflows are actions too).
CREATE VIEW attune.workflow_action_link AS
SELECT d.ref AS workflow_ref,
       task ->> 'name' AS task_name,
       task ->> 'action' AS action_ref,
       a.runner AS action_runner,
       (a.runner = 'workflow') AS action_is_workflow,
       (a.ref IS NOT NULL) AS action_registered
  FROM attune.workflow_definition d
 CROSS JOIN LATERAL (
        SELECT t AS task FROM jsonb_array_elements(d.definition -> 'tasks') t
        UNION ALL
        SELECT s FROM jsonb_array_elements(d.definition -> 'tasks') t,
                      jsonb_array_elements(coalesce(t -> 'tasks', '[]'::jsonb)) s) tasks
  LEFT JOIN attune.action a ON a.ref = task ->> 'action'
 WHERE task ->> 'action' IS NOT NULL;

-- Live work by state; reads only the partial indexes' rows.
CREATE VIEW attune.queue_depth AS
SELECT 'task' AS kind, t.action_ref AS ref,
       count(*) FILTER (WHERE t.status = 'scheduled' AND t.run_at <= now()) AS ready,
       count(*) FILTER (WHERE t.status = 'scheduled' AND t.run_at > now()) AS delayed,
       count(*) FILTER (WHERE t.status = 'running') AS running,
       count(*) FILTER (WHERE t.status = 'waiting') AS waiting,
       count(*) FILTER (WHERE t.status = 'pending') AS pending,
       min(t.run_at) FILTER (WHERE t.status = 'scheduled' AND t.run_at <= now()) AS oldest_ready_at
  FROM attune.task_execution t
 WHERE t.status IN ('scheduled', 'running', 'waiting', 'pending')
 GROUP BY t.action_ref
UNION ALL
SELECT 'workflow', e.workflow_ref, count(*), 0, 0, 0, 0, min(e.created_at)
  FROM attune.workflow_execution e
 WHERE e.status = 'requested'
 GROUP BY e.workflow_ref;

-- Tasks that need a look: leases that expired (dead worker not yet reaped),
-- ready work nobody claimed for a minute (no worker running?), rows claimed many times.
CREATE VIEW attune.stuck_tasks AS
SELECT t.id, t.workflow_execution_id, t.task_name, t.item_index, t.attempt, t.status,
       t.lease_owner, t.lease_expires_at, t.run_at, t.claims,
       CASE
         WHEN t.status = 'running' AND t.lease_expires_at < now() THEN 'lease expired'
         WHEN t.status = 'scheduled' THEN 'ready but unclaimed for ' || date_trunc('second', now() - t.run_at)
         ELSE 'claimed ' || t.claims || ' times'
       END AS reason
  FROM attune.task_execution t
 WHERE (t.status = 'running' AND t.lease_expires_at < now())
    OR (t.status = 'scheduled' AND t.run_at < now() - interval '1 minute')
    OR (t.status IN ('scheduled', 'running') AND t.claims > 3);

CREATE VIEW attune.worker_status AS
SELECT w.id, w.hostname, w.pid, w.concurrency, w.running, w.tasks_done,
       w.started_at, w.heartbeat_at, w.stopped_at,
       CASE
         WHEN w.stopped_at IS NOT NULL THEN 'stopped'
         WHEN w.heartbeat_at > now() - interval '30 seconds' THEN 'alive'
         ELSE 'lost'
       END AS state
  FROM attune.worker w;

CREATE VIEW attune.pending_inquiries AS
SELECT i.id, i.workflow_execution_id, e.workflow_ref, t.task_name, i.prompt, i.schema,
       i.assigned_to, i.expires_at, i.created_at
  FROM attune.inquiry i
  JOIN attune.task_execution t ON t.id = i.task_execution_id
  JOIN attune.workflow_execution e ON e.id = i.workflow_execution_id
 WHERE i.status = 'pending';
