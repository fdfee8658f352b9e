-- name: prune_batch
-- One batch of attune.prune (schema/0010): the top-level executions and events deleted.
SELECT attune.prune(make_interval(secs => %(seconds)s::float8), %(batch)s::int,
                    %(statuses)s::text[])

-- name: prune_preview
-- What prune would delete now: finished top-level executions older than the cut-off,
-- whose family is entirely finished, with their descendants, task rows and audit rows.
WITH doomed AS (
    SELECT e.id FROM attune.workflow_execution e
     WHERE e.parent_task_id IS NULL
       AND e.status IN ('succeeded', 'failed', 'canceled', 'timed_out')
       AND e.status = ANY(coalesce(%(statuses)s::text[],
                                   ARRAY['succeeded', 'failed', 'canceled', 'timed_out']))
       AND e.finished_at < now() - make_interval(secs => %(seconds)s::float8)
       AND NOT EXISTS (SELECT 1 FROM attune.workflow_execution c
                        WHERE c.root_id = e.id
                          AND c.status NOT IN ('succeeded', 'failed', 'canceled', 'timed_out'))),
family AS (
    SELECT id FROM doomed
    UNION ALL
    SELECT c.id FROM attune.workflow_execution c WHERE c.root_id IN (SELECT id FROM doomed))
SELECT (SELECT count(*) FROM doomed)::bigint AS executions,
       (SELECT count(*) FROM family)::bigint - (SELECT count(*) FROM doomed)::bigint AS children,
       (SELECT count(*) FROM attune.task_execution
         WHERE workflow_execution_id IN (SELECT id FROM family))::bigint AS tasks,
       (SELECT count(*) FROM attune.execution_event
         WHERE workflow_execution_id IN (SELECT id FROM family))::bigint AS events,
       (SELECT min(finished_at) FROM attune.workflow_execution
         WHERE id IN (SELECT id FROM doomed)) AS oldest,
       CASE WHEN %(statuses)s::text[] IS NULL THEN
         (SELECT count(*) FROM attune.event v
           WHERE v.created_at < now() - make_interval(secs => %(seconds)s::float8)
             AND v.status <> 'pending'
             AND NOT EXISTS (SELECT 1 FROM attune.enforcement f
                              WHERE f.event_id = v.id AND f.workflow_execution_id IS NOT NULL
                                AND f.workflow_execution_id NOT IN (SELECT id FROM family)))
       ELSE 0 END::bigint AS trigger_events
