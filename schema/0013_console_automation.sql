-- The web console's views of the automation layer (0009), readable by every attune role so
-- the console's rules, triggers, timers, policies and events pages work as attune_reader.

-- Rules with their definition and activity.
CREATE VIEW attune.rule_catalog AS
SELECT r.ref,
       r.pack_ref,
       r.label,
       r.description,
       r.trigger_ref,
       r.trigger_params,
       r.conditions,
       r.action_ref,
       r.action_params,
       r.enabled,
       r.source_file,
       r.updated_at,
       a.enforcements,
       a.executions,
       a.failures,
       a.last_fired_at
  FROM attune.rule r
  JOIN attune.rule_activity a ON a.rule_ref = r.ref;

-- Triggers (event types) with their schemas.
CREATE VIEW attune.trigger_catalog AS
SELECT ref, pack_ref, name, description, parameters, output, timer, source_file, updated_at
  FROM attune.trigger;

-- Concurrency policies.
CREATE VIEW attune.policy_catalog AS
SELECT ref, pack_ref, name, description, resource_ref, resource_kind, policy_type, threshold,
       on_limit, attributes, enabled, source_file, updated_at
  FROM attune.policy;

-- Events (payloads passed the trigger's output schema before they were stored).
CREATE VIEW attune.event_log AS
SELECT id, trigger_ref, payload, rule_ref, status, error, emitted_by, created_at, processed_at
  FROM attune.event;

-- What each matching rule did with each event.
CREATE VIEW attune.enforcement_log AS
SELECT id, rule_ref, event_id, workflow_execution_id, status, error, created_at
  FROM attune.enforcement;

GRANT SELECT ON attune.rule_catalog, attune.trigger_catalog, attune.policy_catalog,
    attune.event_log, attune.enforcement_log
    TO attune_reader, attune_submitter, attune_worker;
