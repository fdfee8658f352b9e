-- name: bench_counters
-- What the server has done so far, for `attune-pg bench`'s per-step accounting: committed
-- and rolled-back transactions of this database, tuples written to attune's tables (as
-- the cumulative statistics count them: flushed by each backend at most once a second
-- while busy, and up to 10 s after it went idle), the WAL position in bytes, the full-page
-- images written to the WAL (the first change of a page after a checkpoint), this session's
-- backend pid (its parent is the postmaster, whose CPU the bench reads from /proc).
SELECT d.xact_commit, d.xact_rollback,
       coalesce(t.ins, 0)::bigint, coalesce(t.upd, 0)::bigint, coalesce(t.del, 0)::bigint,
       coalesce(t.hot, 0)::bigint,
       pg_wal_lsn_diff(pg_current_wal_lsn(), '0/0')::bigint,
       (SELECT wal_fpi FROM pg_stat_wal)::bigint,
       pg_backend_pid()
  FROM pg_stat_database d,
       LATERAL (SELECT sum(n_tup_ins) AS ins, sum(n_tup_upd) AS upd, sum(n_tup_del) AS del,
                       sum(n_tup_hot_upd) AS hot
                  FROM pg_stat_user_tables WHERE schemaname = 'attune') t
 WHERE d.datname = current_database()

-- name: bench_dead_tuples
-- Dead row versions in the hot tables right now (vacuum cannot remove them while an old
-- snapshot may still see them), summed; and the claimable partial index's size in pages.
SELECT coalesce(sum(n_dead_tup), 0)::bigint,
       (SELECT pg_relation_size('attune.task_execution_claimable') / 8192)::bigint
  FROM pg_stat_user_tables
 WHERE schemaname = 'attune'
   AND relname IN ('task_execution', 'task_state', 'workflow_execution', 'execution_event')

-- name: bench_workflows_start
-- N executions of one benchmark workflow, tagged with who asked (one statement).
INSERT INTO attune.workflow_execution (workflow_ref, requested_by)
SELECT %(ref)s, %(tag)s FROM generate_series(1, %(n)s::int)
RETURNING id

-- name: bench_workflows_unfinished
-- How many of the given executions have not ended yet.
SELECT count(*) FROM attune.workflow_execution
 WHERE id = ANY(%(ids)s::bigint[])
   AND status NOT IN ('succeeded', 'failed', 'canceled', 'timed_out')

-- name: bench_range_first_unfinished
-- The first of the ids lo..hi (all of them the bench's: one INSERT returned them) that
-- has not ended yet: a primary-key walk from lo that stops there. The caller moves lo up
-- to it, so a whole run reads each row about once; counting them all on every poll cost
-- the server more CPU than a tenth of the engine under test.
SELECT id FROM attune.workflow_execution
 WHERE id BETWEEN %(lo)s AND %(hi)s
   AND status NOT IN ('succeeded', 'failed', 'canceled', 'timed_out')
 ORDER BY id
 LIMIT 1

-- name: bench_workflows_window
-- The given executions' span on the database clock (first created to last finished),
-- how many succeeded, and how many task steps they ran.
SELECT extract(epoch FROM max(e.finished_at) - min(e.created_at))::float8,
       count(*) FILTER (WHERE e.status = 'succeeded'),
       (SELECT count(*) FROM attune.task_execution t
         WHERE t.workflow_execution_id = ANY(%(ids)s::bigint[]) AND t.status = 'succeeded')
  FROM attune.workflow_execution e
 WHERE e.id = ANY(%(ids)s::bigint[])

-- name: bench_finished_between
-- Executions of a load (by the tag they were requested with) that succeeded in a window of
-- the database clock (through the prune index on finished_at: no scan of history).
SELECT count(*) FROM attune.workflow_execution
 WHERE parent_task_id IS NULL AND status IN ('succeeded', 'failed', 'canceled', 'timed_out')
   AND finished_at >= %(t0)s AND finished_at < %(t1)s
   AND status = 'succeeded' AND requested_by = %(tag)s

-- name: bench_workflows_open
-- Which of the given executions have not ended yet (primary-key look-ups only: under a
-- held snapshot, a scan of the live index would walk every dead entry and steal the CPU
-- the engine is being measured with). COLLATE "C": a plain `status NOT IN` matches the
-- partial index of live executions, which the planner would scan whole instead.
SELECT id FROM attune.workflow_execution
 WHERE id = ANY(%(ids)s::bigint[])
   AND status COLLATE "C" NOT IN ('succeeded', 'failed', 'canceled', 'timed_out')

-- name: bench_snapshot_hold
-- The held snapshot: run inside a REPEATABLE READ transaction, it takes the snapshot that
-- then stays open (and keeps vacuum from removing any row version deleted after it).
SELECT count(*) FROM attune.worker

-- name: bench_history_counts
-- Finished task rows and executions in the tables (the history scenario's size check).
SELECT (SELECT count(*) FROM attune.task_execution WHERE status = 'succeeded'),
       (SELECT count(*) FROM attune.workflow_execution WHERE status = 'succeeded')

-- name: bench_triggers_off
-- For this transaction only: row triggers off (the owner's bulk load of history).
SELECT set_config('session_replication_role', 'replica', true)

-- name: bench_history_load
-- One chunk of history, fast: executions of `ref` with `k` task rows each, finished
-- `days` ago, with the task states and the audit rows a real run writes (creation, start,
-- each task scheduled, running, succeeded, the end). Run as the owner with
-- session_replication_role = replica, so the row triggers (guards, audit, notify) are
-- skipped: the rows are what those triggers would have left, written in bulk.
WITH def AS (
    SELECT definition FROM attune.workflow_definition WHERE ref = %(ref)s
), e AS (
    INSERT INTO attune.workflow_execution
           (workflow_ref, status, requested_by, definition, output, created_at, started_at,
            finished_at, updated_at, task_rows)
    SELECT %(ref)s, 'succeeded', 'bench-history', def.definition, '{}',
           now() - make_interval(days => %(days)s::int, secs => 1),
           now() - make_interval(days => %(days)s::int, secs => 1),
           now() - make_interval(days => %(days)s::int),
           now() - make_interval(days => %(days)s::int), %(k)s::int
      FROM def, generate_series(1, %(n)s::int)
    RETURNING id, finished_at
), t AS (
    INSERT INTO attune.task_execution
           (workflow_execution_id, task_name, action_ref, status, input, result, run_at,
            started_at, finished_at, created_at, updated_at, claims, fair_key)
    SELECT e.id, 't' || i, 'core.noop', 'succeeded', '{}', '{}', e.finished_at,
           e.finished_at, e.finished_at, e.finished_at, e.finished_at, 1, 0
      FROM e, generate_series(0, %(k)s::int - 1) i
    RETURNING id, workflow_execution_id, task_name, finished_at
), s AS (
    INSERT INTO attune.task_state
           (workflow_execution_id, task_name, iteration, status, result, created_at,
            finished_at)
    SELECT t.workflow_execution_id, t.task_name, 1, 'succeeded', '{}', t.finished_at,
           t.finished_at
      FROM t
    RETURNING 1
), te AS (
    INSERT INTO attune.execution_event
           (workflow_execution_id, task_execution_id, task_name, kind, from_status,
            to_status, data, created_at)
    SELECT t.workflow_execution_id, t.id, t.task_name, 'task_status', m.f, m.s,
           jsonb_build_object('attempt', 1, 'iteration', 1, 'item_index', NULL,
                              'worker', m.w),
           t.finished_at
      FROM t, (VALUES (NULL, 'scheduled', NULL), ('scheduled', 'running', 'bench-history'),
                      ('running', 'succeeded', NULL)) AS m(f, s, w)
    RETURNING 1
), ee AS (
    INSERT INTO attune.execution_event
           (workflow_execution_id, kind, from_status, to_status, created_at)
    SELECT e.id, 'workflow_status', m.f, m.s, e.finished_at
      FROM e, (VALUES (NULL, 'requested'), ('requested', 'running'),
                      ('running', 'succeeded')) AS m(f, s)
    RETURNING 1
)
SELECT (SELECT count(*) FROM e), (SELECT count(*) FROM t), (SELECT count(*) FROM s),
       (SELECT count(*) FROM te) + (SELECT count(*) FROM ee)

-- name: bench_items_start
-- One execution of the with-items workflow over the given items.
INSERT INTO attune.workflow_execution (workflow_ref, parameters, requested_by)
VALUES ('bench.items', %(items)s::jsonb, %(tag)s)
RETURNING id

-- name: bench_table_sizes
-- Bytes on disk (heap, indexes, TOAST) of the tables history grows.
SELECT pg_total_relation_size('attune.task_execution'),
       pg_total_relation_size('attune.execution_event'),
       pg_total_relation_size('attune.workflow_execution'),
       pg_total_relation_size('attune.task_state')

-- name: bench_start_latency
-- Submitted (the execution's created_at) to its first task started, in ms: what a client
-- waits before its work begins (the peers-bench latency).
SELECT percentile_cont(ARRAY[0.5, 0.95, 0.99]) WITHIN GROUP
       (ORDER BY extract(epoch FROM f.first - e.created_at) * 1000)
  FROM attune.workflow_execution e
  JOIN LATERAL (SELECT min(t.started_at) AS first FROM attune.task_execution t
                 WHERE t.workflow_execution_id = e.id) f ON true
 WHERE e.id = ANY(%(ids)s::bigint[])
