-- Steps: checkpoints
--
-- Each step a workflow calls is recorded once at its position (`step_no`, the order in which
-- the workflow called its steps, from 0); a replay returns the recorded outcome instead of
-- running the step again.

-- The current definition of each function, applied by `pgdurable migrate` whenever this file
-- changes. Change a function here. A table change, or a function whose signature or result
-- type changes (drop it there first), goes in a new sql/migrations/ file: see "SQL files" in
-- docs/explanation/design.md.

create or replace function pgdurable.load_steps(p_id text, p_epoch integer)
returns table (step_no integer, name text, status text, output jsonb, error jsonb)
language plpgsql as $$
#variable_conflict use_column
begin
    perform pgdurable.check_epoch(p_id, p_epoch);
    return query select s.step_no, s.name, s.status, s.output, s.error
                   from pgdurable.steps s where s.workflow_id = p_id order by s.step_no;
end
$$;

comment on function pgdurable.load_steps(text, integer) is
$$The recorded steps of run `p_id` in position order, for replay, after `check_epoch(p_id,
p_epoch)`. Errors: PD001, PD004.$$;

create or replace function pgdurable.record_step(
    p_id text, p_epoch integer, p_step_no integer, p_name text, p_status text,
    p_output jsonb, p_error jsonb)
returns table (status text, output jsonb, error jsonb, inserted boolean)
language plpgsql as $$
#variable_conflict use_column
declare
    v_step pgdurable.steps;
    v_now  timestamptz := pgdurable.now();
begin
    if p_status is null or p_status not in ('done', 'failed') then
        perform pgdurable.raise_error('PD006', format('step status must be done or failed, not %L',
                                                     p_status));
    end if;
    perform pgdurable.check_epoch(p_id, p_epoch);
    insert into pgdurable.steps as s
           (workflow_id, step_no, name, status, output, error, attempt, started_at, finished_at)
    values (p_id, p_step_no, p_name, p_status, p_output, p_error, p_epoch, v_now, v_now)
    on conflict (workflow_id, step_no) do nothing;
    if found then
        return query select p_status, p_output, p_error, true;
        return;
    end if;

    select s.* into v_step from pgdurable.steps s
     where s.workflow_id = p_id and s.step_no = p_step_no for update;
    if v_step.name <> p_name then
        perform pgdurable.raise_error('PD003', format(
            'workflow %L step %s was recorded as %L but the code now calls %L',
            p_id, p_step_no, v_step.name, p_name),
            'the workflow code changed under a running workflow; steps must be called in the same order on replay');
    end if;
    if v_step.status = 'started' and v_step.attempt = p_epoch then
        -- An at-most-once intent of this epoch's own: complete it.
        update pgdurable.steps s
           set status = p_status, output = p_output, error = p_error, attempt = p_epoch,
               finished_at = v_now
         where s.workflow_id = p_id and s.step_no = p_step_no;
        return query select p_status, p_output, p_error, true;
        return;
    end if;
    return query select v_step.status, v_step.output, v_step.error, false;
end
$$;

comment on function pgdurable.record_step(text, integer, integer, text, text, jsonb, jsonb) is
$$Records the outcome of step `p_step_no` (`p_name`) of run `p_id` exactly once. `p_status` is
`done` (with `p_output`) or `failed` (with `p_error`), else PD006. `check_epoch(p_id, p_epoch)`,
then inserts the row; if the position is free, returns the given outcome with `inserted = true`.
If it is taken: PD003 when the recorded name differs; an at-most-once intent (`started`) of the
same epoch is completed (`inserted = true`); any other recorded outcome is returned unchanged
with `inserted = false`, and the caller must continue with it (a transaction step rolls its own
writes back). Errors: PD006, PD001, PD004, PD003. Locks: share lock on the run; the step row (an
existing one is read `FOR UPDATE`).$$;

create or replace function pgdurable.begin_step(
    p_id text, p_epoch integer, p_step_no integer, p_name text)
returns table (status text, output jsonb, error jsonb, is_new boolean)
language plpgsql as $$
#variable_conflict use_column
declare
    v_step pgdurable.steps;
begin
    perform pgdurable.check_epoch(p_id, p_epoch);
    insert into pgdurable.steps as s (workflow_id, step_no, name, status, attempt)
    values (p_id, p_step_no, p_name, 'started', p_epoch)
    on conflict (workflow_id, step_no) do nothing;
    if found then
        return query select 'started'::text, null::jsonb, null::jsonb, true;
        return;
    end if;
    select s.* into v_step from pgdurable.steps s
     where s.workflow_id = p_id and s.step_no = p_step_no;
    if v_step.name <> p_name then
        perform pgdurable.raise_error('PD003', format(
            'workflow %L step %s was recorded as %L but the code now calls %L',
            p_id, p_step_no, v_step.name, p_name),
            'the workflow code changed under a running workflow; steps must be called in the same order on replay');
    end if;
    return query select v_step.status, v_step.output, v_step.error, false;
end
$$;

comment on function pgdurable.begin_step(text, integer, integer, text) is
$$Commits the intent of an at-most-once step before its body runs: `check_epoch(p_id, p_epoch)`,
then inserts step `p_step_no` (`p_name`) as `started` and returns `('started', null, null,
true)`. If the position exists, returns its status, output and error with `is_new = false` (PD003
if the name differs). A `started` row of an earlier epoch means a previous execution crashed
while the body ran: the outcome is unknown and the body must not run again. Errors: PD001, PD004,
PD003.$$;
