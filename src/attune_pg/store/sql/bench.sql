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

-- name: bench_claim_latency
-- Claim latency (run_at -> started_at) percentiles in ms, p50, p95, p99.
SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP
       (ORDER BY extract(epoch FROM started_at - run_at) * 1000)
  FROM attune.task_execution WHERE workflow_execution_id = ANY(%(ids)s::bigint[])

-- name: bench_workers_started
SELECT count(*) FROM attune.worker WHERE started_at >= %(since)s AND stopped_at IS NULL

-- name: bench_run_totals
-- Seconds from the first created to the last finished, and how many succeeded.
SELECT extract(epoch FROM max(finished_at) - min(created_at))::float8,
       count(*) FILTER (WHERE status = 'succeeded')
  FROM attune.workflow_execution WHERE id = ANY(%(ids)s::bigint[])

-- name: bench_start_chains
INSERT INTO attune.workflow_execution (workflow_ref, requested_by)
SELECT 'bench.chain', 'bench' FROM generate_series(1, %(n)s) RETURNING id

-- name: bench_start_items
INSERT INTO attune.workflow_execution (workflow_ref, parameters, requested_by)
VALUES (%(ref)s, %(parameters)s, 'bench') RETURNING id

-- name: bench_execution_seconds
SELECT extract(epoch FROM finished_at - created_at)::float8, status
  FROM attune.workflow_execution WHERE id = %(id)s

-- name: bench_start_single
INSERT INTO attune.workflow_execution (workflow_ref, requested_by)
VALUES ('bench.single', 'bench') RETURNING id

-- name: bench_server_setting
SELECT current_setting(%(name)s)

-- name: bench_registered_workflows
SELECT count(*) FROM attune.workflow_definition WHERE pack_ref LIKE 'bench%'

-- name: bench_analyze_executions
-- Fresh statistics after seeding, as autovacuum would give a real history.
VACUUM ANALYZE attune.workflow_execution

-- name: bench_analyze_tasks
VACUUM ANALYZE attune.task_execution
