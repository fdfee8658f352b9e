-- Workflows start themselves: triggers, rules, events, enforcements, timers and
-- concurrency policies (docs/automation.md), and plain actions run as one-task
-- executions. Leader-free like the rest: any worker matches events, fires timers and
-- hands freed concurrency slots on, each under SKIP LOCKED in one transaction.

-- ---------------------------------------------------------------- definitions

-- Event types. `parameters`: JSON Schema of a trigger instance's settings (a rule's
-- trigger_params); `output`: JSON Schema of the payload, checked by emit_event.
-- `timer` marks the core timers, which workers fire themselves.
CREATE TABLE attune.trigger (
    ref          text PRIMARY KEY,
    pack_ref     text NOT NULL REFERENCES attune.pack ON DELETE CASCADE,
    name         text NOT NULL,
    description  text NOT NULL DEFAULT '',
    parameters   jsonb NOT NULL,
    output       jsonb,
    timer        text CHECK (timer IN ('interval', 'cron', 'datetime')),
    source_file  text,
    updated_at   timestamptz NOT NULL DEFAULT now()
);

-- Rules (Attune's shape). No foreign keys to trigger or action: either may live in
-- another pack, which re-registers on its own; registration checks both exist.
-- `conditions` is normalised: NULL (always), {"expression": "..."} or
-- {"criteria": [{field, operator, value}, ...]}.
CREATE TABLE attune.rule (
    ref             text PRIMARY KEY,
    pack_ref        text NOT NULL REFERENCES attune.pack ON DELETE CASCADE,
    label           text NOT NULL,
    description     text NOT NULL DEFAULT '',
    trigger_ref     text NOT NULL,
    trigger_params  jsonb NOT NULL DEFAULT '{}',
    conditions      jsonb,
    action_ref      text NOT NULL,
    action_params   jsonb NOT NULL DEFAULT '{}',
    enabled         boolean NOT NULL DEFAULT true,
    source_file     text,
    registered_at   timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX rule_trigger ON attune.rule (trigger_ref) WHERE enabled;

-- StackStorm's concurrency policies: at most `threshold` executions of a workflow (or
-- running tasks of an action) at once, per distinct value of `attributes` for
-- action.concurrency.attr. One enabled policy per resource.
CREATE TABLE attune.policy (
    ref            text PRIMARY KEY,
    pack_ref       text NOT NULL REFERENCES attune.pack ON DELETE CASCADE,
    name           text NOT NULL,
    description    text NOT NULL DEFAULT '',
    resource_ref   text NOT NULL,
    resource_kind  text NOT NULL CHECK (resource_kind IN ('workflow', 'action')),
    policy_type    text NOT NULL CHECK (policy_type IN ('action.concurrency', 'action.concurrency.attr')),
    threshold      int NOT NULL CHECK (threshold >= 1),
    on_limit       text NOT NULL CHECK (on_limit IN ('delay', 'cancel')),
    attributes     text[] NOT NULL DEFAULT '{}',
    enabled        boolean NOT NULL DEFAULT true,
    source_file    text,
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX policy_resource ON attune.policy (resource_ref) WHERE enabled;

-- The slot counters: changed in the transaction that starts or ends the holder, never
-- recounted on the claim path. attune.policy_repair() recounts them from the rows.
CREATE TABLE attune.concurrency_slot (
    policy_ref  text NOT NULL,
    key         text NOT NULL,
    used        int NOT NULL DEFAULT 0 CHECK (used >= 0),
    PRIMARY KEY (policy_ref, key)
);

-- ---------------------------------------------------------------- events

-- An event is stored only once its payload passed the trigger's output schema.
-- `pending` events are matched against the rules by a worker (the conditions are
-- Jinja, evaluated by the same template engine as workflows), one transaction per
-- batch; `rule_ref` scopes a timer's event to the rule that owns the timer.
CREATE TABLE attune.event (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    trigger_ref   text NOT NULL,
    payload       jsonb NOT NULL CHECK (jsonb_typeof(payload) = 'object'),
    rule_ref      text,
    status        text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'processed', 'failed')),
    error         jsonb,  -- status failed: why matching this event could not be written
    emitted_by    text NOT NULL DEFAULT session_user,
    created_at    timestamptz NOT NULL DEFAULT now(),
    processed_at  timestamptz
);
CREATE INDEX event_pending ON attune.event (id) WHERE status = 'pending';
CREATE INDEX event_trigger ON attune.event (trigger_ref, id);
CREATE INDEX event_created ON attune.event (created_at);

-- One per (rule, event) that matched, or whose condition could not be evaluated
-- (status failed, `error` says why, no execution).
CREATE TABLE attune.enforcement (
    id                     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    rule_ref               text NOT NULL,
    event_id               bigint NOT NULL REFERENCES attune.event ON DELETE CASCADE,
    workflow_execution_id  bigint REFERENCES attune.workflow_execution ON DELETE SET NULL,
    status                 text NOT NULL CHECK (status IN ('succeeded', 'failed')),
    error                  jsonb,
    created_at             timestamptz NOT NULL DEFAULT now(),
    UNIQUE (rule_ref, event_id)
);
CREATE INDEX enforcement_rule ON attune.enforcement (rule_ref, id);
CREATE INDEX enforcement_execution ON attune.enforcement (workflow_execution_id)
    WHERE workflow_execution_id IS NOT NULL;

-- One row per rule on a timer trigger: its next fire time. A worker that finds it due
-- claims it (SKIP LOCKED, DB clock), emits and moves it on in one transaction.
-- NULL next_fire_at: nothing left to fire (a datetime timer that fired).
CREATE TABLE attune.timer (
    rule_ref       text PRIMARY KEY REFERENCES attune.rule ON DELETE CASCADE,
    trigger_ref    text NOT NULL,
    kind           text NOT NULL CHECK (kind IN ('interval', 'cron', 'datetime')),
    params         jsonb NOT NULL,
    next_fire_at   timestamptz,
    fire_count     bigint NOT NULL DEFAULT 0,
    last_fired_at  timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX timer_due ON attune.timer (next_fire_at) WHERE next_fire_at IS NOT NULL;

CREATE FUNCTION attune.emit_event(trigger_ref text, payload jsonb DEFAULT '{}') RETURNS bigint
LANGUAGE plpgsql AS $$
#variable_conflict use_variable
DECLARE
    schema jsonb;
    problem text;
    new_id bigint;
BEGIN
    SELECT t.output INTO schema FROM attune.trigger t WHERE t.ref = trigger_ref;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'unknown trigger %', quote_literal(trigger_ref)
            USING ERRCODE = 'foreign_key_violation',
                  HINT = 'register its pack first: attune-pg packs register PATH';
    END IF;
    IF payload IS NULL OR jsonb_typeof(payload) <> 'object' THEN
        RAISE EXCEPTION 'trigger %: the payload must be a JSON object, got %',
            quote_literal(trigger_ref), coalesce(jsonb_typeof(payload), 'null')
            USING ERRCODE = 'check_violation';
    END IF;
    problem := attune.json_schema_error(schema, payload, 'payload');
    IF problem IS NOT NULL THEN
        RAISE EXCEPTION 'trigger %: %', quote_literal(trigger_ref), problem
            USING ERRCODE = 'check_violation';
    END IF;
    INSERT INTO attune.event (trigger_ref, payload) VALUES (trigger_ref, payload)
    RETURNING id INTO new_id;
    PERFORM pg_notify('attune_event', '');
    RETURN new_id;
END $$;

-- ---------------------------------------------------------------- plain actions, policies

ALTER TABLE attune.workflow_execution
    ADD COLUMN policy_ref text,
    ADD COLUMN policy_key text,
    ADD COLUMN policy_slot boolean NOT NULL DEFAULT false,
    ADD COLUMN delayed boolean NOT NULL DEFAULT false;
ALTER TABLE attune.task_execution
    ADD COLUMN policy_ref text,
    ADD COLUMN policy_key text,
    ADD COLUMN policy_slot boolean NOT NULL DEFAULT false,
    ADD COLUMN delayed boolean NOT NULL DEFAULT false;

-- Executions a `delay` policy holds back are `requested` but not startable.
DROP INDEX attune.workflow_execution_requested;
CREATE INDEX workflow_execution_startable
    ON attune.workflow_execution (priority, id) WHERE status = 'requested' AND NOT delayed;
CREATE INDEX workflow_execution_delayed
    ON attune.workflow_execution (policy_ref, policy_key, priority, id) WHERE delayed;
CREATE INDEX task_execution_delayed
    ON attune.task_execution (policy_ref, policy_key, priority, id) WHERE delayed;

-- The definition an execution of a plain action runs: one task, the execution's
-- parameters as its input, the action's result as the output.
CREATE FUNCTION attune.action_definition(a attune.action) RETURNS jsonb
LANGUAGE sql IMMUTABLE AS $$
    SELECT jsonb_build_object(
        'ref', a.ref, 'label', a.ref, 'version', '1', 'description', a.description,
        'parameters', a.parameters, 'output', NULL, 'vars', '{}'::jsonb,
        'output_map', '{{ task["' || a.name || '"].result }}',
        'tags', '[]'::jsonb, 'timeout', NULL, 'cancellation_policy', 'allow_finish',
        'source_file', a.spec ->> 'source_file',
        'tasks', jsonb_build_array(jsonb_build_object(
            'name', a.name, 'kind', 'action', 'action', a.ref, 'input', '{{ parameters }}',
            'next', '[]'::jsonb, 'tasks', '[]'::jsonb)))
$$;

-- A concurrency key: the policy's attribute values, defaults applied.
CREATE FUNCTION attune.policy_key(attributes text[], params jsonb, schema jsonb) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(jsonb_agg(coalesce(params -> a.name, schema -> 'properties' -> a.name -> 'default',
                                       'null'::jsonb) ORDER BY a.n)::text, '')
      FROM unnest(attributes) WITH ORDINALITY AS a(name, n)
$$;

-- Take a slot of (policy, key) if one is free. Waits on the counter row's lock while
-- another transaction holds it: the counter is the serialisation point of one key.
CREATE FUNCTION attune.policy_acquire(p_ref text, p_key text) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    limit_ int;
    got int;
BEGIN
    SELECT threshold INTO limit_ FROM attune.policy WHERE ref = p_ref AND enabled;
    IF NOT FOUND THEN
        RETURN true;  -- disabled or removed meanwhile: no limit
    END IF;
    INSERT INTO attune.concurrency_slot AS s (policy_ref, key, used) VALUES (p_ref, p_key, 1)
    ON CONFLICT (policy_ref, key) DO UPDATE SET used = s.used + 1 WHERE s.used < limit_
    RETURNING used INTO got;
    RETURN got IS NOT NULL;
END $$;

-- A holder of (policy, key) ended: hand its slot straight to the first waiter (priority,
-- then arrival), so a newcomer cannot overtake it; with no waiter, free the slot.
CREATE FUNCTION attune.policy_release(p_ref text, p_key text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    used_now int;
    pol attune.policy;
    next_id bigint;
BEGIN
    SELECT used INTO used_now FROM attune.concurrency_slot
     WHERE policy_ref = p_ref AND key = p_key FOR UPDATE;
    SELECT * INTO pol FROM attune.policy WHERE ref = p_ref;
    IF pol.enabled AND used_now <= pol.threshold THEN
        IF pol.resource_kind = 'workflow' THEN
            UPDATE attune.workflow_execution SET delayed = false, policy_slot = true
             WHERE id = (SELECT id FROM attune.workflow_execution
                          WHERE policy_ref = p_ref AND policy_key = p_key AND delayed
                            AND status = 'requested'
                          ORDER BY priority, id LIMIT 1 FOR UPDATE SKIP LOCKED)
            RETURNING id INTO next_id;
            IF next_id IS NOT NULL THEN
                PERFORM pg_notify('attune_start', '');
            END IF;
        ELSE
            UPDATE attune.task_execution SET delayed = false, policy_slot = true, run_at = now()
             WHERE id = (SELECT id FROM attune.task_execution
                          WHERE policy_ref = p_ref AND policy_key = p_key AND delayed
                            AND status = 'scheduled'
                          ORDER BY priority, id LIMIT 1 FOR UPDATE SKIP LOCKED)
            RETURNING id INTO next_id;
            IF next_id IS NOT NULL THEN
                PERFORM pg_notify('attune_work', '');
            END IF;
        END IF;
        IF next_id IS NOT NULL THEN
            RETURN;
        END IF;
    END IF;
    UPDATE attune.concurrency_slot SET used = greatest(used - 1, 0)
     WHERE policy_ref = p_ref AND key = p_key;
END $$;

-- The INSERT of an execution: 0006's checks (unknown or disabled ref, non-object
-- parameters, JSON bounds, priority range) and snapshots, plus: a ref that names a plain
-- action (not a workflow) runs it as a one-task execution, and an enabled concurrency
-- policy on the workflow tags the row (the slot is taken AFTER INSERT, so an ON CONFLICT
-- DO NOTHING that skips the row takes none).
CREATE OR REPLACE FUNCTION attune.prepare_workflow_execution() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, attune, pg_temp AS $$
DECLARE
    def record;
    act attune.action;
    config jsonb;
    lim record;
BEGIN
    IF NEW.workflow_ref IS NULL THEN
        RAISE EXCEPTION 'workflow_ref is required' USING ERRCODE = 'not_null_violation';
    END IF;
    SELECT d.definition, d.enabled, p.config, pol.ref AS policy_ref, pol.attributes
      INTO def
      FROM attune.workflow_definition d JOIN attune.pack p ON p.ref = d.pack_ref
      LEFT JOIN attune.policy pol ON pol.resource_ref = d.ref AND pol.enabled
     WHERE d.ref = NEW.workflow_ref;
    IF NOT FOUND THEN
        SELECT a.* INTO act FROM attune.action a
         WHERE a.ref = NEW.workflow_ref AND a.runner <> 'workflow';
        IF NOT FOUND THEN
            RAISE EXCEPTION 'unknown workflow or action %', quote_literal(NEW.workflow_ref)
                USING ERRCODE = 'foreign_key_violation',
                      HINT = 'register its pack first: attune-pg packs register PATH';
        END IF;
        SELECT p.config INTO config FROM attune.pack p WHERE p.ref = act.pack_ref;
        SELECT attune.action_definition(act) AS definition, act.enabled AS enabled, config AS config,
               NULL::text AS policy_ref, NULL::text[] AS attributes
          INTO def;
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
    -- One read of the four settings this needs (0006).
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
    IF def.policy_ref IS NOT NULL THEN
        NEW.policy_ref := def.policy_ref;
        NEW.policy_key := attune.policy_key(def.attributes, NEW.parameters,
                                            def.definition -> 'parameters');
    ELSE
        NEW.policy_ref := NULL;
        NEW.policy_key := NULL;
    END IF;
    NEW.policy_slot := false;
    NEW.delayed := false;
    RETURN NEW;
END $$;

-- After the row exists: take a slot, or wait (`delay`), or end canceled (`cancel`).
CREATE FUNCTION attune.policy_admit_workflow_execution() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    pol attune.policy;
BEGIN
    IF attune.policy_acquire(NEW.policy_ref, NEW.policy_key) THEN
        UPDATE attune.workflow_execution SET policy_slot = true WHERE id = NEW.id;
        RETURN NULL;
    END IF;
    SELECT * INTO pol FROM attune.policy WHERE ref = NEW.policy_ref;
    IF pol.on_limit = 'delay' THEN
        UPDATE attune.workflow_execution SET delayed = true WHERE id = NEW.id;
    ELSE
        UPDATE attune.workflow_execution
           SET status = 'canceled',
               error = jsonb_build_object(
                   'type', 'ConcurrencyPolicy',
                   'message', format('canceled by concurrency policy %s: %s executions of %s%s are already running',
                                     pol.ref, pol.threshold, NEW.workflow_ref,
                                     CASE WHEN NEW.policy_key <> '' THEN ' with ' || NEW.policy_key ELSE '' END))
         WHERE id = NEW.id;
    END IF;
    RETURN NULL;
END $$;
CREATE TRIGGER workflow_execution_40_policy AFTER INSERT ON attune.workflow_execution
    FOR EACH ROW WHEN (NEW.policy_ref IS NOT NULL)
    EXECUTE FUNCTION attune.policy_admit_workflow_execution();

-- An execution that ends gives its slot back; one retried (failed -> running) needs a
-- slot again and is refused while the policy is at its threshold.
CREATE FUNCTION attune.policy_track_workflow_execution() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    IF NEW.status IN ('succeeded', 'failed', 'canceled', 'timed_out') THEN
        NEW.delayed := false;
        IF OLD.policy_slot THEN
            NEW.policy_slot := false;
            PERFORM attune.policy_release(OLD.policy_ref, OLD.policy_key);
        END IF;
    ELSIF OLD.status IN ('succeeded', 'failed', 'canceled', 'timed_out') AND NOT OLD.policy_slot THEN
        IF NOT attune.policy_acquire(OLD.policy_ref, OLD.policy_key) THEN
            RAISE EXCEPTION 'execution %: concurrency policy % is at its threshold; retry it once another execution ends',
                NEW.id, OLD.policy_ref USING ERRCODE = 'object_not_in_prerequisite_state';
        END IF;
        NEW.policy_slot := true;
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER workflow_execution_25_policy BEFORE UPDATE OF status ON attune.workflow_execution
    FOR EACH ROW WHEN (OLD.policy_ref IS NOT NULL AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION attune.policy_track_workflow_execution();

-- Tasks of an action with a policy (the INSERT names it in policy_ref): a slot is held
-- while the row is scheduled or running (a requeue after a lost lease keeps it).
-- Without a free slot, `delay` keeps
-- the row scheduled at run_at = infinity (unclaimable) until a slot is handed to it;
-- `cancel` leaves it claimable with the reason in `error`, and the worker that claims
-- it ends it canceled without running it.
CREATE FUNCTION attune.policy_track_task_execution() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    pol attune.policy;
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- The inserter named the policy (store/apply.py joins attune.policy), so rows
        -- without one never reach this function (the trigger's WHEN clause).
        SELECT * INTO pol FROM attune.policy p WHERE p.ref = NEW.policy_ref AND p.enabled;
        IF NOT FOUND THEN
            NEW.policy_ref := NULL;
            RETURN NEW;
        END IF;
        NEW.policy_ref := pol.ref;
        NEW.policy_key := attune.policy_key(pol.attributes, NEW.input, '{}');
        NEW.policy_slot := false;
        NEW.delayed := false;
    ELSE
        IF OLD.policy_ref IS NULL OR OLD.status IS NOT DISTINCT FROM NEW.status THEN
            RETURN NEW;
        END IF;
        IF NEW.status NOT IN ('scheduled', 'running') THEN
            IF OLD.delayed THEN
                NEW.delayed := false;  -- e.g. held by a pause: it waits again on resume
                NEW.run_at := now();
            END IF;
            IF OLD.policy_slot THEN
                NEW.policy_slot := false;
                PERFORM attune.policy_release(OLD.policy_ref, OLD.policy_key);
            END IF;
            RETURN NEW;
        END IF;
        IF NEW.status <> 'scheduled' OR NEW.policy_slot OR NEW.delayed THEN
            RETURN NEW;
        END IF;
        SELECT * INTO pol FROM attune.policy p WHERE p.ref = NEW.policy_ref;
    END IF;
    IF NEW.status <> 'scheduled' THEN
        RETURN NEW;  -- pending: a slot is taken when it is scheduled
    END IF;
    IF attune.policy_acquire(NEW.policy_ref, NEW.policy_key) THEN
        NEW.policy_slot := true;
        IF NEW.run_at = 'infinity' THEN
            NEW.run_at := now();
        END IF;
    ELSIF pol.on_limit = 'delay' THEN
        NEW.delayed := true;
        NEW.run_at := 'infinity';
    ELSE
        NEW.error := jsonb_build_object(
            'type', 'ConcurrencyPolicy',
            'message', format('canceled by concurrency policy %s: %s tasks of %s%s are already running',
                              pol.ref, pol.threshold, NEW.action_ref,
                              CASE WHEN NEW.policy_key <> '' THEN ' with ' || NEW.policy_key ELSE '' END));
    END IF;
    RETURN NEW;
END $$;
CREATE TRIGGER task_execution_25_policy_insert BEFORE INSERT ON attune.task_execution
    FOR EACH ROW WHEN (NEW.policy_ref IS NOT NULL)
    EXECUTE FUNCTION attune.policy_track_task_execution();
CREATE TRIGGER task_execution_25_policy BEFORE UPDATE OF status ON attune.task_execution
    FOR EACH ROW WHEN (OLD.policy_ref IS NOT NULL AND OLD.status IS DISTINCT FROM NEW.status)
    EXECUTE FUNCTION attune.policy_track_task_execution();

-- After a policy was added, changed, disabled or removed (registration calls this), or
-- by hand after an incident: recount every counter from the rows that hold a slot, let
-- waiters go whose policy is gone, and hand free slots to waiters. Returns how many
-- waiters it let go.
CREATE FUNCTION attune.policy_repair() RETURNS int
LANGUAGE plpgsql AS $$
DECLARE
    released int := 0;
    n int;
    w record;
BEGIN
    LOCK TABLE attune.concurrency_slot IN SHARE ROW EXCLUSIVE MODE;
    DELETE FROM attune.concurrency_slot;
    INSERT INTO attune.concurrency_slot (policy_ref, key, used)
    SELECT policy_ref, policy_key, count(*) FROM (
        SELECT policy_ref, policy_key FROM attune.workflow_execution
         WHERE policy_slot AND status NOT IN ('succeeded', 'failed', 'canceled', 'timed_out')
        UNION ALL
        SELECT policy_ref, policy_key FROM attune.task_execution
         WHERE policy_slot AND status IN ('scheduled', 'running')) held
     GROUP BY policy_ref, policy_key;
    -- Waiters of a policy that is no longer enabled are free to go.
    UPDATE attune.workflow_execution e SET delayed = false, policy_ref = NULL, policy_key = NULL
     WHERE e.delayed AND NOT EXISTS (SELECT 1 FROM attune.policy p WHERE p.ref = e.policy_ref AND p.enabled);
    GET DIAGNOSTICS n = ROW_COUNT;
    released := released + n;
    UPDATE attune.task_execution t SET delayed = false, policy_ref = NULL, policy_key = NULL, run_at = now()
     WHERE t.delayed AND NOT EXISTS (SELECT 1 FROM attune.policy p WHERE p.ref = t.policy_ref AND p.enabled);
    GET DIAGNOSTICS n = ROW_COUNT;
    released := released + n;
    -- Free slots (a raised threshold, a recount) go to the first waiters.
    FOR w IN
        SELECT 'workflow' AS kind, e.id, e.policy_ref, e.policy_key FROM attune.workflow_execution e
         WHERE e.delayed AND e.status = 'requested'
        UNION ALL
        SELECT 'task', t.id, t.policy_ref, t.policy_key FROM attune.task_execution t
         WHERE t.delayed AND t.status = 'scheduled'
        ORDER BY 1, 3, 4, 2
    LOOP
        IF attune.policy_acquire(w.policy_ref, w.policy_key) THEN
            IF w.kind = 'workflow' THEN
                UPDATE attune.workflow_execution SET delayed = false, policy_slot = true WHERE id = w.id;
            ELSE
                UPDATE attune.task_execution SET delayed = false, policy_slot = true, run_at = now() WHERE id = w.id;
            END IF;
            released := released + 1;
        END IF;
    END LOOP;
    IF released > 0 THEN
        PERFORM pg_notify('attune_start', '');
        PERFORM pg_notify('attune_work', '');
    END IF;
    RETURN released;
END $$;

-- ---------------------------------------------------------------- views

CREATE VIEW attune.rule_activity AS
SELECT r.ref AS rule_ref,
       r.trigger_ref,
       r.action_ref,
       r.enabled,
       coalesce(s.enforcements, 0) AS enforcements,
       coalesce(s.executions, 0) AS executions,
       coalesce(s.failures, 0) AS failures,
       s.last_fired_at
  FROM attune.rule r
  LEFT JOIN LATERAL (
        SELECT count(*) AS enforcements,
               count(*) FILTER (WHERE f.workflow_execution_id IS NOT NULL) AS executions,
               count(*) FILTER (WHERE f.status = 'failed'
                                   OR e.status IN ('failed', 'timed_out', 'canceled')) AS failures,
               max(f.created_at) AS last_fired_at
          FROM attune.enforcement f
          LEFT JOIN attune.workflow_execution e ON e.id = f.workflow_execution_id
         WHERE f.rule_ref = r.ref) s ON true;

CREATE VIEW attune.upcoming_timers AS
SELECT t.rule_ref,
       t.trigger_ref,
       t.kind,
       t.params,
       r.action_ref,
       r.enabled,
       t.next_fire_at,
       t.next_fire_at - now() AS due_in,
       t.last_fired_at,
       t.fire_count
  FROM attune.timer t
  JOIN attune.rule r ON r.ref = t.rule_ref
 ORDER BY t.next_fire_at NULLS LAST, t.rule_ref;

CREATE VIEW attune.concurrency_usage AS
SELECT p.ref AS policy_ref,
       p.resource_ref,
       p.policy_type,
       p.threshold,
       p.on_limit,
       s.key,
       coalesce(s.used, 0) AS used,
       (SELECT count(*) FROM attune.workflow_execution e
         WHERE e.delayed AND e.policy_ref = p.ref AND e.policy_key = s.key)
     + (SELECT count(*) FROM attune.task_execution t
         WHERE t.delayed AND t.policy_ref = p.ref AND t.policy_key = s.key) AS waiting
  FROM attune.policy p
  LEFT JOIN attune.concurrency_slot s ON s.policy_ref = p.ref;

-- ---------------------------------------------------------------- rights

-- Every trigger function runs as its owner (see 0005); CREATE OR REPLACE above reset
-- prepare_workflow_execution, so apply it again to all of them.
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

ALTER FUNCTION attune.emit_event(text, jsonb)
    SECURITY DEFINER SET search_path = pg_catalog, attune, pg_temp;
ALTER FUNCTION attune.policy_repair()
    SECURITY DEFINER SET search_path = pg_catalog, attune, pg_temp;

REVOKE EXECUTE ON FUNCTION
    attune.emit_event(text, jsonb),
    attune.action_definition(attune.action),
    attune.policy_key(text[], jsonb, jsonb),
    attune.policy_repair(),
    attune.policy_acquire(text, text),
    attune.policy_release(text, text)
FROM PUBLIC;
GRANT EXECUTE ON FUNCTION attune.emit_event(text, jsonb) TO attune_submitter, attune_worker;
GRANT EXECUTE ON FUNCTION attune.policy_repair() TO attune_worker;

GRANT SELECT ON attune.rule_activity, attune.upcoming_timers, attune.concurrency_usage
TO attune_reader, attune_submitter, attune_worker;

GRANT SELECT ON
    attune.trigger, attune.rule, attune.policy, attune.concurrency_slot,
    attune.event, attune.enforcement, attune.timer
TO attune_submitter, attune_worker;

-- Workers match events (mark them processed, write enforcements) and fire timers.
GRANT UPDATE (status, processed_at, error) ON attune.event TO attune_worker;
GRANT INSERT ON attune.event, attune.enforcement TO attune_worker;
GRANT UPDATE (next_fire_at, fire_count, last_fired_at, updated_at) ON attune.timer TO attune_worker;
