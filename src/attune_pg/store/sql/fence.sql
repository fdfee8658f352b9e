-- name: task_finish
-- Fenced completion: only rows still running under this worker's lease, in the attempt
-- it claimed, are finished; a late result of a row handed to another worker is dropped.
-- The status is compared under COLLATE "C" (the same equality) so that the plan looks the
-- rows up by primary key: a partial index of live rows matches a plain `status =`, looks
-- cheaper while small, and is scanned whole, which under an old snapshot (vacuum removes
-- nothing) means every dead entry since (docs/scaling.md, lever 5).
-- The outcomes come as one JSON array of records (one parameter to encode, not five
-- arrays: psycopg's array dumping was a fifth of a worker's time); a result is always
-- a JSON value (null included), an error SQL NULL when there is none. The LIMIT tells
-- the planner the batch's size (10 rows in a generic plan, where a function in FROM
-- counts 100): at 100 it hash-joined over a scan of the whole table up to some tens of
-- thousands of rows (docs/scaling.md, "Plans").
UPDATE attune.task_execution t
   SET status = v.status, result = coalesce(v.result, 'null'), error = v.error,
       lease_owner = NULL, lease_expires_at = NULL
  FROM (SELECT * FROM jsonb_to_recordset(%(rows)s::jsonb)
          AS r(id bigint, attempt int, status text, result jsonb, error jsonb)
         LIMIT jsonb_array_length(%(rows)s::jsonb)) v
 WHERE t.id = v.id AND t.attempt = v.attempt AND t.status COLLATE "C" = 'running'
   AND t.lease_owner = %(me)s
RETURNING t.id AS task_execution_id, t.workflow_execution_id AS execution_id, t.task_name,
          t.iteration, t.item_index, t.attempt, t.action_ref, t.input,
          t.status, t.result, t.error

-- name: task_waiting_ended
-- Waiting rows of these executions whose inquiry ended or whose child finished.
SELECT t.id AS task_id, i.id AS inquiry_id, i.status AS inquiry_status, i.response,
       i.responded_by, c.id AS child_id, c.status AS child_status, c.output AS child_output,
       c.error AS child_error
  FROM attune.task_execution t
  LEFT JOIN attune.inquiry i ON i.task_execution_id = t.id
  LEFT JOIN attune.workflow_execution c ON c.parent_task_id = t.id
 WHERE t.workflow_execution_id = ANY(%(ids)s::bigint[]) AND t.status = 'waiting'
   AND (i.status IN ('responded', 'timed_out', 'canceled')
        OR c.status IN ('succeeded', 'failed', 'canceled', 'timed_out'))

-- name: task_finish_waiting
-- End waiting rows with the outcome of their inquiry or child.
UPDATE attune.task_execution t SET status = v.status, result = v.result, error = v.error
  FROM unnest(%(ids)s::bigint[], %(statuses)s::text[], %(results)s::jsonb[],
              %(errors)s::jsonb[]) AS v(id, status, result, error)
 WHERE t.id = v.id AND t.status = 'waiting'
RETURNING t.id AS task_execution_id, t.workflow_execution_id AS execution_id, t.task_name,
          t.iteration, t.item_index, t.attempt, t.action_ref, t.input,
          t.status, t.result, t.error
