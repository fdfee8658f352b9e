-- name: task_insert
-- New task rows of many executions. fair_key: the key of the next claimable row plus the
-- row's rank among the rows its root execution creates in this transaction, so claims
-- interleave executions instead of serving a whole fan-out first (schema 0006).
INSERT INTO attune.task_execution (workflow_execution_id, task_name, iteration,
       item_index, attempt, action_ref, status, input, priority, run_at, timeout, held, fair_key)
SELECT v.e, v.task_name, v.iteration, v.item_index, v.attempt, v.action_ref, v.status,
       v.input, e.priority, now() + make_interval(secs => v.delay), v.timeout, v.held,
       coalesce((SELECT h.fair_key FROM attune.task_execution h
                  WHERE h.status = 'scheduled' AND h.run_at <= now()
                  ORDER BY h.priority, h.fair_key, h.id LIMIT 1), 0) + v.rank
  FROM unnest(%(e)s::bigint[], %(task_name)s::text[], %(iteration)s::int[],
              %(item_index)s::int[], %(attempt)s::int[], %(action_ref)s::text[],
              %(status)s::text[], %(input)s::jsonb[], %(delay)s::float8[],
              %(timeout)s::float8[], %(held)s::bool[], %(rank)s::bigint[])
       AS v(e, task_name, iteration, item_index, attempt, action_ref, status, input,
            delay, timeout, held, rank)
  JOIN attune.workflow_execution e ON e.id = v.e

-- name: publish_record
-- Published variables go to the audit log through the definer function (workers cannot
-- insert audit rows themselves, nor choose their actor).
SELECT attune.record_publish(%(ids)s::bigint[], %(task_names)s::text[], %(data)s::jsonb[])
