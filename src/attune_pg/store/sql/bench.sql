-- name: bench_history_start
-- `attune-pg bench --prune`: N finished executions of the chain workflow, as old history.
INSERT INTO attune.workflow_execution (workflow_ref, requested_by)
SELECT %(ref)s, 'bench-history' FROM generate_series(1, %(n)s::int)
RETURNING id

-- name: bench_history_run
UPDATE attune.workflow_execution SET status = 'running' WHERE id = ANY(%(ids)s::bigint[])

-- name: bench_history_tasks
-- k task rows per execution, each scheduled, claimed and succeeded through the guard
-- triggers, so the audit log holds what a real run writes.
INSERT INTO attune.task_execution (workflow_execution_id, task_name, action_ref, status)
SELECT e, 't' || i, 'core.noop', 'scheduled'
  FROM unnest(%(ids)s::bigint[]) e, generate_series(0, %(k)s::int - 1) i

-- name: bench_history_claim
UPDATE attune.task_execution SET status = 'running', lease_owner = 'bench-history',
       started_at = now()
 WHERE workflow_execution_id = ANY(%(ids)s::bigint[]) AND status = 'scheduled'

-- name: bench_history_finish
UPDATE attune.task_execution SET status = 'succeeded', result = '{}', lease_owner = NULL
 WHERE workflow_execution_id = ANY(%(ids)s::bigint[]) AND status = 'running'

-- name: bench_history_states
INSERT INTO attune.task_state (workflow_execution_id, task_name, iteration, status, result)
SELECT e, 't' || i, 1, 'succeeded', '{}'
  FROM unnest(%(ids)s::bigint[]) e, generate_series(0, %(k)s::int - 1) i

-- name: bench_history_end
UPDATE attune.workflow_execution SET status = 'succeeded', output = '{}'
 WHERE id = ANY(%(ids)s::bigint[]) AND status = 'running'

-- name: bench_history_age
UPDATE attune.workflow_execution
   SET finished_at = now() - make_interval(days => %(days)s::int)
 WHERE id = ANY(%(ids)s::bigint[])

-- name: bench_load_backlog
-- Executions of the load not finished yet (the live partial index only).
SELECT count(*) FROM attune.workflow_execution
 WHERE status NOT IN ('succeeded', 'failed', 'canceled', 'timed_out')
   AND requested_by = 'bench-load'

-- name: bench_load_add
INSERT INTO attune.workflow_execution (workflow_ref, requested_by)
SELECT %(ref)s, 'bench-load' FROM generate_series(1, %(n)s::int)

-- name: bench_clock
SELECT now()

-- name: bench_steps_between
-- Task steps the load finished in a window of the database clock.
SELECT count(*) FROM attune.task_execution
 WHERE status = 'succeeded' AND finished_at >= %(t0)s AND finished_at < %(t1)s
   AND lease_owner IS NULL AND action_ref = 'core.noop'

-- name: bench_result_mismatches
-- How many tasks of the given workflows returned something other than the expected result
-- (`attune-pg bench` checks a fast answer is also the right one).
SELECT count(*) FILTER (WHERE result IS DISTINCT FROM %(expected)s::jsonb)
FROM attune.task_execution
WHERE workflow_execution_id = ANY(%(ids)s::bigint[])
