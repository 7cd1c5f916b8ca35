-- pgdurable 0001: workflows, step checkpoints, leases and fencing.
--
-- Every state transition is a function in this file; clients (Python, psql, any language) only
-- call them. Domain errors use SQLSTATE class 'PD' (mapped to Python in pgdurable/errors.py):
--   PD001 fenced          the caller's epoch is not the workflow's current attempt
--   PD002 id conflict     the workflow id exists for a different workflow name
--   PD003 nondeterminism  a step position is replayed with a different step name
--   PD004 not found       no workflow with that id
--   PD005 invalid state   the transition is not allowed from the current status
--   PD006 invalid input   an argument is out of range

create schema if not exists pgdurable;

-- One clock for everything. Tests set `pgdurable.now` (a session or transaction setting) to move
-- time without sleeping; production reads the wall clock.
create function pgdurable.now() returns timestamptz
language sql volatile as $$
    select coalesce(nullif(current_setting('pgdurable.now', true), '')::timestamptz,
                    clock_timestamp())
$$;

create table pgdurable.workflows (
    id            text primary key,
    name          text not null,
    status        text not null default 'pending'
                  check (status in ('pending', 'running', 'succeeded', 'failed', 'cancelled')),
    inputs        jsonb not null default '{"args": [], "kwargs": {}}',
    output        jsonb,
    error         jsonb,
    attempt       integer not null default 0,      -- fencing epoch: +1 on every take-over
    owner         text,                            -- worker id holding the lease
    lease_until   timestamptz,
    created_at    timestamptz not null default pgdurable.now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    updated_at    timestamptz not null default pgdurable.now()
) with (fillfactor = 80);  -- room for HOT updates of lease and status

-- Runs held by a worker, for one-statement heartbeats and for finding expired leases.
create index workflows_running_owner on pgdurable.workflows (owner) where status = 'running';
-- Listing, newest first. (No plain index on status: it would tempt the planner away from the
-- primary key on the hot paths while statistics lag behind a fast-moving queue.)
create index workflows_created on pgdurable.workflows (created_at);

create table pgdurable.steps (
    workflow_id   text not null references pgdurable.workflows (id) on delete cascade,
    step_no       integer not null check (step_no >= 0),
    name          text not null,
    status        text not null check (status in ('started', 'done', 'failed')),
    output        jsonb,
    error         jsonb,
    attempt       integer not null,                -- epoch of the execution that wrote it
    started_at    timestamptz not null default pgdurable.now(),
    finished_at   timestamptz,
    primary key (workflow_id, step_no)
);

-- Raise a pgdurable domain error. `code` is one of the PDxxx SQLSTATEs listed above.
create function pgdurable.raise_error(code text, message text, hint text default null)
returns void language plpgsql as $$
begin
    raise exception using errcode = code, message = message, hint = coalesce(hint, '');
end
$$;

-- Leases must be positive and finite: 0 or less would grant an expired lease, NULL an endless one.
create function pgdurable.check_lease(p_lease_seconds double precision) returns void
language plpgsql as $$
begin
    if p_lease_seconds is null or p_lease_seconds <= 0 or p_lease_seconds = 'Infinity' then
        perform pgdurable.raise_error('PD006', format('lease_seconds must be > 0, not %s',
                                                     coalesce(p_lease_seconds::text, 'NULL')));
    end if;
end
$$;

-- Fencing check shared by every write of a running execution. Locks the workflow row in share
-- mode so that a concurrent take-over (which updates `attempt`) waits for this transaction:
-- a stale owner can never slip a write in beside its successor.
create function pgdurable.check_epoch(p_id text, p_epoch integer) returns void
language plpgsql as $$
declare
    v_attempt integer;
    v_status  text;
begin
    select attempt, status into v_attempt, v_status
      from pgdurable.workflows where id = p_id for share;
    if not found then
        perform pgdurable.raise_error('PD004', format('workflow %L does not exist', p_id));
    end if;
    if p_epoch is null or v_attempt is distinct from p_epoch or v_status <> 'running' then
        perform pgdurable.raise_error('PD001', format(
            'workflow %L: execution epoch %s is stale (current epoch %s, status %s)',
            p_id, p_epoch, v_attempt, v_status),
            'another worker took this run over after the lease expired');
    end if;
end
$$;

-- Create a workflow that the caller will run itself, or return the existing one with this id
-- (ids are idempotency keys). A new row is created `running` with the caller as lease owner, so a
-- crash before the first step is recovered like any other crash. An existing run whose lease
-- expired is taken over (new epoch). `started` tells the caller whether it now owns the run.
create function pgdurable.start_workflow(
    p_id text, p_name text, p_inputs jsonb, p_owner text, p_lease_seconds double precision)
returns table (id text, name text, status text, epoch integer, inputs jsonb, started boolean,
               xact_id text)
language plpgsql as $$
#variable_conflict use_column
declare
    v_row pgdurable.workflows;
    v_now timestamptz := pgdurable.now();
begin
    perform pgdurable.check_lease(p_lease_seconds);
    insert into pgdurable.workflows as w
           (id, name, status, inputs, attempt, owner, lease_until, started_at, created_at,
            updated_at)
    values (p_id, p_name, 'running', p_inputs, 1, p_owner,
            v_now + make_interval(secs => p_lease_seconds), v_now, v_now, v_now)
    on conflict on constraint workflows_pkey do nothing
    returning w.* into v_row;
    if found then
        return query select v_row.id, v_row.name, v_row.status, v_row.attempt, v_row.inputs,
                            true, pg_current_xact_id()::text;
        return;
    end if;

    select w.* into v_row from pgdurable.workflows w where w.id = p_id;
    if v_row.name <> p_name then
        perform pgdurable.raise_error('PD002', format(
            'workflow id %L already belongs to workflow %L, not %L', p_id, v_row.name, p_name),
            'choose another workflow_id, or start the same workflow function');
    end if;
    -- An existing run whose owner died: take it over now.
    return query select a.id, a.name, a.status, a.epoch, a.inputs, true, pg_current_xact_id()::text
                   from pgdurable.acquire(p_id, p_owner, p_lease_seconds) a;
    if found then
        return;
    end if;
    return query select v_row.id, v_row.name, v_row.status, v_row.attempt, v_row.inputs, false,
                        pg_current_xact_id()::text;
end
$$;

-- Take over a run whose lease expired (or that was never started): bump the epoch, set the new
-- owner and lease. Returns no row when the run is terminal or another owner's lease is live.
create function pgdurable.acquire(p_id text, p_owner text, p_lease_seconds double precision)
returns table (id text, name text, status text, epoch integer, inputs jsonb)
language plpgsql as $$
#variable_conflict use_column
declare
    v_now timestamptz := pgdurable.now();
begin
    perform pgdurable.check_lease(p_lease_seconds);
    return query
    update pgdurable.workflows w
       set status = 'running', attempt = w.attempt + 1, owner = p_owner,
           lease_until = v_now + make_interval(secs => p_lease_seconds),
           started_at = coalesce(w.started_at, v_now), updated_at = v_now
     where w.id = p_id
       and (w.status = 'pending' or (w.status = 'running' and w.lease_until < v_now))
    returning w.id, w.name, w.status, w.attempt, w.inputs;
end
$$;

-- The step failure that ended a run is forgotten when the run is resumed or retried, so that
-- step runs again instead of replaying its error. It is the last recorded step, failed with the
-- same error (type and message) as the run. Failures the workflow caught and handled stay
-- recorded, keeping replay faithful.
create function pgdurable.forget_ending_failure(p_id text, p_run_error jsonb) returns void
language sql as $$
    delete from pgdurable.steps s
     where s.workflow_id = p_id and s.status = 'failed'
       and s.step_no = (select max(l.step_no) from pgdurable.steps l where l.workflow_id = p_id)
       and s.error ->> 'type' is not distinct from p_run_error ->> 'type'
       and s.error ->> 'message' is not distinct from p_run_error ->> 'message'
$$;

-- Operator resume: like acquire, and also restarts a failed or cancelled run from its
-- checkpoints (recorded steps are kept; the error is cleared). A live lease is respected.
create function pgdurable.resume(p_id text, p_owner text, p_lease_seconds double precision)
returns table (id text, name text, status text, epoch integer, inputs jsonb)
language plpgsql as $$
#variable_conflict use_column
declare
    v_row pgdurable.workflows;
    v_now timestamptz := pgdurable.now();
begin
    perform pgdurable.check_lease(p_lease_seconds);
    select w.* into v_row from pgdurable.workflows w where w.id = p_id for update;
    if not found then
        perform pgdurable.raise_error('PD004', format('workflow %L does not exist', p_id));
    end if;
    if v_row.status in ('failed', 'cancelled') then
        update pgdurable.workflows w
           set status = 'pending', error = null, finished_at = null, updated_at = v_now
         where w.id = p_id;
        perform pgdurable.forget_ending_failure(p_id, v_row.error);
    end if;
    return query select * from pgdurable.acquire(p_id, p_owner, p_lease_seconds);
end
$$;

-- Renew the leases of the runs a worker is executing, in one statement: the runs it owns whose
-- ids it lists (a run whose execution ended without finishing is not renewed, so it can be taken
-- over). Returns how many it renewed.
create function pgdurable.heartbeat(p_owner text, p_ids text[], p_lease_seconds double precision)
returns integer language plpgsql as $$
declare
    v_count integer;
begin
    perform pgdurable.check_lease(p_lease_seconds);
    -- SKIP LOCKED: a heartbeat never waits for (nor deadlocks with) a run's own writes; a row
    -- busy being finished or checkpointed just misses this beat (the lease spans three).
    update pgdurable.workflows
       set lease_until = pgdurable.now() + make_interval(secs => p_lease_seconds)
     where id in (select w.id from pgdurable.workflows w
                   where w.id = any(p_ids) and w.owner = p_owner and w.status = 'running'
                   for update skip locked);
    get diagnostics v_count = row_count;
    return v_count;
end
$$;

-- The recorded steps of a run, for replay. Checked against the caller's epoch.
create function pgdurable.load_steps(p_id text, p_epoch integer)
returns table (step_no integer, name text, status text, output jsonb, error jsonb)
language plpgsql as $$
#variable_conflict use_column
begin
    perform pgdurable.check_epoch(p_id, p_epoch);
    return query select s.step_no, s.name, s.status, s.output, s.error
                   from pgdurable.steps s where s.workflow_id = p_id order by s.step_no;
end
$$;

-- Record the outcome of a step (status 'done' with output, or 'failed' with error), exactly once.
-- If the position already holds a finished outcome (a concurrent or earlier writer), that
-- recorded outcome wins and is returned with inserted = false, so every execution continues with
-- the same value (and a transaction step rolls its own writes back).
-- A different step name at the same position is a non-determinism error.
create function pgdurable.record_step(
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

-- Commit the intent of an at-most-once step before its body runs. Returns the existing row's
-- status if the position is already taken ('started' means a previous execution crashed while
-- the body ran: the outcome is unknown and the body must not run again).
create function pgdurable.begin_step(p_id text, p_epoch integer, p_step_no integer, p_name text)
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

-- Finish a run. `p_status` is 'succeeded' (with output) or 'failed' (with error).
create function pgdurable.finish_workflow(
    p_id text, p_epoch integer, p_status text, p_output jsonb, p_error jsonb)
returns void language plpgsql as $$
declare
    v_now timestamptz := pgdurable.now();
begin
    if p_status is null or p_status not in ('succeeded', 'failed') then
        perform pgdurable.raise_error('PD006', format(
            'a run finishes as succeeded or failed, not %L', p_status));
    end if;
    perform pgdurable.check_epoch(p_id, p_epoch);
    update pgdurable.workflows
       set status = p_status, output = p_output, error = p_error, owner = null,
           lease_until = null, finished_at = v_now, updated_at = v_now
     where id = p_id;
end
$$;

-- Cancel a run that has not finished. The owner's next write is refused (PD001) and it stops.
create function pgdurable.cancel(p_id text) returns text
language plpgsql as $$
declare
    v_status text;
    v_now    timestamptz := pgdurable.now();
begin
    select status into v_status from pgdurable.workflows where id = p_id for update;
    if not found then
        perform pgdurable.raise_error('PD004', format('workflow %L does not exist', p_id));
    end if;
    if v_status in ('pending', 'running') then
        update pgdurable.workflows
           set status = 'cancelled', owner = null, lease_until = null, finished_at = v_now,
               updated_at = v_now
         where id = p_id;
        return 'cancelled';
    end if;
    return v_status;
end
$$;
