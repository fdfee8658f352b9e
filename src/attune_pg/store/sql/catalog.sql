-- name: registration_lock
-- One registration at a time (the CLI, `packs watch`, a worker's --watch-packs): each reads
-- the registered state, then writes what differs, in one transaction.
SELECT pg_advisory_xact_lock(%(lock)s)

-- name: catalog_notify
-- Workers reload their action catalogue when they hear this (after the commit).
SELECT pg_notify('attune_catalog', %(pack)s)

-- name: pack_state
-- What is registered of these packs: hash of pack.yaml, path, retired or not.
SELECT ref, content_hash, path, unregistered_at IS NOT NULL AS retired
  FROM attune.pack WHERE ref = ANY(%(refs)s::text[])

-- name: pack_list
SELECT p.ref, p.version, p.label, p.path, p.updated_at,
       p.unregistered_at IS NOT NULL AS unregistered,
       (SELECT count(*) FROM attune.workflow_definition d WHERE d.pack_ref = p.ref) AS workflows,
       (SELECT count(*) FROM attune.action a
         WHERE a.pack_ref = p.ref AND a.runner <> 'workflow' AND a.unregistered_at IS NULL)
           AS actions
  FROM attune.pack p
 WHERE %(all)s OR p.unregistered_at IS NULL
 ORDER BY p.ref

-- name: pack_under_path
-- Registered packs whose directory is PATH itself or lies below it (for `packs sync`).
SELECT ref FROM attune.pack
 WHERE unregistered_at IS NULL
   AND (path = %(path)s OR starts_with(path, %(prefix)s))

-- name: pack_upsert
INSERT INTO attune.pack
       (ref, label, description, version, config_schema, config, path, content_hash)
VALUES (%(ref)s, %(label)s, %(description)s, %(version)s, %(config_schema)s, %(config)s,
        %(path)s, %(content_hash)s)
ON CONFLICT (ref) DO UPDATE
   SET label = EXCLUDED.label, description = EXCLUDED.description,
       version = EXCLUDED.version, config_schema = EXCLUDED.config_schema,
       config = EXCLUDED.config, path = EXCLUDED.path,
       content_hash = EXCLUDED.content_hash, unregistered_at = NULL, updated_at = now()

-- name: pack_retire
UPDATE attune.pack SET unregistered_at = now(), updated_at = now()
 WHERE ref = %(ref)s AND unregistered_at IS NULL
RETURNING ref

-- name: action_state
-- The registered actions of these packs (workflows-as-actions excluded: their state is
-- the workflow's), with the file each came from.
SELECT ref, content_hash, spec ->> 'source_file' AS source_file
  FROM attune.action
 WHERE pack_ref = ANY(%(packs)s::text[]) AND runner <> 'workflow' AND unregistered_at IS NULL

-- name: action_specs
-- Registered (not retired) actions by ref: what a workflow being registered may call.
SELECT spec FROM attune.action WHERE ref = ANY(%(refs)s::text[]) AND unregistered_at IS NULL

-- name: action_refs
SELECT ref FROM attune.action WHERE unregistered_at IS NULL

-- name: action_catalog
-- A worker's catalogue: retired actions included (they are disabled, so nothing new starts
-- them), so tasks of executions that were already running when their pack was
-- unregistered still find what they call.
SELECT spec FROM attune.action WHERE enabled OR unregistered_at IS NOT NULL

-- name: action_upsert
INSERT INTO attune.action (ref, pack_ref, name, description, runner, entry_point,
                           parameters, output_schema, timeout, spec, content_hash)
VALUES (%(ref)s, %(pack_ref)s, %(name)s, %(description)s, %(runner)s, %(entry_point)s,
        %(parameters)s, %(output_schema)s, %(timeout)s, %(spec)s, %(content_hash)s)
ON CONFLICT (ref) DO UPDATE
   SET pack_ref = EXCLUDED.pack_ref, name = EXCLUDED.name,
       description = EXCLUDED.description, runner = EXCLUDED.runner,
       entry_point = EXCLUDED.entry_point, parameters = EXCLUDED.parameters,
       output_schema = EXCLUDED.output_schema, timeout = EXCLUDED.timeout,
       spec = EXCLUDED.spec, content_hash = EXCLUDED.content_hash,
       -- a retired action comes back enabled; a registered one keeps its flag
       enabled = attune.action.enabled OR attune.action.unregistered_at IS NOT NULL,
       unregistered_at = NULL, updated_at = now()

-- name: action_retire
-- Retired actions are disabled too: a new one-task execution of one (or a rule's) is
-- refused ("workflow 'x' is disabled"), as the prepare trigger refuses disabled actions.
UPDATE attune.action SET unregistered_at = now(), enabled = false, updated_at = now()
 WHERE ref = ANY(%(refs)s::text[]) AND unregistered_at IS NULL

-- name: action_retire_pack
UPDATE attune.action SET unregistered_at = now(), enabled = false, updated_at = now()
 WHERE pack_ref = %(pack)s AND unregistered_at IS NULL

-- name: workflow_state
-- Registered workflows of these packs and the hash of the file each came from.
SELECT ref, content_hash FROM attune.workflow_definition
 WHERE pack_ref = ANY(%(packs)s::text[])

-- name: workflow_upsert
-- `enabled` is left alone: a workflow disabled by an operator stays disabled when its
-- file is registered again (`attune-pg workflows enable REF` turns it back on).
INSERT INTO attune.workflow_definition (ref, pack_ref, label, description, version,
                                        parameters, definition, source, source_file,
                                        content_hash)
VALUES (%(ref)s, %(pack_ref)s, %(label)s, %(description)s, %(version)s, %(parameters)s,
        %(definition)s, %(source)s, %(source_file)s, %(content_hash)s)
ON CONFLICT (ref) DO UPDATE
   SET label = EXCLUDED.label, description = EXCLUDED.description,
       version = EXCLUDED.version, parameters = EXCLUDED.parameters,
       definition = EXCLUDED.definition, source = EXCLUDED.source,
       source_file = EXCLUDED.source_file, content_hash = EXCLUDED.content_hash,
       updated_at = now()

-- name: workflow_delete
DELETE FROM attune.workflow_definition WHERE ref = ANY(%(refs)s::text[]) RETURNING ref

-- name: workflow_delete_pack
DELETE FROM attune.workflow_definition WHERE pack_ref = %(pack)s RETURNING ref

-- name: workflow_users
-- Registered workflows (other than `exclude`) whose tasks call one of `refs`, with the
-- ref each calls: the dependents of actions or workflows that change or go away.
SELECT DISTINCT d.ref, d.pack_ref, task ->> 'action' AS action_ref
  FROM attune.workflow_definition d
 CROSS JOIN LATERAL (
        SELECT t AS task FROM jsonb_array_elements(d.definition -> 'tasks') t
        UNION ALL
        SELECT s FROM jsonb_array_elements(d.definition -> 'tasks') t,
                      jsonb_array_elements(coalesce(t -> 'tasks', '[]'::jsonb)) s) tasks
 WHERE task ->> 'action' = ANY(%(refs)s::text[])
   AND d.ref <> ALL(%(exclude)s::text[])
 ORDER BY d.ref

-- name: workflow_set_enabled
UPDATE attune.workflow_definition SET enabled = %(enabled)s, updated_at = now()
 WHERE ref = %(ref)s
RETURNING ref

-- name: workflow_list
-- `workflows list` with its filters; NULL filters match everything.
SELECT ref, pack_ref AS pack, version, enabled, label, description,
       coalesce(definition -> 'tags', '[]'::jsonb) AS tags, source_file, updated_at
  FROM attune.workflow_definition
 WHERE (%(pack)s::text IS NULL OR pack_ref = %(pack)s::text)
   AND (%(tag)s::text IS NULL OR coalesce(definition -> 'tags', '[]'::jsonb) ? %(tag)s::text)
   AND (%(enabled)s::boolean IS NULL OR enabled = %(enabled)s::boolean)
   AND (%(search)s::text IS NULL
        OR strpos(lower(ref || ' ' || label || ' ' || description), lower(%(search)s::text)) > 0)
 ORDER BY ref
