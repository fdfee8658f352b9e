-- name: audit_workflows
-- Every workflow row with its status trail (workflow_status events in id order).
SELECT w.id, w.workflow_ref, w.status, w.parent_task_id,
       coalesce(e.sources, '{}') AS sources, coalesce(e.targets, '{}') AS targets
  FROM attune.workflow_execution w
  LEFT JOIN (SELECT workflow_execution_id, array_agg(from_status ORDER BY id) AS sources,
                    array_agg(to_status ORDER BY id) AS targets
               FROM attune.execution_event WHERE kind = 'workflow_status'
              GROUP BY workflow_execution_id) e ON e.workflow_execution_id = w.id
 ORDER BY w.id

-- name: audit_tasks
-- Every task row with its status trail (task_status events in id order).
SELECT t.id, t.workflow_execution_id AS execution_id, t.task_name, t.iteration, t.item_index,
       t.attempt, t.status, t.claims, t.lease_owner, t.lease_expires_at,
       coalesce(e.sources, '{}') AS sources, coalesce(e.targets, '{}') AS targets
  FROM attune.task_execution t
  LEFT JOIN (SELECT task_execution_id, array_agg(from_status ORDER BY id) AS sources,
                    array_agg(to_status ORDER BY id) AS targets
               FROM attune.execution_event WHERE kind = 'task_status'
              GROUP BY task_execution_id) e ON e.task_execution_id = t.id
 ORDER BY t.id

-- name: audit_joins
-- Every join round, with how many task rows its occurrence has.
SELECT s.workflow_execution_id AS execution_id, s.task_name, s.iteration, s.route, s.status,
       s.join_required, s.join_arrivals, s.join_from,
       (SELECT count(*) FROM attune.task_execution t
         WHERE t.workflow_execution_id = s.workflow_execution_id
           AND t.task_name = s.task_name AND t.iteration = s.iteration)::int AS task_rows
  FROM attune.task_state s
 WHERE s.join_required IS NOT NULL
 ORDER BY s.workflow_execution_id, s.task_name, s.iteration

-- name: audit_duplicates
-- Occurrences with more than one row (the unique index below forbids them).
SELECT workflow_execution_id AS execution_id, task_name, iteration, item_index, attempt,
       count(*)::int AS copies
  FROM attune.task_execution
 GROUP BY workflow_execution_id, task_name, iteration, item_index, attempt
HAVING count(*) > 1

-- name: audit_occurrence_index
SELECT indexdef FROM pg_indexes
 WHERE schemaname = 'attune' AND indexname = 'task_execution_occurrence'

-- name: audit_orphans
-- Status events whose row does not exist (pruning deletes a family's events with it).
SELECT (SELECT count(*) FROM attune.execution_event e
         WHERE e.kind = 'task_status'
           AND NOT EXISTS (SELECT 1 FROM attune.task_execution t
                            WHERE t.id = e.task_execution_id))
     + (SELECT count(*) FROM attune.execution_event e
         WHERE e.kind = 'workflow_status'
           AND NOT EXISTS (SELECT 1 FROM attune.workflow_execution w
                            WHERE w.id = e.workflow_execution_id)) AS orphans
