-- name: state_latest
-- The latest iteration of each task in each route (branch), per execution.
SELECT DISTINCT ON (workflow_execution_id, task_name, route)
       workflow_execution_id AS execution_id, task_name AS name, iteration, status,
       join_required, join_arrivals, items_total, items_released, items_done, items_failed,
       result, error, unhandled, route, join_from
  FROM attune.task_state WHERE workflow_execution_id = ANY(%(ids)s::bigint[])
 ORDER BY workflow_execution_id, task_name, route, iteration DESC

-- name: state_get_many
-- Specific (execution, task, iteration) states: older iterations still running.
SELECT workflow_execution_id AS execution_id, task_name AS name, iteration, status,
       join_required, join_arrivals, items_total, items_released, items_done, items_failed,
       result, error, unhandled, route, join_from
  FROM attune.task_state
 WHERE (workflow_execution_id, task_name, iteration) IN
       (SELECT * FROM unnest(%(ids)s::bigint[], %(names)s::text[], %(iterations)s::int[]))

-- name: state_unhandled
-- Every task state whose failure nobody handled (what retry_execution re-runs).
SELECT workflow_execution_id AS execution_id, task_name AS name, iteration, status,
       join_required, join_arrivals, items_total, items_released, items_done, items_failed,
       result, error, unhandled, route, join_from
  FROM attune.task_state WHERE workflow_execution_id = %(id)s AND unhandled

-- name: state_open
-- Every task state still pending or running (older iterations included).
SELECT workflow_execution_id AS execution_id, task_name AS name, iteration, status,
       join_required, join_arrivals, items_total, items_released, items_done, items_failed,
       result, error, unhandled, route, join_from
  FROM attune.task_state
 WHERE workflow_execution_id = %(id)s AND status IN ('pending', 'running')

-- name: task_count_running
-- Rows still running, per pausing execution (it is paused once none is).
SELECT workflow_execution_id AS id, count(*) AS n FROM attune.task_execution
 WHERE workflow_execution_id = ANY(%(ids)s::bigint[]) AND status = 'running' GROUP BY 1

-- name: task_live_rows
-- Per task state: rows a cancel leaves alive (running, or waiting on a live child).
SELECT t.task_name, t.iteration,
       count(*) FILTER (WHERE t.status = 'running') AS running,
       count(*) FILTER (WHERE t.status = 'waiting' AND EXISTS (
           SELECT 1 FROM attune.workflow_execution c
            WHERE c.parent_task_id = t.id
              AND c.status <> ALL(ARRAY['succeeded', 'failed', 'canceled', 'timed_out'])))
           AS waiting_on_child
  FROM attune.task_execution t
 WHERE t.workflow_execution_id = %(id)s AND t.status IN ('running', 'waiting')
 GROUP BY 1, 2

-- name: task_item_results
-- The final attempt of every item of a with-items task, in item order.
SELECT DISTINCT ON (item_index) item_index, status, result FROM attune.task_execution
 WHERE workflow_execution_id = %(id)s AND task_name = %(task)s AND iteration = %(iteration)s
   AND item_index IS NOT NULL
 ORDER BY item_index, attempt DESC

-- name: kv_snapshot
-- The kv keys templates may read, for the conductor's snapshot: a secret's value is not
-- read (templates render secrets as tokens from the flag alone).
SELECT key, CASE WHEN secret THEN NULL ELSE value END AS value, secret
  FROM attune.kv WHERE key = ANY(%(keys)s::text[])

-- name: kv_secret_values
-- The values of secret keys (secret parameters to validate before a start).
SELECT key, value FROM attune.kv WHERE key = ANY(%(keys)s::text[]) AND secret

-- name: workflow_runnable
-- Which of these workflows a nested execution may start (registered and enabled).
SELECT ref FROM attune.workflow_definition WHERE ref = ANY(%(refs)s::text[]) AND enabled
