-- Views for the web console (`attune-pg ui`), readable by every attune role, so the console
-- works connected as attune_reader: one execution's detail, its audit trail and the catalog of
-- registered workflows. Secrets are not in them: secret parameters and kv.get_secret values are
-- stored as tokens, and results and errors are masked before they are stored.

-- One execution: what the summary view has plus parameters, vars, output, error, the
-- definition snapshot it runs, and its parent execution.
CREATE VIEW attune.execution_detail AS
SELECT e.id,
       e.workflow_ref,
       e.status,
       e.priority,
       e.requested_by,
       e.parent_task_id,
       p.workflow_execution_id AS parent_execution_id,
       e.root_id,
       e.depth,
       e.parameters,
       e.vars,
       e.output,
       e.error,
       e.definition,
       e.created_at,
       e.started_at,
       e.finished_at,
       e.updated_at
  FROM attune.workflow_execution e
  LEFT JOIN attune.task_execution p ON p.id = e.parent_task_id;

-- The audit log (every status change and published variable), one row per event.
CREATE VIEW attune.execution_audit AS
SELECT id, workflow_execution_id, task_execution_id, task_name, kind, from_status, to_status,
       data, actor, created_at
  FROM attune.execution_event;

-- Registered workflows with their source text and normalised definition.
CREATE VIEW attune.workflow_catalog AS
SELECT d.ref,
       d.pack_ref,
       d.label,
       d.description,
       d.version,
       d.enabled,
       d.parameters,
       d.definition,
       d.source,
       d.source_file,
       d.registered_at,
       d.updated_at
  FROM attune.workflow_definition d;

GRANT SELECT ON attune.execution_detail, attune.execution_audit, attune.workflow_catalog
    TO attune_reader, attune_submitter, attune_worker;
