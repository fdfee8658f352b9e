-- Registration at scale, unregistering, and the catalogue's change notifications.
-- Documented in docs/operations.md (Packs).
--
-- content_hash: sha256 of the loader's fingerprint, the file's absolute path and its bytes.
-- A re-registration skips files whose hash is unchanged (neither parsed nor written), so
-- registering thousands of unchanged workflows costs little more than reading them.
--
-- unregistered_at: packs and actions are retired rather than deleted, so a task of an
-- execution that is already running still finds the action it calls (executions keep
-- their definition snapshot; actions are looked up by ref). Retired actions are also
-- disabled (enabled = false), so nothing new starts them; they are invisible to
-- registration checks and listings; registering the pack again revives them. Workflow
-- definitions themselves are deleted: a new start of an unregistered ref is refused by the
-- prepare trigger ("unknown workflow 'x'"), and running executions need only their snapshot.

ALTER TABLE attune.pack
    ADD COLUMN content_hash text,
    ADD COLUMN unregistered_at timestamptz;

ALTER TABLE attune.action
    ADD COLUMN content_hash text,
    ADD COLUMN unregistered_at timestamptz;

ALTER TABLE attune.workflow_definition
    ADD COLUMN content_hash text;

-- Registration reads the state of whole packs at once.
CREATE INDEX action_pack_ref ON attune.action (pack_ref);
CREATE INDEX workflow_definition_pack_ref ON attune.workflow_definition (pack_ref);

-- A retired action no longer counts as registered for the link view.
CREATE OR REPLACE VIEW attune.workflow_action_link AS
SELECT d.ref AS workflow_ref,
       task ->> 'name' AS task_name,
       task ->> 'action' AS action_ref,
       a.runner AS action_runner,
       (a.runner = 'workflow') AS action_is_workflow,
       (a.ref IS NOT NULL) AS action_registered
  FROM attune.workflow_definition d
 CROSS JOIN LATERAL (
        SELECT t AS task FROM jsonb_array_elements(d.definition -> 'tasks') t
        UNION ALL
        SELECT s FROM jsonb_array_elements(d.definition -> 'tasks') t,
                      jsonb_array_elements(coalesce(t -> 'tasks', '[]'::jsonb)) s) tasks
  LEFT JOIN attune.action a ON a.ref = task ->> 'action' AND a.unregistered_at IS NULL
 WHERE task ->> 'action' IS NOT NULL;
