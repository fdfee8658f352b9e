-- name: execution_cancel
SELECT attune.cancel_execution(%(id)s, %(policy)s)

-- name: execution_pause
SELECT attune.pause_execution(%(id)s)

-- name: execution_resume
SELECT attune.resume_execution(%(id)s)

-- name: execution_retry
SELECT attune.retry_execution(%(id)s)

-- name: inquiry_list
-- Inquiries (only the pending ones unless `all`), oldest first.
SELECT i.id, i.workflow_execution_id, t.task_name, i.status, i.prompt, i.assigned_to,
       i.expires_at, i.created_at
  FROM attune.inquiry i JOIN attune.task_execution t ON t.id = i.task_execution_id
 WHERE %(all)s OR i.status = 'pending'
 ORDER BY i.id

-- name: inquiry_get
SELECT i.*, t.task_name FROM attune.inquiry i
  JOIN attune.task_execution t ON t.id = i.task_execution_id
 WHERE i.id = %(id)s

-- name: inquiry_respond
SELECT attune.respond_inquiry(%(id)s, %(response)s, %(who)s)
