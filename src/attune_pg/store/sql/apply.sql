-- name: task_insert
-- New task rows of many executions. fair_key: the key of the next claimable row plus the
-- row's rank among the rows its root execution creates in this transaction, so claims
-- interleave executions instead of serving a whole fan-out first (schema 0006).
-- policy_ref: the action's enabled concurrency policy, if any (schema 0009), so the slot
-- trigger fires only for those rows (its WHEN clause); rows go in in command order, so
-- slots are taken in the order the conductor decided.
INSERT INTO attune.task_execution (workflow_execution_id, task_name, iteration,
       item_index, attempt, action_ref, status, input, priority, run_at, timeout, held, fair_key,
       policy_ref)
SELECT v.e, v.task_name, v.iteration, v.item_index, v.attempt, v.action_ref, v.status,
       v.input, e.priority, now() + make_interval(secs => v.delay), v.timeout, v.held,
       coalesce((SELECT h.fair_key FROM attune.task_execution h
                  WHERE h.status = 'scheduled' AND h.run_at <= now()
                  ORDER BY h.priority, h.fair_key, h.id LIMIT 1), 0) + v.rank,
       p.ref
  FROM unnest(%(e)s::bigint[], %(task_name)s::text[], %(iteration)s::int[],
              %(item_index)s::int[], %(attempt)s::int[], %(action_ref)s::text[],
              %(status)s::text[], %(input)s::jsonb[], %(delay)s::float8[],
              %(timeout)s::float8[], %(held)s::bool[], %(rank)s::bigint[])
       WITH ORDINALITY AS v(e, task_name, iteration, item_index, attempt, action_ref, status,
            input, delay, timeout, held, rank, n)
  JOIN attune.workflow_execution e ON e.id = v.e
  LEFT JOIN attune.policy p ON p.resource_ref = v.action_ref AND p.enabled
 ORDER BY v.n

-- name: publish_record
-- Published variables go to the audit log through the definer function (workers cannot
-- insert audit rows themselves, nor choose their actor).
SELECT attune.record_publish(%(ids)s::bigint[], %(task_names)s::text[], %(data)s::jsonb[])

-- name: execution_write
-- The conductor's writes of many executions, each guarded by its status as loaded;
-- task_rows adds the task rows the execution created in this transaction (its budget use).
UPDATE attune.workflow_execution e
   SET status = v.status, parameters = coalesce(v.parameters, e.parameters),
       vars = coalesce(v.vars, e.vars), active_tasks = v.active_tasks,
       error = coalesce(v.error, e.error), output = coalesce(v.output, e.output),
       started_at = CASE WHEN v.before = 'requested' THEN now() ELSE e.started_at END,
       timeout_at = coalesce(to_timestamp(v.timeout_at), e.timeout_at),
       task_rows = e.task_rows + v.task_rows
  FROM unnest(%(id)s::bigint[], %(before)s::text[], %(status)s::text[], %(parameters)s::jsonb[],
              %(vars)s::jsonb[], %(active_tasks)s::int[], %(error)s::jsonb[],
              %(output)s::jsonb[], %(timeout_at)s::float8[], %(task_rows)s::int[])
       AS v(id, before, status, parameters, vars, active_tasks, error, output, timeout_at,
            task_rows)
 WHERE e.id = v.id AND e.status = v.before

-- name: execution_count_rows
-- Task rows created by executions that had nothing else to write in this transaction.
UPDATE attune.workflow_execution e SET task_rows = e.task_rows + v.n
  FROM unnest(%(ids)s::bigint[], %(counts)s::int[]) AS v(id, n)
 WHERE e.id = v.id
