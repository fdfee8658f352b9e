-- name: bench_result_mismatches
-- How many tasks of the given workflows returned something other than the expected result
-- (`attune-pg bench` checks a fast answer is also the right one).
SELECT count(*) FILTER (WHERE result IS DISTINCT FROM %(expected)s::jsonb)
FROM attune.task_execution
WHERE workflow_execution_id = ANY(%(ids)s::bigint[])
