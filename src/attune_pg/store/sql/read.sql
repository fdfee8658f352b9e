-- name: execution_start
-- attune.start_execution: a repeated idempotency key returns the first execution.
SELECT attune.start_execution(%(ref)s, %(parameters)s, %(key)s, %(priority)s,
                              coalesce(%(who)s, current_user))

-- name: execution_show
SELECT id, workflow_ref, status, parameters, output, error, vars, priority, requested_by,
       parent_task_id, depth, created_at, started_at, finished_at,
       definition -> 'parameters' AS parameter_schema
  FROM attune.workflow_execution WHERE id = %(id)s

-- name: execution_list
-- The newest executions (of one status, when `status` is given).
SELECT id, workflow_ref, status, requested_by, created_at, started_at, finished_at,
       error_message, tasks_total
  FROM attune.workflow_execution_summary
 WHERE %(status)s::text IS NULL OR status = %(status)s
 ORDER BY id DESC LIMIT %(limit)s

-- name: task_list
SELECT id, task_name, iteration, item_index, attempt, action_ref, status, input, result,
       error, run_at, started_at, finished_at, lease_owner, claims
  FROM attune.task_execution WHERE workflow_execution_id = %(id)s
 ORDER BY coalesce(started_at, run_at), id

-- name: execution_status
SELECT status FROM attune.workflow_execution WHERE id = %(id)s

-- name: workflow_list_brief
SELECT ref, label, version, enabled, description FROM attune.workflow_definition ORDER BY ref

-- name: workflow_show
SELECT ref, label, version, enabled, description, parameters, definition, source,
       source_file, updated_at
  FROM attune.workflow_definition WHERE ref = %(ref)s

-- name: worker_list
SELECT * FROM attune.worker_status ORDER BY started_at DESC

-- name: execution_definition
SELECT definition FROM attune.workflow_execution WHERE id = %(id)s

-- name: task_latest_statuses
-- Task name -> status of its latest run: the last attempt in its latest iteration; the
-- items of a with_items task are summed up by `precedence` (the first listed wins).
SELECT task_name,
       (array_agg(status ORDER BY array_position(%(precedence)s::text[], status) NULLS LAST))[1]
  FROM (SELECT DISTINCT ON (task_name, coalesce(item_index, -1)) task_name, status
          FROM attune.task_execution t WHERE workflow_execution_id = %(id)s
           AND iteration = (SELECT max(iteration) FROM attune.task_execution m
                             WHERE m.workflow_execution_id = t.workflow_execution_id
                               AND m.task_name = t.task_name)
         ORDER BY task_name, coalesce(item_index, -1), attempt DESC, id DESC) latest
 GROUP BY task_name
