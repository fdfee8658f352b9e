-- Control of running executions from SQL: cancel, pause, resume, retry, inquiries,
-- idempotent start. Each function is one guarded transaction that records the request
-- (and refuses an invalid one with a clear error, changing nothing); workers carry it
-- out through the conductor in their control pass, woken by NOTIFY attune_control.

ALTER TABLE attune.task_execution
    -- Held by a pause: pending until resume schedules it again.
    ADD COLUMN held boolean NOT NULL DEFAULT false,
    -- cancel_running: the worker running this row kills the action and reports canceled.
    ADD COLUMN cancel_requested boolean NOT NULL DEFAULT false;

ALTER TABLE attune.workflow_execution
    -- Set by the control functions; a worker's control pass clears it.
    ADD COLUMN control_requested_at timestamptz,
    ADD COLUMN cancel_policy text CHECK (cancel_policy IN ('allow_finish', 'cancel_running'));

-- The task whose failure nobody handled: retry_execution re-runs these.
ALTER TABLE attune.task_state ADD COLUMN unhandled boolean NOT NULL DEFAULT false;

CREATE INDEX workflow_execution_control
    ON attune.workflow_execution (control_requested_at) WHERE control_requested_at IS NOT NULL;
CREATE INDEX task_execution_live
    ON attune.task_execution (workflow_execution_id, task_name, iteration)
    WHERE status IN ('running', 'waiting');
CREATE INDEX task_execution_held
    ON attune.task_execution (workflow_execution_id) WHERE held;
CREATE INDEX task_state_unhandled
    ON attune.task_state (workflow_execution_id) WHERE unhandled;

-- ---------------------------------------------------------------- helpers

CREATE FUNCTION attune.lock_execution(execution_id bigint) RETURNS attune.workflow_execution
LANGUAGE plpgsql AS $$
DECLARE
    e attune.workflow_execution;
BEGIN
    SELECT * INTO e FROM attune.workflow_execution WHERE id = execution_id FOR UPDATE;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'execution % does not exist', execution_id USING ERRCODE = 'no_data_found';
    END IF;
    RETURN e;
END $$;

CREATE FUNCTION attune.request_control(execution_id bigint) RETURNS void
LANGUAGE sql AS $$
    UPDATE attune.workflow_execution SET control_requested_at = now() WHERE id = execution_id;
    SELECT pg_notify('attune_control', '');
$$;

-- ---------------------------------------------------------------- start

-- Start an execution; with an idempotency key, a repeated call returns the first
-- execution's id instead of creating a second one. (A plain INSERT with a repeated key
-- fails with a unique violation on workflow_execution_idempotency; use
-- INSERT ... ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING.)
CREATE FUNCTION attune.start_execution(
    workflow_ref text,
    parameters jsonb DEFAULT '{}',
    idempotency_key text DEFAULT NULL,
    priority int DEFAULT 0,
    requested_by text DEFAULT current_user
) RETURNS bigint
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    new_id bigint;
BEGIN
    INSERT INTO attune.workflow_execution (workflow_ref, parameters, idempotency_key, priority, requested_by)
    VALUES (start_execution.workflow_ref, coalesce(start_execution.parameters, '{}'),
            start_execution.idempotency_key, start_execution.priority, start_execution.requested_by)
    ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING
    RETURNING id INTO new_id;
    IF new_id IS NULL THEN
        SELECT id INTO new_id FROM attune.workflow_execution e
         WHERE e.idempotency_key = start_execution.idempotency_key;
    END IF;
    RETURN new_id;
END $$;

-- ---------------------------------------------------------------- cancel / pause / resume / retry

CREATE FUNCTION attune.cancel_execution(execution_id bigint, policy text DEFAULT NULL) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    e attune.workflow_execution := attune.lock_execution(execution_id);
    chosen text;
BEGIN
    IF policy IS NOT NULL AND policy NOT IN ('allow_finish', 'cancel_running') THEN
        RAISE EXCEPTION 'cancellation policy must be allow_finish or cancel_running, got %',
            quote_literal(policy) USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF e.status IN ('succeeded', 'failed', 'canceled', 'timed_out') THEN
        RAISE EXCEPTION 'execution % is already %: there is nothing to cancel', execution_id, e.status
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF e.status = 'requested' THEN
        UPDATE attune.workflow_execution SET status = 'canceled' WHERE id = execution_id;
        RETURN 'canceled';
    END IF;
    chosen := coalesce(policy, e.definition ->> 'cancellation_policy', 'allow_finish');
    IF e.status = 'canceling' THEN
        IF chosen = 'cancel_running' AND e.cancel_policy IS DISTINCT FROM 'cancel_running' THEN
            UPDATE attune.workflow_execution SET cancel_policy = 'cancel_running' WHERE id = execution_id;
            PERFORM attune.request_control(execution_id);
            RETURN 'canceling';
        END IF;
        RAISE EXCEPTION 'execution % is already canceling', execution_id
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    UPDATE attune.workflow_execution SET status = 'canceling', cancel_policy = chosen WHERE id = execution_id;
    PERFORM attune.request_control(execution_id);
    RETURN 'canceling';
END $$;

CREATE FUNCTION attune.pause_execution(execution_id bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    e attune.workflow_execution := attune.lock_execution(execution_id);
BEGIN
    IF e.status <> 'running' THEN
        RAISE EXCEPTION 'execution % is %: only a running execution can be paused', execution_id, e.status
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    UPDATE attune.workflow_execution SET status = 'pausing' WHERE id = execution_id;
    PERFORM attune.request_control(execution_id);
    RETURN 'pausing';
END $$;

CREATE FUNCTION attune.resume_execution(execution_id bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    e attune.workflow_execution := attune.lock_execution(execution_id);
    child bigint;
BEGIN
    IF e.status NOT IN ('pausing', 'paused') THEN
        RAISE EXCEPTION 'execution % is %: only a paused execution can be resumed', execution_id, e.status
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    -- Any control request still pending (e.g. a retry's redrive) is kept for the pass.
    UPDATE attune.workflow_execution SET status = 'running' WHERE id = execution_id;
    -- What the pause held is claimable again (the guard trigger sends attune_work).
    UPDATE attune.task_execution SET status = 'scheduled', held = false, run_at = greatest(run_at, now())
     WHERE workflow_execution_id = execution_id AND held;
    -- Resume propagates down to paused child workflows.
    FOR child IN
        SELECT c.id FROM attune.task_execution t
          JOIN attune.workflow_execution c ON c.parent_task_id = t.id
         WHERE t.workflow_execution_id = execution_id AND t.status = 'waiting'
           AND c.status IN ('pausing', 'paused')
         ORDER BY c.id
    LOOP
        PERFORM attune.resume_execution(child);
    END LOOP;
    RETURN 'running';
END $$;

CREATE FUNCTION attune.retry_execution(execution_id bigint) RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    e attune.workflow_execution := attune.lock_execution(execution_id);
BEGIN
    IF e.status <> 'failed' THEN
        RAISE EXCEPTION 'execution % is %: only a failed execution can be retried', execution_id, e.status
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    IF NOT EXISTS (SELECT 1 FROM attune.task_state s
                    WHERE s.workflow_execution_id = execution_id AND s.unhandled) THEN
        RAISE EXCEPTION 'execution % has no failed task to re-run (it failed: %)', execution_id,
            coalesce(e.error ->> 'message', 'unknown error')
            USING ERRCODE = 'object_not_in_prerequisite_state';
    END IF;
    UPDATE attune.workflow_execution
       SET status = 'running', error = NULL, output = NULL, finished_at = NULL
     WHERE id = execution_id;
    PERFORM attune.request_control(execution_id);
    RETURN 'running';
END $$;

-- ---------------------------------------------------------------- inquiries

-- The first way `value` violates `schema`, or NULL. A JSON Schema subset, enough for
-- approvals and forms: type, enum, const, required, properties, additionalProperties
-- (false), items, min/maxItems, min/maxLength, pattern, minimum/maximum and their
-- exclusive forms. The CLI also validates the full JSON Schema before calling SQL.
CREATE FUNCTION attune.json_schema_error(schema jsonb, value jsonb, path text DEFAULT '')
RETURNS text
LANGUAGE plpgsql IMMUTABLE AS $$
#variable_conflict use_variable
DECLARE
    kind text := jsonb_typeof(value);
    here text := CASE WHEN path = '' THEN 'response' ELSE path END;
    wanted text;
    ok boolean;
    key text;
    sub jsonb;
    err text;
    n int;
    num numeric;
BEGIN
    IF schema IS NULL OR jsonb_typeof(schema) <> 'object' THEN
        RETURN NULL;
    END IF;
    IF schema ? 'type' THEN
        ok := false;
        FOR wanted IN SELECT jsonb_array_elements_text(
                CASE WHEN jsonb_typeof(schema -> 'type') = 'array' THEN schema -> 'type'
                     ELSE jsonb_build_array(schema -> 'type') END)
        LOOP
            IF wanted = kind
               OR (wanted = 'integer' AND kind = 'number'
                   AND (value #>> '{}')::numeric = trunc((value #>> '{}')::numeric)) THEN
                ok := true;
            END IF;
        END LOOP;
        IF NOT ok THEN
            RETURN format('%s: %s is not of type %s', here, left(value::text, 60), schema -> 'type');
        END IF;
    END IF;
    IF schema ? 'enum' AND NOT EXISTS (
            SELECT 1 FROM jsonb_array_elements(schema -> 'enum') AS opt(choice) WHERE opt.choice = value) THEN
        RETURN format('%s: %s is not one of %s', here, left(value::text, 60), schema -> 'enum');
    END IF;
    IF schema ? 'const' AND schema -> 'const' <> value THEN
        RETURN format('%s: must be %s', here, schema -> 'const');
    END IF;
    IF kind = 'object' THEN
        FOR key IN SELECT jsonb_array_elements_text(coalesce(schema -> 'required', '[]')) LOOP
            IF NOT value ? key THEN
                RETURN format('%s: %s is a required property', here, quote_literal(key));
            END IF;
        END LOOP;
        FOR key, sub IN SELECT p.k, p.v FROM jsonb_each(coalesce(schema -> 'properties', '{}')) AS p(k, v) LOOP
            IF value ? key THEN
                err := attune.json_schema_error(sub, value -> key,
                                                CASE WHEN path = '' THEN key ELSE path || '.' || key END);
                IF err IS NOT NULL THEN
                    RETURN err;
                END IF;
            END IF;
        END LOOP;
        IF schema -> 'additionalProperties' = 'false'::jsonb THEN
            FOR key IN SELECT jsonb_object_keys(value) LOOP
                IF NOT coalesce(schema -> 'properties', '{}') ? key THEN
                    RETURN format('%s: unexpected property %s', here, quote_literal(key));
                END IF;
            END LOOP;
        END IF;
    ELSIF kind = 'array' THEN
        n := jsonb_array_length(value);
        IF (schema ->> 'minItems')::int > n THEN
            RETURN format('%s: needs at least %s items', here, schema ->> 'minItems');
        END IF;
        IF (schema ->> 'maxItems')::int < n THEN
            RETURN format('%s: allows at most %s items', here, schema ->> 'maxItems');
        END IF;
        IF jsonb_typeof(schema -> 'items') = 'object' THEN
            FOR i IN 0 .. n - 1 LOOP
                err := attune.json_schema_error(schema -> 'items', value -> i, format('%s[%s]', here, i));
                IF err IS NOT NULL THEN
                    RETURN err;
                END IF;
            END LOOP;
        END IF;
    ELSIF kind = 'string' THEN
        n := length(value #>> '{}');
        IF (schema ->> 'minLength')::int > n THEN
            RETURN format('%s: must be at least %s characters', here, schema ->> 'minLength');
        END IF;
        IF (schema ->> 'maxLength')::int < n THEN
            RETURN format('%s: must be at most %s characters', here, schema ->> 'maxLength');
        END IF;
        IF schema ? 'pattern' AND NOT (value #>> '{}') ~ (schema ->> 'pattern') THEN
            RETURN format('%s: does not match %s', here, schema ->> 'pattern');
        END IF;
    ELSIF kind = 'number' THEN
        num := (value #>> '{}')::numeric;
        IF (schema ->> 'minimum')::numeric > num THEN
            RETURN format('%s: %s is less than the minimum of %s', here, num, schema ->> 'minimum');
        END IF;
        IF (schema ->> 'maximum')::numeric < num THEN
            RETURN format('%s: %s is more than the maximum of %s', here, num, schema ->> 'maximum');
        END IF;
        IF (schema ->> 'exclusiveMinimum')::numeric >= num THEN
            RETURN format('%s: %s must be more than %s', here, num, schema ->> 'exclusiveMinimum');
        END IF;
        IF (schema ->> 'exclusiveMaximum')::numeric <= num THEN
            RETURN format('%s: %s must be less than %s', here, num, schema ->> 'exclusiveMaximum');
        END IF;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION attune.respond_inquiry(inquiry_id bigint, response jsonb, who text DEFAULT current_user)
RETURNS text
LANGUAGE plpgsql AS $$
DECLARE
    execution_id bigint;
    q attune.inquiry;
    problem text;
BEGIN
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
