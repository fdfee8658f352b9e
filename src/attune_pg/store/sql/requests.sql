-- name: execution_request_candidates
-- Executions with a control request, an answered or expired inquiry, or a finished child.
-- Not locked here: lock_executions locks them in id order afterwards.
SELECT id FROM (
    SELECT id FROM attune.workflow_execution WHERE control_requested_at IS NOT NULL
    UNION
    SELECT t.workflow_execution_id FROM attune.task_execution t
      JOIN attune.inquiry i ON i.task_execution_id = t.id
     WHERE t.status = 'waiting' AND i.status IN ('responded', 'timed_out', 'canceled')
    UNION
    SELECT t.workflow_execution_id FROM attune.task_execution t
      JOIN attune.workflow_execution c ON c.parent_task_id = t.id
     WHERE t.status = 'waiting' AND c.status IN ('succeeded', 'failed', 'canceled', 'timed_out')
) ids ORDER BY id LIMIT %(limit)s

-- name: execution_take_requests
-- Clear the control requests of locked executions; which had one.
UPDATE attune.workflow_execution SET control_requested_at = NULL
 WHERE id = ANY(%(ids)s::bigint[]) AND control_requested_at IS NOT NULL RETURNING id

-- name: inquiry_expire
UPDATE attune.inquiry SET status = 'timed_out' WHERE status = 'pending' AND expires_at < now()

-- name: execution_time_out
-- Executions past their `timeout`: cancel what runs (cancel_running), then end timed_out.
UPDATE attune.workflow_execution SET status = 'canceling',
       cancel_policy = 'cancel_running', control_requested_at = now(),
       error = jsonb_build_object('type', 'WorkflowTimedOut', 'message',
           format('workflow timed out after %%s s', (definition ->> 'timeout')))
 WHERE id IN (SELECT id FROM attune.workflow_execution
               WHERE status IN ('running', 'pausing', 'paused') AND timeout_at < now()
               ORDER BY timeout_at FOR UPDATE SKIP LOCKED LIMIT %(limit)s)

-- name: control_notify
-- Wake the workers' request pass (and their cancel_running checks) after commit.
SELECT pg_notify('attune_control', '')
