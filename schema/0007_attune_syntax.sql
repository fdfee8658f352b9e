-- Attune's workflow syntax with Attune's meaning (issue 8, item 1).
--
-- 1. Joins count inbound *tasks* per branch (route), as Orquesta's do:
--    task_state.route   the branch of a task occurrence: '' from the start, then one
--                       '<task>__t<n>' step per transition that entered a split task;
--    task_state.join_from  the distinct predecessors that arrived in a join's round.
--    Both are written with the rest of the row by the advance that changes it (no
--    rescans: a join stays one row per round). Rows written before this migration
--    have route '' and an empty join_from; their join_arrivals still count.
-- 2. system.identity.login is the PostgreSQL login that started the execution:
--    workflow_execution.started_by, set by a trigger (session_user, or a child's
--    parent's), so no INSERT can claim another login. `requested_by` stays what the
--    caller says (the CLI writes the OS user). Older rows keep NULL and read as
--    requested_by.
-- 3. An inquiry's assigned_to may name a group: a PostgreSQL role. An answer from any
--    member of that role (pg_has_role ... 'MEMBER') is accepted, one from anybody else
--    refused with a message naming the assignees.

ALTER TABLE attune.task_state
    ADD COLUMN route text NOT NULL DEFAULT '',
    ADD COLUMN join_from text[] NOT NULL DEFAULT '{}';

ALTER TABLE attune.workflow_execution ADD COLUMN started_by text;

-- A definer, like every trigger function (0005): reading the parent's row needs no
-- privilege of the inserting role.
CREATE FUNCTION attune.set_started_by() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, attune, pg_temp AS $$
DECLARE
    parent_login text;
BEGIN
    -- Whatever the INSERT says is replaced: the column is the database's word.
    IF NEW.parent_task_id IS NOT NULL THEN
        SELECT coalesce(p.started_by, p.requested_by) INTO parent_login
          FROM attune.task_execution t
          JOIN attune.workflow_execution p ON p.id = t.workflow_execution_id
         WHERE t.id = NEW.parent_task_id;
    END IF;
    -- Inside SECURITY DEFINER functions (start_execution) session_user is still the
    -- caller's login; current_user would be the owner.
    NEW.started_by := coalesce(parent_login, session_user);
    RETURN NEW;
END $$;

-- Runs before the prepare/guard triggers (10_, 20_): it only fills a column.
CREATE TRIGGER workflow_execution_05_started_by BEFORE INSERT ON attune.workflow_execution
    FOR EACH ROW EXECUTE FUNCTION attune.set_started_by();

-- respond_inquiry exactly as 0006 defines it (`who` may not be NULL or empty, the
-- response bounded by attune.json_check), plus the group check. SECURITY DEFINER and the
-- search_path are restated (a CREATE OR REPLACE would otherwise reset them); the grants
-- are kept.
CREATE OR REPLACE FUNCTION attune.respond_inquiry(inquiry_id bigint, response jsonb,
                                                  who text DEFAULT current_user)
RETURNS text
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, attune, pg_temp AS $$
DECLARE
    execution_id bigint;
    q attune.inquiry;
    problem text;
    assignees text[];
    groups text[];
BEGIN
    IF who IS NULL OR who = '' THEN
        RAISE EXCEPTION 'inquiry %: who must name the person or application answering', inquiry_id
            USING ERRCODE = 'null_value_not_allowed';
    END IF;
    PERFORM attune.json_check(response, format('inquiry %s response', inquiry_id));
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
    assignees := array_remove(string_to_array(replace(coalesce(q.assigned_to, ''), ' ', ''), ','), '');
    IF cardinality(assignees) > 0 AND NOT (who = ANY (assignees)) THEN
        -- Not named: perhaps a member of an assignee that is a role (a group).
        SELECT array_agg(r.rolname) INTO groups
          FROM pg_catalog.pg_roles r WHERE r.rolname = ANY (assignees);
        IF groups IS NULL THEN
            RAISE EXCEPTION 'inquiry % is assigned to %: % may not respond', inquiry_id,
                q.assigned_to, quote_literal(who) USING ERRCODE = 'insufficient_privilege';
        END IF;
        -- Membership is a login's: `who` must be a role, and the caller that role (or
        -- able to act as it), so nobody answers for a group by typing a member's name.
        IF NOT EXISTS (SELECT FROM pg_catalog.pg_roles r WHERE r.rolname = who) THEN
            RAISE EXCEPTION 'inquiry % is assigned to %: % is not a PostgreSQL role, so it is not a member of %',
                inquiry_id, q.assigned_to, quote_literal(who), array_to_string(groups, ', ')
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF who <> session_user AND NOT pg_has_role(session_user, who, 'MEMBER') THEN
            RAISE EXCEPTION 'inquiry %: login % may not answer as %', inquiry_id,
                quote_literal(session_user), quote_literal(who)
                USING ERRCODE = 'insufficient_privilege';
        END IF;
        IF NOT EXISTS (SELECT FROM unnest(groups) g WHERE pg_has_role(who, g, 'MEMBER')) THEN
            RAISE EXCEPTION 'inquiry % is assigned to %: % is not a member of %', inquiry_id,
                q.assigned_to, quote_literal(who), array_to_string(groups, ', ')
                USING ERRCODE = 'insufficient_privilege';
        END IF;
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

