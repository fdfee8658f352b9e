-- The hand-written plpgsql of 0002_state_machine.sql, which store/sqlgen.py joins with
-- the parts it generates from machine.py (status CHECKs, the legal-move tables, the
-- guard functions). Not a migration (its name has no number): 0002 is the migration, and
-- tests/integration/test_machine_sql.py proves it is exactly what sqlgen writes.
-- Each part runs from its `-- @part NAME` line to the next, less the last newline.
-- @part functions

-- Refuses an INSERT with an unknown or disabled ref or non-object parameters, and
-- snapshots the definition and pack config the execution will run with.
CREATE FUNCTION attune.prepare_workflow_execution() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    def record;
BEGIN
    IF NEW.workflow_ref IS NULL THEN
        RAISE EXCEPTION 'workflow_ref is required' USING ERRCODE = 'not_null_violation';
    END IF;
    SELECT d.definition, d.enabled, p.config INTO def
      FROM attune.workflow_definition d JOIN attune.pack p ON p.ref = d.pack_ref
     WHERE d.ref = NEW.workflow_ref;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown workflow %', quote_literal(NEW.workflow_ref)
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'register its pack first: attune-pg packs register PATH';
    END IF;
    IF NOT def.enabled THEN
        RAISE EXCEPTION 'workflow % is disabled', quote_literal(NEW.workflow_ref)
            USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.parameters IS NULL OR jsonb_typeof(NEW.parameters) <> 'object' THEN
        RAISE EXCEPTION 'parameters of workflow % must be a JSON object, got %',
            quote_literal(NEW.workflow_ref), coalesce(jsonb_typeof(NEW.parameters), 'null')
            USING ERRCODE = 'check_violation';
    END IF;
    NEW.definition := def.definition;
    NEW.pack_config := def.config;
    RETURN NEW;
END $$;

CREATE TRIGGER workflow_execution_10_prepare BEFORE INSERT ON attune.workflow_execution
    FOR EACH ROW EXECUTE FUNCTION attune.prepare_workflow_execution();

-- A new execution is audited and announced only once the row really exists.
CREATE FUNCTION attune.announce_workflow_execution() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO attune.execution_event (workflow_execution_id, kind, from_status, to_status)
    VALUES (NEW.id, 'workflow_status', NULL, NEW.status);
    PERFORM pg_notify('attune_start', '');
    PERFORM pg_notify('attune_execution', NEW.id::text || ':' || NEW.status);
    RETURN NULL;
END $$;
CREATE TRIGGER workflow_execution_30_announce AFTER INSERT ON attune.workflow_execution
    FOR EACH ROW EXECUTE FUNCTION attune.announce_workflow_execution();

-- The audit log is append-only.
CREATE FUNCTION attune.refuse_update() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only', TG_TABLE_NAME USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER execution_event_append_only BEFORE UPDATE ON attune.execution_event
    FOR EACH ROW EXECUTE FUNCTION attune.refuse_update();

-- @part after_guard_workflow

    IF NEW.status IN ('succeeded', 'failed', 'canceled', 'timed_out') THEN
        NEW.finished_at := coalesce(NEW.finished_at, now());
    END IF;
    NEW.updated_at := now();
    IF TG_OP = 'INSERT' THEN
        RETURN NEW;  -- audited AFTER INSERT: an ON CONFLICT DO NOTHING must leave no trace
    END IF;
    INSERT INTO attune.execution_event (workflow_execution_id, kind, from_status, to_status, data)
    VALUES (NEW.id, 'workflow_status', OLD.status, NEW.status,
            CASE WHEN NEW.error IS NOT NULL THEN jsonb_build_object('error', NEW.error) END);
    PERFORM pg_notify('attune_execution', NEW.id::text || ':' || NEW.status);
    IF NEW.parent_task_id IS NOT NULL
       AND NEW.status IN ('succeeded', 'failed', 'canceled', 'timed_out') THEN
        PERFORM pg_notify('attune_control', '');  -- the parent's task can resume
    END IF;
-- @part after_guard_task

    IF NEW.status IN ('succeeded', 'failed', 'canceled', 'timed_out', 'skipped') THEN
        NEW.finished_at := coalesce(NEW.finished_at, now());
    END IF;
    NEW.updated_at := now();
    INSERT INTO attune.execution_event
        (workflow_execution_id, task_execution_id, task_name, kind, from_status, to_status, data)
    VALUES (NEW.workflow_execution_id, NEW.id, NEW.task_name, 'task_status',
            CASE WHEN TG_OP = 'UPDATE' THEN OLD.status END, NEW.status,
            jsonb_build_object('attempt', NEW.attempt, 'iteration', NEW.iteration,
                               'item_index', NEW.item_index, 'worker', NEW.lease_owner));
    IF NEW.status = 'scheduled' THEN
        PERFORM pg_notify('attune_work', '');
    END IF;
-- @part after_guard_task_state

    IF NEW.status IN ('succeeded', 'failed', 'canceled', 'timed_out', 'skipped') THEN
        NEW.finished_at := coalesce(NEW.finished_at, now());
    END IF;
