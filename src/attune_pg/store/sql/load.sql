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
-- Per pausing execution (it is paused once none is left): the rows that will still
-- report, and the ids of its scheduled rows, which a hold holds (task_hold). Those are
-- locked here, as task_live_rows does for a cancel and for the same reasons: none is
-- claimed before the hold writes, and a row reaped after this count, counted running, is
-- left to run. n = rows running or scheduled - rows locked.
WITH scheduled AS MATERIALIZED (
    SELECT id, workflow_execution_id FROM attune.task_execution
     WHERE workflow_execution_id = ANY(%(ids)s::bigint[]) AND status = 'scheduled'
       FOR UPDATE
), locked AS MATERIALIZED (
    SELECT workflow_execution_id AS id, array_agg(id ORDER BY id) AS rows
      FROM scheduled GROUP BY 1
)
SELECT c.id, c.n - coalesce(cardinality(l.rows), 0) AS n, coalesce(l.rows, '{}') AS scheduled
  FROM (SELECT workflow_execution_id AS id, count(*) AS n FROM attune.task_execution
         WHERE workflow_execution_id = ANY(%(ids)s::bigint[])
           AND status IN ('running', 'scheduled')
         GROUP BY 1) c
  LEFT JOIN locked l ON l.id = c.id

-- name: task_live_rows
-- A cancel's count, per task state: the rows it leaves alive (running, or waiting on a
-- live child) and the ids of the queued rows (pending, scheduled) it will cancel. Those
-- are locked here, so no worker claims one before the cancel writes (claims SKIP LOCKED
-- them), and the cancel writes only those ids: a row the reaper hands back to the queue
-- later was counted running and is left to run and report. One snapshot for the count:
-- a row queued in it that the lock found claimed since is not locked, and counts as
-- running. Per state, then: running = rows not waiting - rows locked. Sets of states,
-- not of rows, are joined (a join of rows to rows went quadratic in big with-items).
-- The lock's aggregate reads every queued row, so each is locked once any is read.
WITH queued AS MATERIALIZED (
    SELECT id, task_name, iteration FROM attune.task_execution
     WHERE workflow_execution_id = %(id)s AND status IN ('pending', 'scheduled')
       FOR UPDATE
), locked AS MATERIALIZED (
    SELECT task_name, iteration, array_agg(id ORDER BY id) AS ids FROM queued GROUP BY 1, 2
)
SELECT s.task_name, s.iteration, s.live - coalesce(cardinality(l.ids), 0) AS running,
       s.waiting_on_child, coalesce(l.ids, '{}') AS queued
  FROM (SELECT t.task_name, t.iteration,
               count(*) FILTER (WHERE t.status <> 'waiting') AS live,
               count(*) FILTER (WHERE t.status = 'waiting' AND EXISTS (
                   SELECT 1 FROM attune.workflow_execution c
                    WHERE c.parent_task_id = t.id
                      AND c.status <> ALL(ARRAY['succeeded', 'failed', 'canceled',
                                                'timed_out']))) AS waiting_on_child
          FROM attune.task_execution t
         WHERE t.workflow_execution_id = %(id)s
           AND t.status IN ('pending', 'scheduled', 'running', 'waiting')
         GROUP BY 1, 2) s
  LEFT JOIN locked l ON l.task_name = s.task_name AND l.iteration = s.iteration

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
