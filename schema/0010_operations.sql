-- Operations: trace ids, retention (attune.prune) and the indexes both need.
-- Documented in docs/operations.md ("Tracing and logs", "Vacuum and retention").

-- ---------------------------------------------------------------- trace ids

-- One trace id per root execution (W3C trace-context format: 32 lowercase hex digits),
-- inherited by every child execution, logged with every state change and handed to
-- actions as ATTUNE_TRACE_ID. A client may pass its own (its request's trace id) in the
-- INSERT. Added without a default first, so existing rows are not rewritten; they keep
-- NULL and the worker derives a stable id from the root execution id for them.
ALTER TABLE attune.workflow_execution ADD COLUMN trace_id text;
ALTER TABLE attune.workflow_execution
    ALTER COLUMN trace_id SET DEFAULT replace(gen_random_uuid()::text, '-', '');
-- NOT VALID: checked for every new row, without scanning the existing ones.
ALTER TABLE attune.workflow_execution
    ADD CONSTRAINT workflow_execution_trace_id_format
    CHECK (trace_id ~ '^[0-9a-f]{32}$' AND trace_id <> repeat('0', 32)) NOT VALID;

-- Children inherit the root's trace id, whoever inserts them. The WHEN clause keeps the
-- function call off top-level inserts (the bulk of them).
CREATE FUNCTION attune.inherit_trace_id() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, attune, pg_temp AS $$
BEGIN
    NEW.trace_id := coalesce(
        (SELECT r.trace_id FROM attune.workflow_execution r WHERE r.id = NEW.root_id),
        NEW.trace_id);
    RETURN NEW;
END $$;
CREATE TRIGGER workflow_execution_15_trace BEFORE INSERT ON attune.workflow_execution
    FOR EACH ROW WHEN (NEW.root_id IS NOT NULL) EXECUTE FUNCTION attune.inherit_trace_id();

GRANT INSERT (trace_id) ON attune.workflow_execution TO attune_submitter;

-- ---------------------------------------------------------------- workflow limits

-- The limits that were constants, as settings (docs/operations.md, "Limits and
-- settings"): workers read them with the others, at connect and every 30 s.
INSERT INTO attune.setting (name, value, description) VALUES
    ('max_iterations', '100',
     'times one task may be triggered in one execution (a cycle past it fails the workflow)'),
    ('max_depth', '10', 'levels of nested workflows below a root execution'),
    ('max_items', '100000', 'items of one with-items list'),
    ('max_result_bytes', '1048576',
     'JSON text (bytes) of one action result, at most 1048576 (the runners'' own ceiling)'),
    ('max_context_bytes', '16777216',
     'JSON text (bytes) of an execution''s variables after a publish')
ON CONFLICT (name) DO NOTHING;

-- ---------------------------------------------------------------- retention

-- Finished top-level executions by age: what prune walks, oldest first, without
-- scanning history. The row changes that feed it (status and finished_at, together)
-- are already non-HOT updates, so this costs one index insert per finished execution.
CREATE INDEX workflow_execution_finished ON attune.workflow_execution (finished_at)
    WHERE parent_task_id IS NULL AND status IN ('succeeded', 'failed', 'canceled', 'timed_out');
-- The descendants of a root (children, grandchildren...): their audit rows and secrets.
CREATE INDEX workflow_execution_root ON attune.workflow_execution (root_id)
    WHERE root_id IS NOT NULL;
-- The ON DELETE CASCADE from workflow_execution to inquiry looks rows up by this column.
CREATE INDEX inquiry_execution ON attune.inquiry (workflow_execution_id);
-- Secret parameters are kept in kv as execution/<id>/<name>; prune deletes them too.
CREATE INDEX kv_execution_secret ON attune.kv ((split_part(key, '/', 2)))
    WHERE key LIKE 'execution/%';

-- Delete one batch of finished top-level executions whose finished_at is older than
-- `older_than`, with everything that belongs to them, and up to `batch` events (schema
-- 0009) older than that which no remaining execution came from; returns how many
-- executions and events it deleted (0: nothing left). Call it until it returns 0 (or
-- CALL attune.prune_all, below): each call is one short transaction, so workers keep
-- running meanwhile. A family with any execution still live is left alone; rows another
-- session holds locked are skipped (the next call gets them).
CREATE FUNCTION attune.prune(
    older_than interval DEFAULT interval '30 days',
    batch int DEFAULT 1000,
    statuses text[] DEFAULT NULL
) RETURNS integer
LANGUAGE plpgsql AS $$
DECLARE
    finished constant text[] := ARRAY['succeeded', 'failed', 'canceled', 'timed_out'];
    wanted text[] := coalesce(statuses, finished);
    bad text;
    doomed bigint[];
    family bigint[];
    events integer := 0;
BEGIN
    IF older_than IS NULL OR older_than < interval '0' THEN
        RAISE EXCEPTION 'prune: older_than must be a positive interval, got %', coalesce(older_than::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF batch IS NULL OR batch < 1 OR batch > 100000 THEN
        RAISE EXCEPTION 'prune: batch must be between 1 and 100000, got %', coalesce(batch::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT s INTO bad FROM unnest(wanted) s WHERE s IS NULL OR NOT s = ANY(finished) LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION 'prune: status % is not a finished status (succeeded, failed, canceled, timed_out)',
            quote_nullable(bad) USING ERRCODE = 'invalid_parameter_value';
    END IF;

    SELECT array_agg(id) INTO doomed FROM (
        SELECT e.id FROM attune.workflow_execution e
         WHERE e.parent_task_id IS NULL
           AND e.status IN ('succeeded', 'failed', 'canceled', 'timed_out')
           AND e.status = ANY(wanted)
           AND e.finished_at < now() - older_than
           AND NOT EXISTS (SELECT 1 FROM attune.workflow_execution c
                            WHERE c.root_id = e.id
                              AND c.status NOT IN ('succeeded', 'failed', 'canceled', 'timed_out'))
         ORDER BY e.finished_at
         LIMIT batch
           FOR UPDATE OF e SKIP LOCKED) d;

    -- Workers that have not heartbeated for that long are gone for good.
    DELETE FROM attune.worker WHERE heartbeat_at < now() - older_than;
    IF doomed IS NOT NULL THEN
        family := doomed || ARRAY(SELECT id FROM attune.workflow_execution
                                   WHERE root_id = ANY(doomed));
        -- What belongs to an execution without a cascading foreign key: a line per table.
        DELETE FROM attune.execution_event WHERE workflow_execution_id = ANY(family);
        DELETE FROM attune.kv
         WHERE key LIKE 'execution/%' AND split_part(key, '/', 2) = ANY(family::text[]);
        DELETE FROM attune.enforcement WHERE workflow_execution_id = ANY(family);
        -- task_state, task_execution, inquiry and the child executions (and theirs) go
        -- with the root by ON DELETE CASCADE.
        DELETE FROM attune.workflow_execution WHERE id = ANY(doomed);
    END IF;
    -- Old events that started no execution still kept (their other enforcements go with
    -- them by cascade); a pending one is still to be matched.
    IF statuses IS NULL THEN
        DELETE FROM attune.event WHERE id IN (
            SELECT v.id FROM attune.event v
             WHERE v.created_at < now() - older_than AND v.status <> 'pending'
               AND NOT EXISTS (SELECT 1 FROM attune.enforcement f
                                WHERE f.event_id = v.id AND f.workflow_execution_id IS NOT NULL)
             ORDER BY v.created_at
             LIMIT batch
               FOR UPDATE SKIP LOCKED);
        GET DIAGNOSTICS events = ROW_COUNT;
    END IF;
    RETURN coalesce(cardinality(doomed), 0) + events;
END $$;

-- All batches, each committed on its own (for pg_cron: CALL attune.prune_all('30 days')).
-- A procedure, not a function, because only a procedure may COMMIT between batches.
-- `duty` < 1 throttles: after a batch that took t seconds it sleeps t * (1 - duty) / duty,
-- leaving the server to the workers (attune-pg prune uses 0.25 by default).
CREATE PROCEDURE attune.prune_all(
    older_than interval DEFAULT interval '30 days',
    batch int DEFAULT 1000,
    statuses text[] DEFAULT NULL,
    duty float8 DEFAULT 1
)
LANGUAGE plpgsql AS $$
DECLARE
    n integer;
    began timestamptz;
BEGIN
    IF duty IS NULL OR duty <= 0 OR duty > 1 THEN
        RAISE EXCEPTION 'prune_all: duty must be in (0, 1], got %', coalesce(duty::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    LOOP
        began := clock_timestamp();
        n := attune.prune(older_than, batch, statuses);
        COMMIT;
        EXIT WHEN n = 0;
        IF duty < 1 THEN
            PERFORM pg_sleep(extract(epoch FROM clock_timestamp() - began) * (1 - duty) / duty);
        END IF;
    END LOOP;
END $$;

-- Deleting history is for the schema owner (and whom it grants), not for the run-time roles.
REVOKE EXECUTE ON FUNCTION attune.prune(interval, int, text[]) FROM PUBLIC;
REVOKE EXECUTE ON PROCEDURE attune.prune_all(interval, int, text[], float8) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION attune.inherit_trace_id() FROM PUBLIC;
