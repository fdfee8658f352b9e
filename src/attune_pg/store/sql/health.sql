-- name: server_facts
-- The server and the settings durability depends on; how full its connection slots are.
SELECT current_setting('server_version') AS version,
       current_setting('server_version_num')::int AS version_num,
       current_setting('fsync') AS fsync,
       current_setting('synchronous_commit') AS synchronous_commit,
       current_setting('full_page_writes') AS full_page_writes,
       current_database() AS database, current_user AS login,
       current_setting('max_connections')::int AS max_connections,
       (SELECT count(*) FROM pg_stat_activity)::int AS connections,
       (SELECT rolsuper OR pg_has_role(current_user, 'pg_read_all_stats', 'USAGE')
          FROM pg_roles WHERE rolname = current_user) AS sees_all_sessions

-- name: worker_health
-- Workers alive, and those lost (no heartbeat for 30 s, no clean stop) in the last day,
-- with the running tasks each still holds.
SELECT w.id, w.hostname, w.pid, w.state,
       extract(epoch FROM now() - w.heartbeat_at)::float8 AS silent_for,
       (SELECT count(*) FROM attune.task_execution t
         WHERE t.status = 'running' AND t.lease_owner = w.id)::int AS holding
  FROM attune.worker_status w
 WHERE w.state = 'alive'
    OR (w.state = 'lost' AND w.heartbeat_at > now() - interval '1 day')
 ORDER BY w.state, w.heartbeat_at DESC

-- name: queue_backlog
-- Is anything waiting for a worker? (Bounded: existence only.)
SELECT EXISTS (SELECT 1 FROM attune.task_execution
                WHERE status = 'scheduled' AND run_at <= now()) AS tasks_ready,
       EXISTS (SELECT 1 FROM attune.workflow_execution WHERE status = 'requested')
           AS executions_requested

-- name: stuck_summary
-- The reasons of attune.stuck_tasks, counted per reason, each from a partial index of
-- live rows; plus executions that can no longer move (running or canceling, no live
-- task row, unchanged for ten minutes).
SELECT
    (SELECT count(*) FROM attune.task_execution
      WHERE status = 'running' AND lease_expires_at < now())::int AS lease_expired,
    (SELECT extract(epoch FROM now() - min(lease_expires_at)) FROM attune.task_execution
      WHERE status = 'running' AND lease_expires_at < now())::float8 AS lease_expired_for,
    (SELECT count(*) FROM attune.task_execution
      WHERE status = 'scheduled' AND run_at < now() - interval '1 minute')::int AS unclaimed,
    (SELECT extract(epoch FROM now() - min(run_at)) FROM attune.task_execution
      WHERE status = 'scheduled' AND run_at < now() - interval '1 minute')::float8
        AS unclaimed_for,
    ((SELECT count(*) FROM attune.task_execution WHERE status = 'scheduled' AND claims > 3)
     + (SELECT count(*) FROM attune.task_execution WHERE status = 'running' AND claims > 3))::int
        AS reclaimed,
    (SELECT array_agg(id ORDER BY id) FROM (
        SELECT e.id FROM attune.workflow_execution e
         WHERE e.status IN ('running', 'canceling')
           AND e.updated_at < now() - interval '10 minutes'
           AND NOT EXISTS (SELECT 1 FROM attune.task_execution t
                            WHERE t.workflow_execution_id = e.id
                              AND t.status IN ('pending', 'scheduled', 'running', 'waiting'))
         ORDER BY e.id LIMIT 20) s) AS stalled

-- name: snapshot_oldest
-- The session whose snapshot is oldest (what holds back vacuum of this database's
-- tables: sessions of this database, and replication connections), other than this one.
SELECT pid, usename AS login, application_name, state, age(backend_xmin)::bigint AS xid_age,
       extract(epoch FROM now() - coalesce(xact_start, query_start))::float8 AS seconds,
       left(regexp_replace(query, '\s+', ' ', 'g'), 80) AS query
  FROM pg_stat_activity
 WHERE backend_xmin IS NOT NULL AND pid <> pg_backend_pid()
   AND (datname = current_database() OR backend_type = 'walsender')
 ORDER BY age(backend_xmin) DESC, xact_start
 LIMIT 1

-- name: snapshot_holders
-- Prepared transactions and inactive replication slots also hold back vacuum.
SELECT 'prepared transaction ' || quote_literal(gid) AS holder,
       extract(epoch FROM now() - prepared)::float8 AS seconds,
       'COMMIT PREPARED ' || quote_literal(gid) || ' or ROLLBACK PREPARED ' || quote_literal(gid)
           AS fix
  FROM pg_prepared_xacts
UNION ALL
SELECT 'inactive replication slot ' || quote_literal(slot_name), NULL,
       'SELECT pg_drop_replication_slot(' || quote_literal(slot_name) || ') if nothing uses it'
  FROM pg_replication_slots
 WHERE NOT active AND (xmin IS NOT NULL OR catalog_xmin IS NOT NULL)

-- name: dead_tuples
-- Live and dead rows of the hot tables (the statistics collector's estimates).
SELECT relname AS table_name, n_live_tup::bigint AS live, n_dead_tup::bigint AS dead,
       extract(epoch FROM now() - greatest(last_autovacuum, last_vacuum))::float8
           AS vacuumed_ago
  FROM pg_stat_user_tables
 WHERE schemaname = 'attune'
   AND relname IN ('task_execution', 'task_state', 'workflow_execution', 'inquiry', 'worker')
 ORDER BY relname

-- name: notify_usage
SELECT pg_notification_queue_usage()::float8 AS usage
