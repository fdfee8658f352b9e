-- Least privilege: three NOLOGIN group roles, so nobody needs superuser (or to own
-- the schema) at run time. Operators create login users and grant them a role:
--     CREATE ROLE worker_1 LOGIN PASSWORD '...' IN ROLE attune_worker;
-- The role that applies migrations owns the schema and everything in it; it alone
-- registers packs, writes kv and changes the schema. Documented in docs/operations.md
-- ("Roles and least privilege").
--
--   attune_reader     the helper views only (dashboards, monitoring).
--   attune_submitter  reads every table but attune.kv; starts executions (INSERT of the
--                     documented columns, or attune.start_execution) and controls them
--                     through the control functions; changes no row directly.
--   attune_worker     reads everything (kv included: it resolves secrets), writes the
--                     execution tables; no DELETE, no DDL, no catalog or kv writes.
--
-- Roles belong to the cluster, privileges to one database: this migration runs once in
-- every database that holds an attune schema, so role creation is idempotent and
-- tolerates another database's migration creating the same role concurrently.
-- A later migration that adds a table, view or function grants it in the same file.

DO $$
DECLARE
    name text;
BEGIN
    FOREACH name IN ARRAY ARRAY['attune_reader', 'attune_submitter', 'attune_worker'] LOOP
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles WHERE rolname = name) THEN
            BEGIN
                EXECUTE format('CREATE ROLE %I NOLOGIN', name);
                EXECUTE format('COMMENT ON ROLE %I IS %L', name, CASE name
                    WHEN 'attune_reader' THEN 'attune_pg: reads the helper views'
                    WHEN 'attune_submitter' THEN 'attune_pg: starts and controls workflow executions'
                    ELSE 'attune_pg: runs workflow tasks (attune-worker)' END);
            EXCEPTION WHEN duplicate_object OR unique_violation THEN
                NULL;  -- created meanwhile by a migration in another database
            END;
        END IF;
    END LOOP;
END $$;

-- ---------------------------------------------------------------- definer functions

-- Triggers run with the rights of whoever fires them. The guard triggers write the
-- audit log (attune.execution_event) and the prepare trigger reads definitions and pack
-- config: as SECURITY DEFINER they do so with the owner's rights, so a submitter's
-- INSERT needs no privilege on either, and cannot forge audit rows. Every trigger
-- function of the schema, whichever migration created it.
DO $$
DECLARE
    fn regprocedure;
BEGIN
    FOR fn IN
        SELECT p.oid::regprocedure FROM pg_catalog.pg_proc p
         WHERE p.pronamespace = 'attune'::regnamespace
           AND p.prorettype = 'pg_catalog.trigger'::regtype
    LOOP
        EXECUTE format('ALTER FUNCTION %s SECURITY DEFINER SET search_path = pg_catalog, attune, pg_temp', fn);
    END LOOP;
END $$;

-- The SQL API: each function checks its request itself and makes only the moves the
-- state machine allows, so callers need no UPDATE on any table.
ALTER FUNCTION attune.start_execution(text, jsonb, text, int, text)
    SECURITY DEFINER SET search_path = pg_catalog, attune, pg_temp;
ALTER FUNCTION attune.cancel_execution(bigint, text)
    SECURITY DEFINER SET search_path = pg_catalog, attune, pg_temp;
ALTER FUNCTION attune.pause_execution(bigint)
    SECURITY DEFINER SET search_path = pg_catalog, attune, pg_temp;
ALTER FUNCTION attune.resume_execution(bigint)
    SECURITY DEFINER SET search_path = pg_catalog, attune, pg_temp;
ALTER FUNCTION attune.retry_execution(bigint)
    SECURITY DEFINER SET search_path = pg_catalog, attune, pg_temp;
ALTER FUNCTION attune.respond_inquiry(bigint, jsonb, text)
    SECURITY DEFINER SET search_path = pg_catalog, attune, pg_temp;

-- Inside a definer function current_user is the owner, so the audit log names the
-- login that made the change instead (the worker's or the submitter's user).
-- (requested_by and respond_inquiry's `who` default to current_user at the call
-- site, which still is the caller.)
ALTER TABLE attune.execution_event ALTER COLUMN actor SET DEFAULT session_user;

-- Functions are executable by PUBLIC unless revoked.
REVOKE EXECUTE ON FUNCTION
    attune.start_execution(text, jsonb, text, int, text),
    attune.cancel_execution(bigint, text),
    attune.pause_execution(bigint),
    attune.resume_execution(bigint),
    attune.retry_execution(bigint),
    attune.respond_inquiry(bigint, jsonb, text),
    attune.lock_execution(bigint),
    attune.request_control(bigint)
FROM PUBLIC;

GRANT EXECUTE ON FUNCTION
    attune.start_execution(text, jsonb, text, int, text),
    attune.cancel_execution(bigint, text),
    attune.pause_execution(bigint),
    attune.resume_execution(bigint),
    attune.retry_execution(bigint),
    attune.respond_inquiry(bigint, jsonb, text)
TO attune_submitter;

-- ---------------------------------------------------------------- schema and views

GRANT USAGE ON SCHEMA attune TO attune_reader, attune_submitter, attune_worker;

-- Views run with their owner's rights: SELECT on the view is all a reader needs.
GRANT SELECT ON
    attune.workflow_execution_summary,
    attune.workflow_task_detail,
    attune.workflow_action_link,
    attune.queue_depth,
    attune.stuck_tasks,
    attune.worker_status,
    attune.pending_inquiries
TO attune_reader, attune_submitter, attune_worker;

-- Reference tables with no execution data; schema_migration lets any role check that
-- the schema is current (attune-pg calls migrate on connect).
GRANT SELECT ON attune.schema_migration, attune.status_transition, attune.status_initial
TO attune_reader, attune_submitter, attune_worker;

-- ---------------------------------------------------------------- submitter

-- Reading: everything but the key-value store (secrets).
GRANT SELECT ON
    attune.pack, attune.action, attune.workflow_definition,
    attune.workflow_execution, attune.task_state, attune.task_execution,
    attune.inquiry, attune.worker, attune.execution_event
TO attune_submitter;

-- Starting: the documented INSERT, and only its columns (status, definition snapshot,
-- parent, vars... are the engine's). An identity column needs no sequence privilege.
GRANT INSERT (workflow_ref, parameters, idempotency_key, priority, requested_by)
    ON attune.workflow_execution TO attune_submitter;

-- ---------------------------------------------------------------- worker

GRANT SELECT ON
    attune.pack, attune.action, attune.workflow_definition,
    attune.workflow_execution, attune.task_state, attune.task_execution,
    attune.inquiry, attune.worker, attune.execution_event, attune.kv
TO attune_worker;

-- The execution tables: claims, leases, states, child executions, inquiries, heartbeats.
-- No DELETE: nothing the worker does removes a row.
GRANT INSERT, UPDATE ON
    attune.workflow_execution, attune.task_state, attune.task_execution,
    attune.inquiry, attune.worker
TO attune_worker;

-- Published variables are appended to the audit log (status events come from the
-- definer triggers). Append-only: no UPDATE or DELETE.
GRANT INSERT ON attune.execution_event TO attune_worker;

-- Parameters marked `secret: true`: when an execution starts, the worker moves each
-- value into kv under `execution/<id>/<name>` (secret) and keeps only a token in
-- `parameters`. Workers may write exactly these keys, through this function only.
CREATE OR REPLACE FUNCTION attune.stash_secret_parameter(execution_id bigint, name text, value jsonb)
RETURNS text
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, attune, pg_temp AS $$
    INSERT INTO attune.kv (key, value, secret)
    VALUES ('execution/' || execution_id || '/' || name, value, true)
    ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value, secret = true
    RETURNING key;
$$;
REVOKE EXECUTE ON FUNCTION attune.stash_secret_parameter(bigint, text, jsonb) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION attune.stash_secret_parameter(bigint, text, jsonb) TO attune_worker;
