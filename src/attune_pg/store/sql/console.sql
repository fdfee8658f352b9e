-- The web console's reads. Only views (0003, 0012): the console works connected as
-- attune_reader. Optional filters are NULL when unset.

-- name: console_execution_page_older
-- One page of executions, newest first, keyset-paginated (`before`: ids below it). The scan
-- walks the primary key backwards and stops at the LIMIT, so a page costs the same with a
-- million rows as with ten; the task counts are computed for the page's rows only.
SELECT s.id, s.workflow_ref, s.status, s.requested_by, s.parent_task_id, s.depth, s.created_at,
       s.started_at, s.finished_at, s.duration, s.error_message, s.tasks_total,
       s.tasks_succeeded, s.tasks_failed, s.tasks_active
  FROM attune.workflow_execution_summary s
 WHERE s.id IN (SELECT id FROM attune.execution_detail
                 WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
                   AND (%(workflow)s::text IS NULL OR workflow_ref = %(workflow)s::text)
                   AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s::timestamptz)
                   AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s::timestamptz)
                   AND (%(text)s::text IS NULL OR workflow_ref ILIKE %(text)s::text
                        OR error ->> 'message' ILIKE %(text)s::text OR id::text = %(id_text)s::text)
                   AND (%(before)s::bigint IS NULL OR id < %(before)s::bigint)
                 ORDER BY id DESC
                 LIMIT %(limit)s::int)
 ORDER BY s.id DESC

-- name: console_execution_page_newer
-- The page just above `after` (the "newer" link), oldest first; the caller reverses it.
SELECT s.id, s.workflow_ref, s.status, s.requested_by, s.parent_task_id, s.depth, s.created_at,
       s.started_at, s.finished_at, s.duration, s.error_message, s.tasks_total,
       s.tasks_succeeded, s.tasks_failed, s.tasks_active
  FROM attune.workflow_execution_summary s
 WHERE s.id IN (SELECT id FROM attune.execution_detail
                 WHERE (%(status)s::text IS NULL OR status = %(status)s::text)
                   AND (%(workflow)s::text IS NULL OR workflow_ref = %(workflow)s::text)
                   AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s::timestamptz)
                   AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s::timestamptz)
                   AND (%(text)s::text IS NULL OR workflow_ref ILIKE %(text)s::text
                        OR error ->> 'message' ILIKE %(text)s::text OR id::text = %(id_text)s::text)
                   AND id > %(after)s::bigint
                 ORDER BY id
                 LIMIT %(limit)s::int)
 ORDER BY s.id

-- name: console_execution_counts_live
-- Live executions per status, exact: the status list is a literal, so the scan uses the
-- partial index of live executions however much history there is.
SELECT status, count(*) AS n
  FROM attune.execution_detail
 WHERE status NOT IN ('succeeded', 'failed', 'canceled', 'timed_out')
   AND (%(workflow)s::text IS NULL OR workflow_ref = %(workflow)s::text)
   AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s::timestamptz)
   AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s::timestamptz)
   AND (%(text)s::text IS NULL OR workflow_ref ILIKE %(text)s::text
        OR error ->> 'message' ILIKE %(text)s::text OR id::text = %(id_text)s::text)
 GROUP BY status

-- name: console_execution_counts_recent
-- Finished executions per status among the newest `window` finished ones matching the filters
-- (bounded work). `rows` < window means the counts are exact; otherwise each is a lower bound.
SELECT status, count(*) AS n, sum(count(*)) OVER () AS rows
  FROM (SELECT status
          FROM attune.execution_detail
         WHERE status IN ('succeeded', 'failed', 'canceled', 'timed_out')
           AND (%(workflow)s::text IS NULL OR workflow_ref = %(workflow)s::text)
           AND (%(since)s::timestamptz IS NULL OR created_at >= %(since)s::timestamptz)
           AND (%(until)s::timestamptz IS NULL OR created_at < %(until)s::timestamptz)
           AND (%(text)s::text IS NULL OR workflow_ref ILIKE %(text)s::text
                OR error ->> 'message' ILIKE %(text)s::text OR id::text = %(id_text)s::text)
         ORDER BY id DESC
         LIMIT %(window)s::int) recent
 GROUP BY status

-- name: console_execution_get
SELECT id, workflow_ref, status, priority, requested_by, parent_task_id, parent_execution_id,
       root_id, depth, parameters, vars, output, error, definition, created_at, started_at,
       finished_at, updated_at
  FROM attune.execution_detail
 WHERE id = %(id)s::bigint

-- name: console_execution_tasks
-- Task attempts in the order they ran; capped, an execution may have 10,000 items.
SELECT id, task_name, iteration, item_index, attempt, action_ref, status, input, result, error,
       error_message, run_at, started_at, finished_at, lease_owner, claims
  FROM attune.workflow_task_detail
 WHERE workflow_execution_id = %(id)s::bigint
 ORDER BY coalesce(started_at, run_at), id
 LIMIT %(limit)s::int

-- name: console_execution_task_totals
-- Per task: attempts by status, for progress bars (with-items) and the graph's colours.
SELECT task_name,
       count(*) AS total,
       count(*) FILTER (WHERE status = 'succeeded') AS succeeded,
       count(*) FILTER (WHERE status IN ('failed', 'timed_out')) AS failed,
       count(*) FILTER (WHERE status IN ('running', 'waiting')) AS running,
       count(*) FILTER (WHERE status IN ('pending', 'scheduled')) AS queued,
       count(*) FILTER (WHERE status IN ('canceled', 'skipped')) AS other,
       count(DISTINCT item_index) AS items
  FROM attune.workflow_task_detail
 WHERE workflow_execution_id = %(id)s::bigint
 GROUP BY task_name

-- name: console_execution_latest_statuses
-- Task name -> status of its latest run (last attempt of its latest iteration; for a
-- with_items task the most telling of its items' statuses, by the order given).
SELECT task_name,
       (array_agg(status ORDER BY array_position(%(precedence)s::text[], status) NULLS LAST))[1]
         AS status
  FROM (SELECT DISTINCT ON (task_name, coalesce(item_index, -1)) task_name, status
          FROM attune.workflow_task_detail t
         WHERE workflow_execution_id = %(id)s::bigint
           AND iteration = (SELECT max(iteration) FROM attune.workflow_task_detail m
                             WHERE m.workflow_execution_id = t.workflow_execution_id
                               AND m.task_name = t.task_name)
         ORDER BY task_name, coalesce(item_index, -1), attempt DESC, id DESC) latest
 GROUP BY task_name

-- name: console_execution_audit
SELECT id, task_execution_id, task_name, kind, from_status, to_status, data, actor, created_at
  FROM attune.execution_audit
 WHERE workflow_execution_id = %(id)s::bigint
 ORDER BY id
 LIMIT %(limit)s::int

-- name: console_execution_children
SELECT s.id, s.workflow_ref, s.status, s.created_at, s.finished_at, d.task_name
  FROM attune.workflow_execution_summary s
  JOIN attune.workflow_task_detail d ON d.id = s.parent_task_id
 WHERE d.workflow_execution_id = %(id)s::bigint
 ORDER BY s.id
 LIMIT %(limit)s::int

-- name: console_execution_inquiries
SELECT id, task_name, prompt, schema, assigned_to, expires_at, created_at
  FROM attune.pending_inquiries
 WHERE workflow_execution_id = %(id)s::bigint
 ORDER BY id

-- name: console_inquiry_get
SELECT id, workflow_execution_id, task_name, prompt, schema, assigned_to, expires_at
  FROM attune.pending_inquiries
 WHERE id = %(id)s::bigint

-- name: console_workflow_list
SELECT w.ref, w.pack_ref, w.label, w.version, w.enabled, w.description, w.updated_at
  FROM attune.workflow_catalog w
 ORDER BY w.ref

-- name: console_workflow_get
SELECT ref, pack_ref, label, version, enabled, description, parameters, definition, source,
       source_file, updated_at
  FROM attune.workflow_catalog
 WHERE ref = %(ref)s::text

-- name: console_worker_list
SELECT id, hostname, pid, concurrency, running, tasks_done, started_at, heartbeat_at,
       stopped_at, state
  FROM attune.worker_status
 ORDER BY state = 'alive' DESC, started_at DESC
 LIMIT 200

-- name: console_queue_depth
SELECT kind, ref, ready, delayed, running, waiting, pending, oldest_ready_at
  FROM attune.queue_depth
 ORDER BY kind, ref

-- name: console_identity
-- Who the console is connected as, and whether that role may start and control executions.
SELECT session_user::text AS login,
       has_function_privilege('attune.cancel_execution(bigint, text)', 'EXECUTE') AS can_control

-- name: console_rule_list
SELECT ref, label, trigger_ref, action_ref, enabled, enforcements, executions, failures,
       last_fired_at
  FROM attune.rule_catalog
 ORDER BY ref

-- name: console_rule_get
SELECT ref, pack_ref, label, description, trigger_ref, trigger_params, conditions, action_ref,
       action_params, enabled, source_file, updated_at, enforcements, executions, failures,
       last_fired_at
  FROM attune.rule_catalog
 WHERE ref = %(ref)s::text

-- name: console_trigger_list
SELECT ref, name, description, parameters, output, timer
  FROM attune.trigger_catalog
 ORDER BY ref

-- name: console_timer_list
SELECT rule_ref, trigger_ref, kind, params, action_ref, enabled, next_fire_at, due_in,
       last_fired_at, fire_count
  FROM attune.upcoming_timers

-- name: console_policy_list
SELECT p.ref, p.resource_ref, p.resource_kind, p.policy_type, p.threshold, p.on_limit,
       p.attributes, p.enabled, coalesce(sum(u.used), 0) AS used,
       coalesce(sum(u.waiting), 0) AS waiting
  FROM attune.policy_catalog p
  LEFT JOIN attune.concurrency_usage u ON u.policy_ref = p.ref
 GROUP BY p.ref, p.resource_ref, p.resource_kind, p.policy_type, p.threshold, p.on_limit,
          p.attributes, p.enabled
 ORDER BY p.ref

-- name: console_event_page
-- Events newest first, keyset-paginated like executions, optionally of one trigger.
SELECT e.id, e.trigger_ref, e.payload, e.rule_ref, e.status, e.error, e.emitted_by,
       e.created_at, e.processed_at,
       (SELECT count(*) FROM attune.enforcement_log f WHERE f.event_id = e.id) AS enforcements
  FROM attune.event_log e
 WHERE (%(trigger)s::text IS NULL OR e.trigger_ref = %(trigger)s::text)
   AND (%(before)s::bigint IS NULL OR e.id < %(before)s::bigint)
 ORDER BY e.id DESC
 LIMIT %(limit)s::int

-- name: console_event_get
SELECT id, trigger_ref, payload, rule_ref, status, error, emitted_by, created_at, processed_at
  FROM attune.event_log
 WHERE id = %(id)s::bigint

-- name: console_enforcement_list
-- Enforcements of one event, or the latest of one rule.
SELECT f.id, f.rule_ref, f.event_id, f.workflow_execution_id, f.status, f.error, f.created_at,
       x.status AS execution_status
  FROM attune.enforcement_log f
  LEFT JOIN attune.execution_detail x ON x.id = f.workflow_execution_id
 WHERE (%(event)s::bigint IS NULL OR f.event_id = %(event)s::bigint)
   AND (%(rule)s::text IS NULL OR f.rule_ref = %(rule)s::text)
 ORDER BY f.id DESC
 LIMIT %(limit)s::int
