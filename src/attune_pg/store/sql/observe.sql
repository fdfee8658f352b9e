-- name: queue_sample
-- The shared queue for the metrics endpoint: each count is bounded (LIMIT %(cap)s) and
-- reads only a partial index of live rows. The oldest ready row is found by a loose
-- index scan of the claim index, one probe per distinct priority, so it costs the same
-- with ten rows queued or a million.
WITH RECURSIVE heads AS (
    (SELECT priority, run_at FROM attune.task_execution
      WHERE status = 'scheduled' ORDER BY priority, run_at, id LIMIT 1)
    UNION ALL
    SELECT n.priority, n.run_at FROM heads h, LATERAL (
        SELECT priority, run_at FROM attune.task_execution
         WHERE status = 'scheduled' AND priority > h.priority
         ORDER BY priority, run_at, id LIMIT 1) n
)
SELECT (SELECT count(*) FROM (SELECT 1 FROM attune.task_execution
                               WHERE status = 'scheduled' AND run_at <= now()
                               LIMIT %(cap)s) s)::float8 AS ready,
       (SELECT count(*) FROM (SELECT 1 FROM attune.task_execution
                               WHERE status = 'scheduled' AND run_at > now()
                               LIMIT %(cap)s) s)::float8 AS delayed,
       (SELECT count(*) FROM (SELECT 1 FROM attune.task_execution
                               WHERE status = 'running' LIMIT %(cap)s) s)::float8 AS running,
       (SELECT count(*) FROM (SELECT 1 FROM attune.task_execution
                               WHERE status = 'waiting' LIMIT %(cap)s) s)::float8 AS waiting,
       (SELECT count(*) FROM (SELECT 1 FROM attune.workflow_execution
                               WHERE status = 'requested' LIMIT %(cap)s) s)::float8 AS requested,
       coalesce(extract(epoch FROM now() - (SELECT min(run_at) FROM heads
                                             WHERE run_at <= now())), 0)::float8
           AS oldest_ready_age

-- name: watch_executions
-- Live executions (newest first) for `attune-pg watch`, with their task counts from
-- task_state (one row per task occurrence, however many items it has).
SELECT e.id, e.workflow_ref, e.status, e.created_at, e.started_at, e.depth,
       extract(epoch FROM now() - coalesce(e.started_at, e.created_at))::float8 AS age,
       coalesce(s.total, 0) AS tasks, coalesce(s.done, 0) AS done,
       coalesce(s.failed, 0) AS failed, e.active_tasks
  FROM (SELECT * FROM attune.workflow_execution
         WHERE status NOT IN ('succeeded', 'failed', 'canceled', 'timed_out')
         ORDER BY id DESC LIMIT %(limit)s) e
  LEFT JOIN LATERAL (
        SELECT count(*) AS total,
               count(*) FILTER (WHERE st.status IN ('succeeded', 'skipped')) AS done,
               count(*) FILTER (WHERE st.status IN ('failed', 'timed_out')) AS failed
          FROM attune.task_state st WHERE st.workflow_execution_id = e.id) s ON true
 ORDER BY e.id DESC

-- name: watch_execution
-- One execution's header for `attune-pg watch ID`.
SELECT id, workflow_ref, status, error ->> 'message' AS error_message, created_at,
       started_at, finished_at, trace_id,
       extract(epoch FROM coalesce(finished_at, now()) - coalesce(started_at, created_at))::float8
           AS age
  FROM attune.workflow_execution WHERE id = %(id)s

-- name: watch_tasks
-- One execution's task occurrences with item progress, and how many of its rows run now.
SELECT st.task_name, st.iteration, st.status, st.items_total, st.items_done,
       st.items_failed, st.items_released, st.error ->> 'message' AS error_message,
       (SELECT count(*) FROM attune.task_execution t
         WHERE t.workflow_execution_id = st.workflow_execution_id
           AND t.task_name = st.task_name AND t.iteration = st.iteration
           AND t.status IN ('running', 'waiting')) AS running,
       (SELECT max(t.attempt) FROM attune.task_execution t
         WHERE t.workflow_execution_id = st.workflow_execution_id
           AND t.task_name = st.task_name AND t.iteration = st.iteration) AS attempts
  FROM attune.task_state st
 WHERE st.workflow_execution_id = %(id)s
 ORDER BY st.created_at, st.task_name, st.iteration
 LIMIT %(limit)s

-- name: session_statement_timeout
-- Bound every statement of this session (the metrics scrape's connection).
SELECT set_config('statement_timeout', %(timeout)s, false)
