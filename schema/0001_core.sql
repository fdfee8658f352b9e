-- attune_pg core schema: packs, definitions, executions, task rows, audit, kv, workers.
-- Forward-only. Applied by `attune-pg init` under an advisory lock, inside one transaction.
-- Status columns are text with CHECKs; the legal moves live in attune.status_transition
-- (generated from machine.py in 0002) and are enforced by the guard triggers below.

CREATE SCHEMA IF NOT EXISTS attune;

CREATE TABLE attune.pack (
    ref            text PRIMARY KEY CHECK (ref ~ '^[a-z0-9_]+$'),
    label          text NOT NULL,
    description    text NOT NULL DEFAULT '',
    version        text NOT NULL,
    config_schema  jsonb,
    config         jsonb NOT NULL DEFAULT '{}',
    path           text,
    registered_at  timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE attune.action (
    ref            text PRIMARY KEY,
    pack_ref       text NOT NULL REFERENCES attune.pack ON DELETE CASCADE,
    name           text NOT NULL,
    description    text NOT NULL DEFAULT '',
    runner         text NOT NULL CHECK (runner IN ('python', 'shell', 'http', 'builtin', 'workflow')),
    entry_point    text,
    parameters     jsonb NOT NULL,
    output_schema  jsonb,
    timeout        double precision,
    spec           jsonb NOT NULL,
    enabled        boolean NOT NULL DEFAULT true,
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE attune.workflow_definition (
    ref            text PRIMARY KEY,
    pack_ref       text NOT NULL REFERENCES attune.pack ON DELETE CASCADE,
    label          text NOT NULL,
    description    text NOT NULL DEFAULT '',
    version        text NOT NULL,
    parameters     jsonb NOT NULL,
    definition     jsonb NOT NULL,
    source         text NOT NULL,
    source_file    text,
    enabled        boolean NOT NULL DEFAULT true,
    registered_at  timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE attune.workflow_execution (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_ref     text NOT NULL,
    parameters       jsonb NOT NULL DEFAULT '{}',
    status           text NOT NULL DEFAULT 'requested',
    output           jsonb,
    error            jsonb,
    parent_task_id   bigint,
    root_id          bigint,
    depth            int NOT NULL DEFAULT 0,
    idempotency_key  text,
    priority         int NOT NULL DEFAULT 0,
    requested_by     text NOT NULL DEFAULT current_user,
    -- Snapshot of the definition and pack config taken at INSERT: edits to the
    -- workflow file never change an execution that has already been requested.
    definition       jsonb,
    pack_config      jsonb NOT NULL DEFAULT '{}',
    vars             jsonb NOT NULL DEFAULT '{}',
    -- Number of task_state rows in status 'running'; the workflow can finish when 0.
    active_tasks     int NOT NULL DEFAULT 0 CHECK (active_tasks >= 0),
    timeout_at       timestamptz,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    finished_at      timestamptz,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT workflow_execution_parameters_object CHECK (jsonb_typeof(parameters) = 'object')
);

CREATE TABLE attune.task_state (
    workflow_execution_id  bigint NOT NULL REFERENCES attune.workflow_execution ON DELETE CASCADE,
    task_name              text NOT NULL,
    iteration              int NOT NULL CHECK (iteration >= 1),
    status                 text NOT NULL DEFAULT 'pending',
    join_required          int,
    join_arrivals          int NOT NULL DEFAULT 0,
    items_total            int,
    items_released         int NOT NULL DEFAULT 0,
    items_done             int NOT NULL DEFAULT 0,
    items_failed           int NOT NULL DEFAULT 0,
    result                 jsonb,
    error                  jsonb,
    created_at             timestamptz NOT NULL DEFAULT now(),
    finished_at            timestamptz,
    PRIMARY KEY (workflow_execution_id, task_name, iteration)
);

CREATE TABLE attune.task_execution (
    id                     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_execution_id  bigint NOT NULL REFERENCES attune.workflow_execution ON DELETE CASCADE,
    task_name              text NOT NULL,
    iteration              int NOT NULL DEFAULT 1 CHECK (iteration >= 1),
    item_index             int CHECK (item_index >= 0),
    attempt                int NOT NULL DEFAULT 1 CHECK (attempt >= 1),
    action_ref             text NOT NULL,
    status                 text NOT NULL DEFAULT 'pending',
    input                  jsonb NOT NULL DEFAULT '{}',
    result                 jsonb,
    error                  jsonb,
    priority               int NOT NULL DEFAULT 0,
    run_at                 timestamptz NOT NULL DEFAULT now(),
    timeout                double precision CHECK (timeout > 0),
    lease_owner            text,
    lease_expires_at       timestamptz,
    -- How many times a worker claimed this row; > 1 means a worker died or handed it back.
    claims                 int NOT NULL DEFAULT 0,
    created_at             timestamptz NOT NULL DEFAULT now(),
    started_at             timestamptz,
    finished_at            timestamptz,
    updated_at             timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE attune.workflow_execution
    ADD CONSTRAINT workflow_execution_parent_task_fk
    FOREIGN KEY (parent_task_id) REFERENCES attune.task_execution (id) ON DELETE CASCADE;

CREATE TABLE attune.inquiry (
    id                     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    task_execution_id      bigint NOT NULL UNIQUE REFERENCES attune.task_execution ON DELETE CASCADE,
    workflow_execution_id  bigint NOT NULL REFERENCES attune.workflow_execution ON DELETE CASCADE,
    status                 text NOT NULL DEFAULT 'pending'
                           CHECK (status IN ('pending', 'responded', 'timed_out', 'canceled')),
    prompt                 text NOT NULL DEFAULT '',
    schema                 jsonb NOT NULL DEFAULT '{}',
    assigned_to            text,
    response               jsonb,
    responded_by           text,
    expires_at             timestamptz,
    created_at             timestamptz NOT NULL DEFAULT now(),
    responded_at           timestamptz
);

CREATE TABLE attune.kv (
    key         text PRIMARY KEY,
    value       jsonb NOT NULL,
    secret      boolean NOT NULL DEFAULT false,
    updated_by  text NOT NULL DEFAULT current_user,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE attune.worker (
    id            text PRIMARY KEY,
    hostname      text NOT NULL,
    pid           int NOT NULL,
    concurrency   int NOT NULL,
    started_at    timestamptz NOT NULL DEFAULT now(),
    heartbeat_at  timestamptz NOT NULL DEFAULT now(),
    stopped_at    timestamptz,
    running       int NOT NULL DEFAULT 0,
    tasks_done    bigint NOT NULL DEFAULT 0
);

-- Append-only audit: every status change (written by the guard triggers, so even a
-- change made by hand in SQL is recorded) and every published variable.
CREATE TABLE attune.execution_event (
    id                     bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    workflow_execution_id  bigint NOT NULL,
    task_execution_id      bigint,
    task_name              text,
    kind                   text NOT NULL,
    from_status            text,
    to_status              text,
    data                   jsonb,
    actor                  text NOT NULL DEFAULT current_user,
    created_at             timestamptz NOT NULL DEFAULT clock_timestamp()
);

-- Hot paths. Partial indexes hold only live rows, so claims stay flat as history grows.
CREATE UNIQUE INDEX task_execution_occurrence
    ON attune.task_execution (workflow_execution_id, task_name, iteration, coalesce(item_index, -1), attempt);
CREATE INDEX task_execution_claimable
    ON attune.task_execution (priority, run_at, id) WHERE status = 'scheduled';
CREATE INDEX task_execution_leased
    ON attune.task_execution (lease_expires_at) WHERE status = 'running';
CREATE INDEX task_execution_pending_items
    ON attune.task_execution (workflow_execution_id, task_name, iteration, item_index)
    WHERE status = 'pending';
CREATE INDEX task_execution_waiting
    ON attune.task_execution (workflow_execution_id) WHERE status = 'waiting';
CREATE INDEX workflow_execution_requested
    ON attune.workflow_execution (priority, id) WHERE status = 'requested';
CREATE INDEX workflow_execution_live
    ON attune.workflow_execution (timeout_at) WHERE status NOT IN ('succeeded', 'failed', 'canceled', 'timed_out');
CREATE INDEX workflow_execution_parent
    ON attune.workflow_execution (parent_task_id) WHERE parent_task_id IS NOT NULL;
CREATE INDEX workflow_execution_created ON attune.workflow_execution (created_at);
CREATE UNIQUE INDEX workflow_execution_idempotency
    ON attune.workflow_execution (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX task_state_pending
    ON attune.task_state (workflow_execution_id) WHERE status = 'pending';
CREATE INDEX inquiry_open ON attune.inquiry (expires_at) WHERE status = 'pending';
CREATE INDEX execution_event_execution ON attune.execution_event (workflow_execution_id, id);

-- Hot, churny tables: vacuum them early so dead tuples from claims do not pile up.
ALTER TABLE attune.task_execution SET (autovacuum_vacuum_scale_factor = 0.02, autovacuum_analyze_scale_factor = 0.02, fillfactor = 80);
ALTER TABLE attune.task_state SET (autovacuum_vacuum_scale_factor = 0.02, fillfactor = 80);
ALTER TABLE attune.workflow_execution SET (autovacuum_vacuum_scale_factor = 0.02, fillfactor = 80);
