-- name: clock_now
SELECT now()

-- name: automation_schema_present
-- False on a schema older than 0009 (packs registered before migrating).
SELECT to_regclass('attune.trigger') IS NOT NULL

-- ------------------------------------------------------------ registration

-- name: trigger_list
SELECT ref, description, parameters, output, timer, source_file FROM attune.trigger ORDER BY ref

-- name: trigger_delete_pack
DELETE FROM attune.trigger WHERE pack_ref = %(pack)s

-- name: trigger_insert
INSERT INTO attune.trigger (ref, pack_ref, name, description, parameters, output, timer, source_file)
VALUES (%(ref)s, %(pack)s, %(name)s, %(description)s, %(parameters)s, %(output)s, %(timer)s,
        %(source_file)s)

-- name: rule_upsert
-- Upserted, not replaced: a timer (keyed by its rule) keeps its schedule across a
-- re-registration that does not change it.
-- match_*: the conditions and action_params compiled to SQL (spec/rule_sql.py), which
-- emit_event evaluates; match_path 'worker' when they could not be compiled.
INSERT INTO attune.rule (ref, pack_ref, label, description, trigger_ref, trigger_params,
                         conditions, action_ref, action_params, enabled, source_file,
                         match_path, match_note, match_sql, params_sql, match_args)
VALUES (%(ref)s, %(pack)s, %(label)s, %(description)s, %(trigger_ref)s, %(trigger_params)s,
        %(conditions)s, %(action_ref)s, %(action_params)s, %(enabled)s, %(source_file)s,
        %(match_path)s, %(match_note)s, %(match_sql)s, %(params_sql)s, %(match_args)s)
ON CONFLICT (ref) DO UPDATE SET
    match_path = EXCLUDED.match_path, match_note = EXCLUDED.match_note,
    match_sql = EXCLUDED.match_sql, params_sql = EXCLUDED.params_sql,
    match_args = EXCLUDED.match_args,
    pack_ref = EXCLUDED.pack_ref, label = EXCLUDED.label, description = EXCLUDED.description,
    trigger_ref = EXCLUDED.trigger_ref, trigger_params = EXCLUDED.trigger_params,
    conditions = EXCLUDED.conditions, action_ref = EXCLUDED.action_ref,
    action_params = EXCLUDED.action_params, enabled = EXCLUDED.enabled,
    source_file = EXCLUDED.source_file, updated_at = now()

-- name: rule_delete_missing
-- Rules whose file is gone (their timers go with them: ON DELETE CASCADE).
DELETE FROM attune.rule WHERE pack_ref = %(pack)s AND NOT (ref = ANY(%(keep)s::text[]))

-- name: timer_upsert
-- A changed schedule starts over from its first tick; an unchanged one keeps its place.
INSERT INTO attune.timer AS t (rule_ref, trigger_ref, kind, params, next_fire_at)
VALUES (%(rule_ref)s, %(trigger_ref)s, %(kind)s, %(params)s, %(next_fire_at)s)
ON CONFLICT (rule_ref) DO UPDATE SET
    trigger_ref = EXCLUDED.trigger_ref, kind = EXCLUDED.kind, params = EXCLUDED.params,
    next_fire_at = CASE WHEN t.kind = EXCLUDED.kind AND t.params = EXCLUDED.params
                        THEN t.next_fire_at ELSE EXCLUDED.next_fire_at END,
    updated_at = now()

-- name: timer_delete_missing
-- Timers of the pack's rules that no longer have a timer trigger.
DELETE FROM attune.timer t USING attune.rule r
 WHERE r.ref = t.rule_ref AND r.pack_ref = %(pack)s AND NOT (t.rule_ref = ANY(%(keep)s::text[]))

-- name: policy_list
SELECT ref, resource_ref, policy_type, threshold, on_limit, attributes, description, enabled,
       resource_kind, source_file
  FROM attune.policy ORDER BY ref

-- name: policy_upsert
INSERT INTO attune.policy (ref, pack_ref, name, description, resource_ref, resource_kind,
                           policy_type, threshold, on_limit, attributes, enabled, source_file)
VALUES (%(ref)s, %(pack)s, %(name)s, %(description)s, %(resource_ref)s, %(resource_kind)s,
        %(policy_type)s, %(threshold)s, %(on_limit)s, %(attributes)s::text[], %(enabled)s,
        %(source_file)s)
ON CONFLICT (ref) DO UPDATE SET
    pack_ref = EXCLUDED.pack_ref, name = EXCLUDED.name, description = EXCLUDED.description,
    resource_ref = EXCLUDED.resource_ref, resource_kind = EXCLUDED.resource_kind,
    policy_type = EXCLUDED.policy_type, threshold = EXCLUDED.threshold,
    on_limit = EXCLUDED.on_limit, attributes = EXCLUDED.attributes, enabled = EXCLUDED.enabled,
    source_file = EXCLUDED.source_file, updated_at = now()

-- name: policy_delete_missing
DELETE FROM attune.policy WHERE pack_ref = %(pack)s AND NOT (ref = ANY(%(keep)s::text[]))

-- name: policy_repair
-- Recount the slot counters and hand free slots to waiters (after policies changed).
SELECT attune.policy_repair()

-- ------------------------------------------------------------ events and rules

-- name: event_claim
-- Pending events, oldest first; a batch is matched in one transaction. deferred_rules:
-- the rules emit_event left to workers (NULL: an event from before schema 14, all rules).
SELECT e.id, e.trigger_ref, e.payload, e.rule_ref, e.created_at, e.deferred_rules
  FROM attune.event e
 WHERE e.status = 'pending'
 ORDER BY e.id
   FOR UPDATE SKIP LOCKED
 LIMIT %(n)s

-- name: event_claim_one
SELECT e.id, e.trigger_ref, e.payload, e.rule_ref, e.created_at, e.deferred_rules
  FROM attune.event e
 WHERE e.id = %(id)s AND e.status = 'pending'
   FOR UPDATE SKIP LOCKED

-- name: event_insert_fired
-- A timer's events, already matched (in this transaction) against their own rule.
INSERT INTO attune.event (trigger_ref, payload, rule_ref, status, processed_at)
SELECT v.trigger_ref, v.payload, v.rule_ref, 'processed', now()
  FROM unnest(%(triggers)s::text[], %(payloads)s::jsonb[], %(rules)s::text[])
       WITH ORDINALITY AS v(trigger_ref, payload, rule_ref, n)
 ORDER BY v.n
RETURNING id, created_at

-- name: event_mark_processed
UPDATE attune.event SET status = 'processed', processed_at = now()
 WHERE id = ANY(%(ids)s::bigint[]) AND status = 'pending'

-- name: event_mark_failed
-- An event whose batch failed even on its own (a bug, or an execution the database
-- refused): it is not retried forever; the error says why.
UPDATE attune.event SET status = 'failed', processed_at = now(), error = %(error)s
 WHERE id = %(id)s AND status = 'pending'

-- name: rule_for_triggers
-- Enabled rules of these triggers, with their pack's config for templates.
SELECT r.ref, r.trigger_ref, r.action_ref, r.label, r.conditions, r.action_params,
       r.trigger_params, p.config
  FROM attune.rule r JOIN attune.pack p ON p.ref = r.pack_ref
 WHERE r.enabled AND r.trigger_ref = ANY(%(triggers)s::text[])
 ORDER BY r.ref

-- name: rule_for_refs
SELECT r.ref, r.trigger_ref, r.action_ref, r.label, r.conditions, r.action_params,
       r.trigger_params, p.config
  FROM attune.rule r JOIN attune.pack p ON p.ref = r.pack_ref
 WHERE r.enabled AND r.ref = ANY(%(refs)s::text[])

-- name: action_runnable
-- Which of these refs an INSERT into workflow_execution would accept.
SELECT ref FROM attune.workflow_definition WHERE enabled AND ref = ANY(%(refs)s::text[])
UNION
SELECT ref FROM attune.action WHERE enabled AND runner <> 'workflow' AND ref = ANY(%(refs)s::text[])

-- name: execution_start_many
-- Ids are drawn in row order, so sorted ids match the input order.
INSERT INTO attune.workflow_execution (workflow_ref, parameters, requested_by)
SELECT v.ref, v.parameters, v.who
  FROM unnest(%(refs)s::text[], %(parameters)s::jsonb[], %(who)s::text[])
       WITH ORDINALITY AS v(ref, parameters, who, n)
 ORDER BY v.n
RETURNING id

-- name: enforcement_insert_many
INSERT INTO attune.enforcement (rule_ref, event_id, workflow_execution_id, status, error)
SELECT * FROM unnest(%(rules)s::text[], %(events)s::bigint[], %(executions)s::bigint[],
                     %(statuses)s::text[], %(errors)s::jsonb[])

-- ------------------------------------------------------------ timers

-- name: timer_claim
-- Due timers (DB clock), each claimed by exactly one worker.
SELECT t.rule_ref, t.trigger_ref, t.kind, t.params, t.next_fire_at, t.fire_count, now()
  FROM attune.timer t
 WHERE t.next_fire_at <= now()
 ORDER BY t.next_fire_at
   FOR UPDATE SKIP LOCKED
 LIMIT %(n)s

-- name: timer_advance_many
UPDATE attune.timer t
   SET next_fire_at = v.next_fire_at, fire_count = v.fire_count,
       last_fired_at = CASE WHEN v.fired THEN now() ELSE t.last_fired_at END, updated_at = now()
  FROM unnest(%(rules)s::text[], %(next)s::timestamptz[], %(counts)s::bigint[], %(fired)s::bool[])
       AS v(rule_ref, next_fire_at, fire_count, fired)
 WHERE t.rule_ref = v.rule_ref

-- name: timer_next_due
-- Seconds until the next timer tick (negative: overdue), or NULL.
SELECT extract(epoch FROM min(next_fire_at) - now())::float8
  FROM attune.timer WHERE next_fire_at IS NOT NULL

-- ------------------------------------------------------------ CLI reads

-- name: event_emit
SELECT attune.emit_event(%(trigger)s, %(payload)s)

-- name: rule_list_all
SELECT a.rule_ref AS ref, a.trigger_ref, a.action_ref, a.enabled, r.match_path AS matched_by,
       a.enforcements, a.executions, a.failures, a.last_fired_at
  FROM attune.rule_activity a JOIN attune.rule r ON r.ref = a.rule_ref ORDER BY a.rule_ref

-- name: rule_show
SELECT r.ref, r.label, r.description, r.trigger_ref, r.trigger_params, r.conditions,
       r.action_ref, r.action_params, r.enabled, r.source_file, r.registered_at, r.updated_at,
       r.match_path AS matched_by, r.match_note AS matched_by_worker_because, a.enforcements, a.executions, a.failures, a.last_fired_at
  FROM attune.rule r JOIN attune.rule_activity a ON a.rule_ref = r.ref
 WHERE r.ref = %(ref)s

-- name: rule_set_enabled
UPDATE attune.rule SET enabled = %(enabled)s, updated_at = now() WHERE ref = %(ref)s RETURNING ref

-- name: trigger_list_all
SELECT t.ref, t.timer, t.description,
       (SELECT count(*) FROM attune.rule r WHERE r.trigger_ref = t.ref) AS rules
  FROM attune.trigger t ORDER BY t.ref

-- name: event_list_recent
SELECT e.id, e.trigger_ref, e.rule_ref, e.status, e.created_at, e.payload
  FROM attune.event e
 WHERE %(trigger)s::text IS NULL OR e.trigger_ref = %(trigger)s::text
 ORDER BY e.id DESC LIMIT %(n)s

-- name: event_show
SELECT e.id, e.trigger_ref, e.rule_ref, e.status, e.error, e.emitted_by, e.created_at,
       e.processed_at, e.payload
  FROM attune.event e WHERE e.id = %(id)s

-- name: enforcement_list_recent
SELECT f.id, f.rule_ref, f.event_id, f.workflow_execution_id, f.status,
       f.error ->> 'message' AS error, f.created_at
  FROM attune.enforcement f
 WHERE (%(rule)s::text IS NULL OR f.rule_ref = %(rule)s::text)
   AND (%(event)s::bigint IS NULL OR f.event_id = %(event)s::bigint)
 ORDER BY f.id DESC LIMIT %(n)s

-- name: timer_list_upcoming
SELECT rule_ref, kind, params, enabled, next_fire_at, last_fired_at, fire_count
  FROM attune.upcoming_timers

-- name: policy_usage
SELECT policy_ref, resource_ref, policy_type, threshold, on_limit, key, used, waiting
  FROM attune.concurrency_usage ORDER BY policy_ref, key

-- name: execution_cancel_refused
-- A task a `cancel` concurrency policy refused ends its execution (as StackStorm ends a
-- workflow whose action execution was canceled): canceling, carried out by the control
-- pass like attune.cancel_execution(id, 'allow_finish'); the task ends canceled, unrun.
WITH moved AS (
    UPDATE attune.workflow_execution
       SET status = 'canceling', cancel_policy = 'allow_finish', control_requested_at = now()
     WHERE id = %(id)s AND status IN ('running', 'pausing', 'paused')
    RETURNING id)
SELECT pg_notify('attune_control', '') FROM moved
