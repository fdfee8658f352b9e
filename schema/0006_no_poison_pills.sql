-- No poison pills: one bad input, one tenant or one role must never stop or rob the others.
--
--   * attune.setting: the limits the owner configures, in one table (docs/operations.md,
--     "Limits and settings"); attune.setting_int(name) reads one from SQL.
--   * JSON bounds where values enter: execution parameters (the INSERT trigger, so
--     start_execution too), inquiry responses, kv values. An error names the limit.
--   * A submitter's priority is bounded (priority_min .. priority_max).
--   * Secret parameters move to kv in the INSERT itself: the row never shows them.
--   * Per-root budget of descendant executions and task rows (attune.execution_budget).
--   * Fair share: claims order by a fair key that interleaves executions.
--   * Secret tokens are signed with a key only the worker role (and the owner) can read.
--   * attune_worker loses what it does not need: UPDATE of definitions, inputs, action
--     refs (column privileges), audit rows of its own (a definer function writes the
--     publish events), forged inquiry answers; parameters freeze once an execution runs.
--   * respond_inquiry: `who` may not be NULL; responses are bounded.

-- ---------------------------------------------------------------- settings

CREATE TABLE attune.setting (
    name         text PRIMARY KEY CHECK (name ~ '^[a-z][a-z0-9_]*$'),
    value        jsonb NOT NULL,
    description  text NOT NULL DEFAULT ''
);

-- Adding a limit: one row here (in the migration that introduces it) and one row in the
-- table of docs/operations.md ("Limits and settings"). Change one with
--   UPDATE attune.setting SET value = '20000' WHERE name = 'max_descendants';
INSERT INTO attune.setting (name, value, description) VALUES
    ('json_max_depth', '100',
     'deepest nesting of arrays/objects in a JSON value that enters (parameters, inquiry responses, kv values, action results)'),
    ('json_max_bytes', '4194304',
     'largest JSON text (bytes) of parameters, inquiry responses and kv values'),
    ('priority_min', '-100', 'lowest priority an execution may be started with (lower runs first)'),
    ('priority_max', '100', 'highest priority an execution may be started with'),
    ('max_descendants', '10000',
     'nested (child) executions one root execution may create, all levels together'),
    ('max_task_rows', '100000',
     'task rows (attempts and with-items items) one root execution and its descendants may create');

-- One integer setting; an unknown name is an error (a typo must not mean "no limit").
CREATE FUNCTION attune.setting_int(setting_name text) RETURNS bigint
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, attune, pg_temp AS $$
DECLARE
    setting_value jsonb;
BEGIN
    SELECT s.value INTO setting_value FROM attune.setting s WHERE s.name = setting_name;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown setting %', quote_literal(setting_name)
            USING ERRCODE = 'undefined_object', HINT = 'see SELECT * FROM attune.setting';
    END IF;
    IF jsonb_typeof(setting_value) <> 'number' THEN
        RAISE EXCEPTION 'setting % must be a number, is %', quote_literal(setting_name), setting_value
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN (setting_value #>> '{}')::numeric::bigint;
END $$;

-- ---------------------------------------------------------------- JSON bounds

-- Refuses `value` when its JSON text is larger than `max_bytes` or it nests deeper than
-- `max_depth` arrays/objects; the error names `what` and the setting. The depth walk
-- ('$.**{n}') stops at level n, so its cost is bounded whatever the value.
CREATE FUNCTION attune.json_check(value jsonb, what text, max_depth bigint, max_bytes bigint)
RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    size bigint;
BEGIN
    IF value IS NULL THEN
        RETURN;
    END IF;
    size := octet_length(value::text);
    IF size > max_bytes THEN
        RAISE EXCEPTION '%: % bytes of JSON, over the limit of % bytes (setting json_max_bytes)',
            what, size, max_bytes USING ERRCODE = 'program_limit_exceeded';
    END IF;
    -- Nesting n needs at least 2n characters: small values cannot be too deep.
    IF size > 2 * max_depth
       AND jsonb_path_exists(value, format('strict $.**{%s}', max_depth + 1)::jsonpath) THEN
        RAISE EXCEPTION '%: nested deeper than % levels (setting json_max_depth)', what, max_depth
            USING ERRCODE = 'program_limit_exceeded';
    END IF;
END $$;

CREATE FUNCTION attune.json_check(value jsonb, what text) RETURNS void
LANGUAGE sql STABLE AS $$
    SELECT attune.json_check(value, what, attune.setting_int('json_max_depth'),
                             attune.setting_int('json_max_bytes'));
$$;

-- The INSERT of an execution (plain INSERT, start_execution, a worker's child): the
-- 0002 checks, plus the JSON bounds of the parameters and the priority range.
CREATE OR REPLACE FUNCTION attune.prepare_workflow_execution() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, attune, pg_temp AS $$
DECLARE
    def record;
    lim record;
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
    -- One read of the four settings this needs.
    SELECT max((value #>> '{}')::numeric) FILTER (WHERE name = 'json_max_depth') AS depth,
           max((value #>> '{}')::numeric) FILTER (WHERE name = 'json_max_bytes') AS bytes,
           max((value #>> '{}')::numeric) FILTER (WHERE name = 'priority_min') AS pmin,
           max((value #>> '{}')::numeric) FILTER (WHERE name = 'priority_max') AS pmax
      INTO lim FROM attune.setting
     WHERE name IN ('json_max_depth', 'json_max_bytes', 'priority_min', 'priority_max');
    PERFORM attune.json_check(NEW.parameters,
        format('parameters of workflow %s', quote_literal(NEW.workflow_ref)),
        lim.depth::bigint, lim.bytes::bigint);
    IF NEW.priority < lim.pmin OR NEW.priority > lim.pmax THEN
        RAISE EXCEPTION 'priority % is outside the allowed range % .. % (settings priority_min, priority_max)',
            NEW.priority, lim.pmin, lim.pmax USING ERRCODE = 'check_violation';
    END IF;
    NEW.definition := def.definition;
    NEW.pack_config := def.config;
    RETURN NEW;
END $$;

-- kv values (attune-pg kv set, or SQL by the owner) are bounded too.
CREATE FUNCTION attune.check_kv_value() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, attune, pg_temp AS $$
BEGIN
    PERFORM attune.json_check(NEW.value, format('kv value of %s', quote_literal(NEW.key)));
    RETURN NEW;
END $$;
CREATE TRIGGER kv_10_check BEFORE INSERT OR UPDATE OF value ON attune.kv
    FOR EACH ROW EXECUTE FUNCTION attune.check_kv_value();

-- ---------------------------------------------------------------- secret parameters

-- Parameters marked `secret: true` leave the row in the INSERT that brings them: each
-- value goes to kv under execution/<id>/<name> (secret) and the row keeps a reference
-- token, whatever validation later says. AFTER INSERT, so an idempotent INSERT that
-- conflicts (ON CONFLICT DO NOTHING) leaves nothing in kv.
CREATE OR REPLACE FUNCTION attune.announce_workflow_execution() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, attune, pg_temp AS $$
DECLARE
    param text;
    kv_key text;
    moved jsonb := '{}';
BEGIN
    IF NEW.parameters <> '{}' THEN
        FOR param IN
            SELECT p.key FROM jsonb_each(NEW.definition #> '{parameters,properties}') AS p
             WHERE jsonb_typeof(p.value) = 'object' AND p.value -> 'secret' = 'true'::jsonb
               AND NEW.parameters ? p.key
        LOOP
            kv_key := 'execution/' || NEW.id || '/' || param;
            INSERT INTO attune.kv AS k (key, value, secret) VALUES (kv_key, NEW.parameters -> param, true)
            ON CONFLICT ON CONSTRAINT kv_pkey DO UPDATE SET value = EXCLUDED.value, secret = true, updated_at = now();
            moved := moved || jsonb_build_object(param, U&'\27E6secret:' || kv_key || U&'\27E7');
        END LOOP;
        IF moved <> '{}' THEN
            UPDATE attune.workflow_execution SET parameters = parameters || moved WHERE id = NEW.id;
        END IF;
    END IF;
    INSERT INTO attune.execution_event (workflow_execution_id, kind, from_status, to_status)
    VALUES (NEW.id, 'workflow_status', NULL, NEW.status);
    PERFORM pg_notify('attune_start', '');
    PERFORM pg_notify('attune_execution', NEW.id::text || ':' || NEW.status);
    RETURN NULL;
END $$;

-- Workers may no longer write kv at all: the INSERT trigger above stashes.
DROP FUNCTION attune.stash_secret_parameter(bigint, text, jsonb);

-- What an execution runs with is fixed once it runs: parameters change only while it
-- is `requested` (the start writes the defaults in). For everyone, the owner included.
CREATE FUNCTION attune.freeze_parameters() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, attune, pg_temp AS $$
BEGIN
    IF OLD.status <> 'requested' THEN
        RAISE EXCEPTION 'execution %: parameters cannot change once it has started (it is %)',
            OLD.id, OLD.status USING ERRCODE = 'insufficient_privilege';
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER workflow_execution_15_freeze BEFORE UPDATE OF parameters ON attune.workflow_execution
    FOR EACH ROW WHEN (OLD.parameters IS DISTINCT FROM NEW.parameters)
    EXECUTE FUNCTION attune.freeze_parameters();

-- ---------------------------------------------------------------- inquiries

-- `who` may not be NULL (a NULL used to skip the assignee check); the response is
-- bounded like every JSON value that enters.
CREATE OR REPLACE FUNCTION attune.respond_inquiry(inquiry_id bigint, response jsonb, who text DEFAULT current_user)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, attune, pg_temp AS $$
DECLARE
    execution_id bigint;
    q attune.inquiry;
    problem text;
BEGIN
    IF who IS NULL OR who = '' THEN
        RAISE EXCEPTION 'inquiry %: who must name the person or application answering', inquiry_id
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM attune.json_check(response, format('inquiry %s response', inquiry_id));
    SELECT i.workflow_execution_id INTO execution_id FROM attune.inquiry i WHERE i.id = inquiry_id;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'inquiry % does not exist', inquiry_id USING ERRCODE = 'no_data_found';
    END IF;
    PERFORM attune.lock_execution(execution_id);  -- lock order: workflow row first
    SELECT * INTO q FROM attune.inquiry i WHERE i.id = inquiry_id FOR UPDATE;
    IF q.status <> 'pending' THEN
        RAISE EXCEPTION 'inquiry % is already %', inquiry_id, q.status
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF q.expires_at IS NOT NULL AND q.expires_at < now() THEN
        RAISE EXCEPTION 'inquiry % expired at %', inquiry_id, q.expires_at
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF q.assigned_to IS NOT NULL AND q.assigned_to <> ''
       AND NOT (who = ANY (string_to_array(replace(q.assigned_to, ' ', ''), ','))) THEN
        RAISE EXCEPTION 'inquiry % is assigned to %: % may not respond', inquiry_id, q.assigned_to,
            quote_literal(who) USING ERRCODE = 'insufficient_privilege';
    END IF;
    IF strpos(response::text, U&'\27E6secret:') > 0 THEN
        RAISE EXCEPTION 'inquiry %: a response may not contain secret tokens', inquiry_id
            USING ERRCODE = 'check_violation';
    END IF;
    problem := attune.json_schema_error(q.schema, response);
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'inquiry %: %', inquiry_id, problem USING ERRCODE = 'check_violation';
    END IF;
    UPDATE attune.inquiry
       SET status = 'responded', response = respond_inquiry.response, responded_by = who,
           responded_at = now()
     WHERE id = inquiry_id;
    -- Audited with the login that really answered (`who` is what the caller claims).
    INSERT INTO attune.execution_event (workflow_execution_id, task_execution_id, kind, data, actor)
    VALUES (execution_id, q.task_execution_id, 'inquiry_response',
            jsonb_build_object('inquiry_id', inquiry_id, 'responded_by', who), session_user);
    PERFORM pg_notify('attune_control', '');
    RETURN 'responded';
END $$;

-- An answer exists only through respond_inquiry: a row cannot be marked responded without
-- one (workers may change an inquiry's status, never its response). NOT VALID: rows answered
-- before this migration (perhaps with a NULL `who`) stay as they are.
ALTER TABLE attune.inquiry ADD CONSTRAINT inquiry_responded_has_answer
    CHECK (status <> 'responded' OR (responded_at IS NOT NULL AND responded_by IS NOT NULL)) NOT VALID;

-- ---------------------------------------------------------------- spawn budget

-- Per root execution: how many descendant executions and task rows its whole tree has
-- created. Workers check it before creating more (in the transaction that creates them)
-- and charge it in the same transaction.
CREATE TABLE attune.execution_budget (
    root_id     bigint PRIMARY KEY REFERENCES attune.workflow_execution ON DELETE CASCADE,
    executions  bigint NOT NULL DEFAULT 0,
    task_rows   bigint NOT NULL DEFAULT 0
);
ALTER TABLE attune.execution_budget SET (autovacuum_vacuum_scale_factor = 0.02, fillfactor = 80);
-- Task rows an execution created itself (written with the rest of its row by the advance
-- that creates them); a root's budget use is its own count plus its descendants' above.
ALTER TABLE attune.workflow_execution ADD COLUMN task_rows int NOT NULL DEFAULT 0;

-- ---------------------------------------------------------------- fair share

-- Claims order by (priority, fair_key, id). A worker gives new rows the key of the next
-- claimable row plus their rank among the rows their root execution creates in that
-- transaction, so a later execution's first row sorts right behind the head of the queue
-- instead of behind a whole fan-out.
ALTER TABLE attune.task_execution ADD COLUMN fair_key bigint NOT NULL DEFAULT 0;
DROP INDEX attune.task_execution_claimable;
CREATE INDEX task_execution_claimable
    ON attune.task_execution (priority, fair_key, id) WHERE status = 'scheduled';

-- ---------------------------------------------------------------- signed secret tokens

-- The key workers sign secret tokens with (HMAC-SHA256), bound to the execution and task
-- that rendered them. Readable by the owner and attune_worker only: nobody else can make
-- a token a worker resolves. Rotate with
--   UPDATE attune.signing_key SET key = decode(replace(gen_random_uuid()::text
--       || gen_random_uuid()::text, '-', ''), 'hex');
-- (tokens of tasks not yet run then fail with "not a valid secret token"; restart workers).
CREATE TABLE attune.signing_key (
    id   int PRIMARY KEY DEFAULT 1 CHECK (id = 1),
    key  bytea NOT NULL CHECK (octet_length(key) >= 16)
);
INSERT INTO attune.signing_key (key)
VALUES (decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex'));

-- ---------------------------------------------------------------- audit: publish events

-- Workers append `publish` events through this function only: the actor is the login
-- (session_user), the kind is fixed, nothing else can be written.
CREATE FUNCTION attune.record_publish(execution_ids bigint[], task_names text[], data jsonb[])
RETURNS void
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, attune, pg_temp AS $$
    INSERT INTO attune.execution_event (workflow_execution_id, task_name, kind, data, actor)
    SELECT v.id, v.task_name, 'publish', v.data, session_user
      FROM unnest(execution_ids, task_names, data) AS v(id, task_name, data);
$$;

-- ---------------------------------------------------------------- grants

GRANT SELECT ON attune.setting TO attune_reader, attune_submitter, attune_worker;
GRANT SELECT ON attune.execution_budget TO attune_submitter, attune_worker;
GRANT INSERT, UPDATE ON attune.execution_budget TO attune_worker;
GRANT SELECT ON attune.signing_key TO attune_worker;

REVOKE EXECUTE ON FUNCTION
    attune.setting_int(text),
    attune.json_check(jsonb, text),
    attune.json_check(jsonb, text, bigint, bigint),
    attune.record_publish(bigint[], text[], jsonb[])
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION attune.setting_int(text), attune.json_check(jsonb, text)
TO attune_reader, attune_submitter, attune_worker;
GRANT EXECUTE ON FUNCTION attune.record_publish(bigint[], text[], jsonb[]) TO attune_worker;

-- The worker writes only the engine's columns. Not: workflow_ref, definition, pack_config,
-- parent_task_id, root_id, depth, priority, requested_by, idempotency_key (executions);
-- workflow_execution_id, task_name, iteration, item_index, attempt, action_ref, input,
-- priority, timeout, fair_key (task rows); prompt, schema, assigned_to, response,
-- responded_by (inquiries).
REVOKE UPDATE ON attune.workflow_execution, attune.task_execution, attune.inquiry FROM attune_worker;
GRANT UPDATE (status, parameters, vars, active_tasks, error, output, started_at, timeout_at,
              control_requested_at, cancel_policy, task_rows)
    ON attune.workflow_execution TO attune_worker;
GRANT UPDATE (status, result, error, lease_owner, lease_expires_at, started_at, claims, run_at,
              held, cancel_requested)
    ON attune.task_execution TO attune_worker;
GRANT UPDATE (status) ON attune.inquiry TO attune_worker;

-- Audit rows only through the definer triggers and record_publish.
REVOKE INSERT ON attune.execution_event FROM attune_worker;
