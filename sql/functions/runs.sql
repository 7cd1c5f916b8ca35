-- Runs: direct starts, leases, endings
--
-- A run executed by the process that started it (`app.start`), the lease its executor renews,
-- operator resumes, and how every execution ends. Each function that writes on behalf of an
-- execution takes the execution's epoch (`workflows.attempt`) and fences it with `check_epoch`.

-- The current definition of each function, applied by `pgdurable migrate` whenever this file
-- changes. Change a function here. A table change, or a function whose signature or result
-- type changes (drop it there first), goes in a new sql/migrations/ file: see "SQL files" in
-- docs/explanation/design.md.

create or replace function pgdurable.start_workflow(
    p_id text, p_name text, p_inputs jsonb, p_owner text, p_lease_seconds double precision,
    p_timeout_seconds double precision default null)
returns table (id text, name text, status text, epoch integer, inputs jsonb, started boolean,
               xact_id text)
language plpgsql as $$
#variable_conflict use_column
declare
    v_row pgdurable.workflows;
    v_now timestamptz := pgdurable.now();
    v_timeout_at timestamptz;
begin
    perform pgdurable.check_lease(p_lease_seconds);
    v_timeout_at := pgdurable.timeout_at(v_now, p_timeout_seconds);
    insert into pgdurable.workflows as w
           (id, name, status, inputs, attempt, owner, lease_until, started_at, created_at,
            updated_at, timeout_at)
    values (p_id, p_name, 'running', p_inputs, 1, p_owner,
            v_now + make_interval(secs => p_lease_seconds), v_now, v_now, v_now, v_timeout_at)
    on conflict on constraint workflows_pkey do nothing
    returning w.* into v_row;
    if found then
        return query select v_row.id, v_row.name, v_row.status, v_row.attempt, v_row.inputs,
                            true, pg_current_xact_id()::text;
        return;
    end if;

    select w.* into v_row from pgdurable.workflows w where w.id = p_id for update;
    if v_row.name <> p_name then
        perform pgdurable.raise_error('PD002', format(
            'workflow id %L already belongs to workflow %L, not %L', p_id, v_row.name, p_name),
            'choose another workflow_id, or start the same workflow function');
    end if;
    -- An existing run whose owner died: take it over now (counted against its recovery
    -- budget by `acquire`). A pending run is left to its queue (its delay, a paused queue).
    if v_row.status = 'running' then
        return query select a.id, a.name, a.status, a.epoch, a.inputs, true,
                            pg_current_xact_id()::text
                       from pgdurable.acquire(p_id, p_owner, p_lease_seconds) a;
        if found then
            return;
        end if;
        select w.* into v_row from pgdurable.workflows w where w.id = p_id;
    end if;
    return query select v_row.id, v_row.name, v_row.status, v_row.attempt, v_row.inputs, false,
                        pg_current_xact_id()::text;
end
$$;

comment on function pgdurable.start_workflow(text, text, jsonb, text, double precision,
    double precision) is
$$Starts run `p_id` of workflow `p_name` that the caller executes itself (`app.start`). Creates it
`running` at epoch 1 with inputs `p_inputs`, owned by `p_owner` with a lease of
`p_lease_seconds`, and returns it with `started = true`; `p_timeout_seconds` (null: none) sets
`timeout_at = now() + p_timeout_seconds`, after which `recover_sweep` cancels the run and its
subtree. If the id exists (its row is locked `FOR UPDATE`; `p_inputs` and `p_timeout_seconds`
are ignored): PD002 if it belongs to another workflow name; a `running` run whose lease expired
is taken over by `acquire` (`started = true`; counted against its recovery budget, and
dead-lettered when over it); otherwise, a `pending` run included (left to its queue: its delay,
a paused queue), the existing run is returned with `started = false` (its stored inputs).
`xact_id` is `pg_current_xact_id()` of the calling transaction, for `pg_xact_status()`. Errors:
PD006 (lease; a timeout that is not > 0 and finite), PD002. Locks: the inserted or existing row;
a concurrent insert of the same id waits for the first transaction to end.$$;

create or replace function pgdurable.timeout_at(
    p_created_at timestamptz, p_timeout_seconds double precision)
returns timestamptz language plpgsql as $$
begin
    if p_timeout_seconds is null then
        return null;
    end if;
    -- 'NaN' sorts above 'Infinity' in PostgreSQL, so `>= 'Infinity'` refuses both.
    if p_timeout_seconds <= 0 or p_timeout_seconds >= 'Infinity' then
        perform pgdurable.raise_error('PD006', format(
            'timeout must be > 0 seconds and finite, not %s', p_timeout_seconds));
    end if;
    return p_created_at + make_interval(secs => p_timeout_seconds);
end
$$;

comment on function pgdurable.timeout_at(timestamptz, double precision) is
$$Internal helper of `start_workflow`, `enqueue` and `enqueue_runs`: the `timeout_at` of a run
created at `p_created_at` with a timeout of `p_timeout_seconds`, `p_created_at + p_timeout_seconds`
(null when `p_timeout_seconds` is null). Errors: PD006 unless `p_timeout_seconds` is > 0
and finite.$$;

create or replace function pgdurable.acquire(
    p_id text, p_owner text, p_lease_seconds double precision)
returns table (id text, name text, status text, epoch integer, inputs jsonb)
language plpgsql as $$
#variable_conflict use_column
declare
    v_now timestamptz := pgdurable.now();
    v_run record;
begin
    perform pgdurable.check_lease(p_lease_seconds);
    select w.status, w.lease_until, w.recoveries, coalesce(q.max_recoveries, 10) as max_recoveries
      into v_run
      from pgdurable.workflows w left join pgdurable.queues q on q.name = w.queue
     where w.id = p_id
       for update of w;
    if not found then
        return;
    end if;
    if v_run.status = 'pending' then
        delete from pgdurable.ready r where r.workflow_id = p_id;
        return query
        update pgdurable.workflows w
           set status = 'running', attempt = w.attempt + 1, owner = p_owner,
               lease_until = v_now + make_interval(secs => p_lease_seconds),
               started_at = coalesce(w.started_at, v_now), waiting_for = null,
               updated_at = v_now
         where w.id = p_id
        returning w.id, w.name, w.status, w.attempt, w.inputs;
        return;
    end if;
    if v_run.status <> 'running' or v_run.lease_until >= v_now then
        return;
    end if;
    -- A takeover of an expired lease: it counts against the recovery budget, whoever noticed
    -- it (as in `expire_leases`), so a run that kills its process cannot crash-loop forever.
    if v_run.recoveries + 1 >= v_run.max_recoveries then
        update pgdurable.workflows w
           set status = 'failed', owner = null, lease_until = null, finished_at = v_now,
               updated_at = v_now, recoveries = w.recoveries + 1,
               error = jsonb_build_object(
                   'type', 'RecoveryLimitExceeded',
                   'message', format('the run lost its worker %s times (lease expired); '
                                     'it is not recovered again', v_run.recoveries + 1),
                   'traceback', '')
         where w.id = p_id;
        return;
    end if;
    return query
    update pgdurable.workflows w
       set attempt = w.attempt + 1, owner = p_owner, recoveries = w.recoveries + 1,
           lease_until = v_now + make_interval(secs => p_lease_seconds),
           started_at = coalesce(w.started_at, v_now), waiting_for = null,
           updated_at = v_now
     where w.id = p_id
    returning w.id, w.name, w.status, w.attempt, w.inputs;
end
$$;

comment on function pgdurable.acquire(text, text, double precision) is
$$Takes run `p_id` over for `p_owner`: if it is `pending`, or `running` with `lease_until < now()`,
it becomes `running` with epoch + 1, owner `p_owner` and a lease of `p_lease_seconds`
(`started_at` set if unset), its `ready` row is deleted, and it is returned. Taking over an
expired lease counts against the recovery budget as `expire_leases` does: `recoveries` goes up by
one, and when it reaches the queue's `max_recoveries` (10 for a queue missing from `queues`) the
run ends `failed` with `RecoveryLimitExceeded` instead (no row returned). Otherwise returns no row
(terminal, unknown, or another owner's lease is live). Errors: PD006 (lease). Locks: the run's
row `FOR UPDATE` (waits for `check_epoch` share locks).$$;

create or replace function pgdurable.resume(
    p_id text, p_owner text, p_lease_seconds double precision)
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

comment on function pgdurable.resume(text, text, double precision) is
$$Operator resume in the calling process (`app.resume`). Locks run `p_id` `FOR UPDATE`; a `failed`
or `cancelled` run is set `pending` with its error and `finished_at` cleared and the failed step
that ended it forgotten (`forget_ending_failure`); then `acquire(p_id, p_owner,
p_lease_seconds)`. A live lease is respected and a `succeeded` run left alone (no row). Recorded
steps are kept: the run continues from its checkpoints. Errors: PD006 (lease), PD004 (no such
run).$$;

create or replace function pgdurable.heartbeat(
    p_owner text, p_ids text[], p_lease_seconds double precision)
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

comment on function pgdurable.heartbeat(text, text[], double precision) is
$$Renews, in one statement, the leases of the runs in `p_ids` that `p_owner` owns and that are
`running`, to `now() + p_lease_seconds`; returns how many it renewed. A run whose row is busy
(being finished or checkpointed) is skipped and misses this beat; a lease spans three. Errors:
PD006 (lease). Locks: those rows, `FOR UPDATE SKIP LOCKED`.$$;

create or replace function pgdurable.finish_workflow(
    p_id text, p_epoch integer, p_status text, p_output jsonb, p_error jsonb)
returns void language plpgsql as $$
declare
    v_now  timestamptz := pgdurable.now();
    v_row  pgdurable.workflows;
    v_wait double precision;
begin
    if p_status is null or p_status not in ('succeeded', 'failed') then
        perform pgdurable.raise_error('PD006', format(
            'a run finishes as succeeded or failed, not %L', p_status));
    end if;
    if p_status = 'succeeded' then
        -- The hot path: one fenced UPDATE (the row lock it takes orders it with take-overs).
        update pgdurable.workflows
           set status = 'succeeded', output = p_output, error = null, owner = null,
               lease_until = null, finished_at = v_now, updated_at = v_now
         where id = p_id and attempt = p_epoch and status = 'running';
        if not found then
            perform pgdurable.check_epoch(p_id, p_epoch);  -- raises the precise error
        end if;
        return;
    end if;
    perform pgdurable.check_epoch(p_id, p_epoch);
    select w.* into v_row from pgdurable.workflows w where w.id = p_id;
    if v_row.failures + 1 < v_row.max_attempts then
        v_wait := least(v_row.retry_backoff * power(2, v_row.failures), 3600);
        update pgdurable.workflows
           set status = 'pending', error = p_error, failures = failures + 1, owner = null,
               lease_until = null, available_at = v_now + make_interval(secs => v_wait),
               updated_at = v_now
         where id = p_id;
        perform pgdurable.forget_ending_failure(p_id, p_error);
        perform pgdurable.make_ready(p_id);
        if v_wait = 0 then
            perform pgdurable.notify_queue(v_row.queue);
        end if;
        return;
    end if;
    update pgdurable.workflows
       set status = p_status, output = p_output, error = p_error, owner = null,
           lease_until = null, finished_at = v_now, updated_at = v_now,
           failures = failures + (p_status = 'failed')::integer
     where id = p_id;
end
$$;

comment on function pgdurable.finish_workflow(text, integer, text, jsonb, jsonb) is
$$Ends the execution of run `p_id` at epoch `p_epoch`. `p_status` is `succeeded` (with `p_output`)
or `failed` (with `p_error`), else PD006. `succeeded`: one `UPDATE ... where attempt = p_epoch
and status = 'running'` sets the output, clears error, owner and lease and sets `finished_at`; if
no row matched, `check_epoch` raises the precise error. `failed`: `check_epoch`; if `failures + 1
< max_attempts`, the run goes back to `pending` with `error` set, `failures + 1`, `available_at =
now() + least(retry_backoff * 2^failures, 3600 s)`, the failed step that ended it forgotten, a
`ready` row, and a notification when the delay is 0; otherwise it ends `failed` with `error` and
`finished_at` (the dead letter state). Errors: PD006, PD001 (stale epoch, or not running), PD004
(no such run).$$;

create or replace function pgdurable.finish_many(
    p_ids text[], p_epochs integer[], p_statuses text[], p_outputs jsonb[], p_errors jsonb[])
returns table (id text, sqlstate text, message text)
language plpgsql as $$
#variable_conflict use_column
declare
    v_now  timestamptz := pgdurable.now();
    v_done text[];
    v_item record;
begin
    with finished as (
        update pgdurable.workflows w
           set status = 'succeeded', output = i.output, error = null, owner = null,
               lease_until = null, finished_at = v_now, updated_at = v_now
          from unnest(p_ids, p_epochs, p_statuses, p_outputs)
               as i(id, epoch, status, output)
         where i.status = 'succeeded' and w.id = i.id and w.attempt = i.epoch
           and w.status = 'running'
        returning w.id, w.queue
    ), freed as (
        -- A finished run frees a slot of a concurrency-limited queue: wake the workers that
        -- may be waiting for it (one notification per queue and transaction).
        select pgdurable.notify_queue(q.name)
          from pgdurable.queues q
         where q.concurrency is not null and q.name in (select f.queue from finished f)
    )
    select coalesce(array_agg(f.id), array[]::text[]) into v_done
      from finished f, (select count(*) from freed) n;

    for v_item in
        select i.id, i.epoch, i.status, i.output, i.error
          from unnest(p_ids, p_epochs, p_statuses, p_outputs, p_errors)
               as i(id, epoch, status, output, error)
         where not (i.id = any(v_done))
    loop
        begin
            perform pgdurable.finish_workflow(v_item.id, v_item.epoch, v_item.status,
                                              v_item.output, v_item.error);
        exception when others then
            return query select v_item.id, sqlstate::text, sqlerrm;
        end;
    end loop;
end
$$;

comment on function pgdurable.finish_many(text[], integer[], text[], jsonb[], jsonb[]) is
$$Finishes many runs in one call, for clients that batch endings (the Python library's group commit
uses `commit_many`, which also batches step checkpoints). `p_ids`, `p_epochs`, `p_statuses`,
`p_outputs` and `p_errors` hold one element per run: the arguments of `finish_workflow`.
Successes with a matching epoch are finished by one set-based `UPDATE` (each concurrency-limited
queue that got a slot back is notified once); every other item goes through `finish_workflow`
inside its own exception block. Returns one row per item that could not be finished, with its
SQLSTATE and message (for example PD001); items not returned were finished. Errors: none raised;
the items' errors are returned.$$;

create or replace function pgdurable.commit_many(
    p_step_ids text[], p_step_epochs integer[], p_step_nos integer[], p_step_names text[],
    p_step_statuses text[], p_step_outputs jsonb[], p_step_errors jsonb[],
    p_ids text[], p_epochs integer[], p_statuses text[], p_outputs jsonb[], p_errors jsonb[])
returns table (kind text, ord integer, status text, output jsonb, error jsonb, inserted boolean,
               sqlstate text, message text)
language plpgsql
-- Custom plans would be made again on every call (their estimates never favour the generic
-- one). Every statement here is a scan of the arrays with primary-key lookups: a generic plan
-- made while the tables were small (or its estimate for the arrays' length) must not become a
-- sequential scan with a hash join.
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
set enable_hashjoin = off
set enable_mergejoin = off
-- Before PostgreSQL 18 a disabled plan type still counts as a huge cost (disable_cost), which
-- pushes these plans over jit_above_cost: every call would JIT-compile them (about 0.2 s).
set jit = off
as $$
#variable_conflict use_column
declare
    v_now      timestamptz := pgdurable.now();
    v_steps    integer := coalesce(cardinality(p_step_ids), 0);
    v_live     bigint[];
    v_inserted bigint[] := '{}'::bigint[];
    v_done     bigint[];
    v_item     record;
    v_rec      record;
begin
    if v_steps > 0 then
        -- Fencing as check_epoch does it: share-lock the runs (in id order, so that two batches
        -- never lock in opposite orders) and keep the items whose epoch is current. A takeover
        -- is an UPDATE of the row, so it waits for this transaction; one that committed first
        -- fails the epoch test (READ COMMITTED re-reads a row that changed while we waited for
        -- its lock). Each run is looked up by its primary key alone (a lateral subquery): with
        -- `status = 'running'` in the lookup, stale statistics could make the planner walk a
        -- running-only partial index instead.
        select coalesce(array_agg(i.ord), '{}') into v_live
          from (select u.* from unnest(p_step_ids, p_step_epochs) with ordinality
                                as u(id, epoch, ord)
                 order by u.id) i
         cross join lateral (select w.attempt, w.status from pgdurable.workflows w
                              where w.id = i.id for share) w
         where w.attempt = i.epoch and w.status = 'running';

        with ins as (
            insert into pgdurable.steps as s
                   (workflow_id, step_no, name, status, output, error, attempt, started_at,
                    finished_at)
            select i.id, i.step_no, i.name, i.status, i.output, i.error, i.epoch, v_now, v_now
              from unnest(p_step_ids, p_step_epochs, p_step_nos, p_step_names, p_step_statuses,
                          p_step_outputs, p_step_errors) with ordinality
                   as i(id, epoch, step_no, name, status, output, error, ord)
             where i.ord = any(v_live) and i.status in ('done', 'failed')
            on conflict (workflow_id, step_no) do nothing
            returning s.workflow_id, s.step_no, s.attempt
        )
        select coalesce(array_agg(i.ord), '{}') into v_inserted
          from ins
          join unnest(p_step_ids, p_step_epochs, p_step_nos) with ordinality
               as i(id, epoch, step_no, ord)
            on i.id = ins.workflow_id and i.step_no = ins.step_no and i.epoch = ins.attempt;
    end if;

    -- Everything else (a stale epoch, a position already taken, a bad status) goes through
    -- record_step one by one, which raises or returns the outcome on record.
    if cardinality(v_inserted) < v_steps then
        for v_item in
            select i.*
              from unnest(p_step_ids, p_step_epochs, p_step_nos, p_step_names, p_step_statuses,
                          p_step_outputs, p_step_errors) with ordinality
                   as i(id, epoch, step_no, name, status, output, error, ord)
             where not (i.ord = any(v_inserted))
             order by i.ord
        loop
            begin
                select r.status, r.output, r.error, r.inserted into v_rec
                  from pgdurable.record_step(v_item.id, v_item.epoch, v_item.step_no,
                                             v_item.name, v_item.status, v_item.output,
                                             v_item.error) r;
            exception when others then
                return query select 'step'::text, v_item.ord::integer, null::text, null::jsonb,
                                    null::jsonb, false, sqlstate::text, sqlerrm;
                continue;
            end;
            return query select 'step'::text, v_item.ord::integer, v_rec.status, v_rec.output,
                                v_rec.error, v_rec.inserted, null::text, null::text;
        end loop;
    end if;

    if coalesce(cardinality(p_ids), 0) = 0 then
        return;
    end if;
    -- Successes: one set-based, epoch-checked UPDATE (as finish_many).
    with finished as (
        update pgdurable.workflows w
           set status = 'succeeded', output = i.output, error = null, owner = null,
               lease_until = null, finished_at = v_now, updated_at = v_now
          from unnest(p_ids, p_epochs, p_statuses, p_outputs) with ordinality
               as i(id, epoch, status, output, ord)
         where i.status = 'succeeded' and w.id = i.id and w.attempt = i.epoch
           -- coalesce() hides the predicate of the running-only partial indexes from the
           -- planner: the rows are found through the primary key.
           and coalesce(w.status, '') = 'running'
        returning i.ord, w.queue
    ), freed as (
        -- A finished run frees a slot of a concurrency-limited queue: wake the workers that
        -- may be waiting for it (one notification per queue and transaction).
        select pgdurable.notify_queue(q.name)
          from pgdurable.queues q
         where q.concurrency is not null and q.name in (select f.queue from finished f)
    )
    select coalesce(array_agg(f.ord), '{}') into v_done
      from finished f, (select count(*) from freed) n;

    -- Failures, and anything the fast path could not finish, one by one.
    if cardinality(v_done) = cardinality(p_ids) then
        return;
    end if;
    for v_item in
        select i.*
          from unnest(p_ids, p_epochs, p_statuses, p_outputs, p_errors) with ordinality
               as i(id, epoch, status, output, error, ord)
         where not (i.ord = any(v_done))
         order by i.ord
    loop
        begin
            perform pgdurable.finish_workflow(v_item.id, v_item.epoch, v_item.status,
                                              v_item.output, v_item.error);
        exception when others then
            return query select 'finish'::text, v_item.ord::integer, null::text, null::jsonb,
                                null::jsonb, null::boolean, sqlstate::text, sqlerrm;
        end;
    end loop;
end
$$;

comment on function pgdurable.commit_many(text[], integer[], integer[], text[], text[], jsonb[],
    jsonb[], text[], integer[], text[], jsonb[], jsonb[]) is
$$The group commit of the Python library: the step checkpoints and run endings that the executions
of one process queued up, in one transaction. `p_step_ids`, `p_step_epochs`, `p_step_nos`,
`p_step_names`, `p_step_statuses`, `p_step_outputs` and `p_step_errors` hold one element per step
(the arguments of `record_step`); `p_ids`, `p_epochs`, `p_statuses`, `p_outputs` and `p_errors`
one element per run (the arguments of `finish_workflow`). Steps are recorded as `record_step`
would: the runs are share-locked in id order (the fencing of `check_epoch`) and the steps of a
current epoch inserted in one statement; everything else goes through `record_step` in its own
exception block. Endings as `finish_many` would: successes with a matching epoch by one set-based
`UPDATE` (notifying concurrency-limited queues), the rest through `finish_workflow` in exception
blocks. Returns only the exceptions: a `step` row for every step not simply inserted (the outcome
on record with `inserted`, or the `sqlstate` and `message` that refused it, e.g. PD001, PD003,
PD004, PD006) and a `finish` row for every ending not applied (its `sqlstate` and `message`).
`ord` is the item's 1-based position in its arrays; an item without a row was written as given.
Errors: none raised. Locks: share locks on the runs of the step items; the finished runs' rows.
Runs with a forced generic plan, `enable_seqscan`, `enable_hashjoin` and `enable_mergejoin` off
(every statement is a scan of the arrays with primary-key lookups) and `jit` off (before
PostgreSQL 18 the disabled plan types' cost would make every call JIT-compile).$$;

create or replace function pgdurable.cancel_tree(p_id text, p_cascade boolean, p_error jsonb)
returns text
language plpgsql as $$
declare
    v_status text;
    v_now    timestamptz := pgdurable.now();
    v_ids    text[];
begin
    if p_cascade is null then
        perform pgdurable.raise_error('PD006', 'cascade must be true or false, not NULL');
    end if;
    select status into v_status from pgdurable.workflows where id = p_id for update;
    if not found then
        perform pgdurable.raise_error('PD004', format('workflow %L does not exist', p_id));
    end if;
    v_ids := case when v_status in ('pending', 'running') then array[p_id] else '{}' end;
    if p_cascade then
        -- Every descendant (through finished ones too), locked in id order; `union` stops on a
        -- cycle. Only the unfinished ones are cancelled.
        with recursive tree(id) as (
            select w.id from pgdurable.workflows w where w.parent_id = p_id
            union
            select w.id from pgdurable.workflows w join tree t on w.parent_id = t.id
        ), locked as (
            select w.id from pgdurable.workflows w
             where w.id in (select t.id from tree t) and w.id <> p_id
               and w.status in ('pending', 'running')
             order by w.id
               for update of w
        )
        select v_ids || coalesce(array_agg(l.id), '{}') into v_ids from locked l;
    end if;
    if cardinality(v_ids) = 0 then
        return v_status;
    end if;
    update pgdurable.workflows w
       set status = 'cancelled', owner = null, lease_until = null, finished_at = v_now,
           updated_at = v_now,
           error = case when p_error is null then null
                        when w.id = p_id then p_error
                        else p_error || jsonb_build_object(
                            'message', format('cancelled with its ancestor %L: %s', p_id,
                                              p_error ->> 'message'),
                            'ancestor', p_id) end
     where w.id = any(v_ids) and w.status in ('pending', 'running');
    delete from pgdurable.ready r where r.workflow_id = any(v_ids);
    return case when v_status in ('pending', 'running') then 'cancelled' else v_status end;
end
$$;

comment on function pgdurable.cancel_tree(text, boolean, jsonb) is
$$Cancels run `p_id` and, with `p_cascade`, every descendant (recursively over `parent_id`,
through finished descendants too), in the caller's transaction. Locks the run `FOR UPDATE`, then
the unfinished descendants in id order. Every `pending` or `running` one of them becomes
`cancelled` (owner and lease cleared, `finished_at` set, its `ready` row deleted); the owner of a
running one has its next checkpoint refused with PD001 and stops, and its heartbeat reports the
run as no longer its own. `p_error` (null for an operator cancel) is stored as the run's
`error`; a descendant gets `p_error` with `message` = `cancelled with its ancestor '<p_id>':
<message>` and `ancestor` = `p_id`. Returns `p_id`'s status afterwards (`'cancelled'`, or the
status of a run that had already finished, which is left as it is; its descendants are still
cancelled). Errors: PD004 (no such run), PD006 (`p_cascade` null).$$;

create or replace function pgdurable.cancel(p_id text, p_cascade boolean) returns text
language sql as $$
    select pgdurable.cancel_tree(p_id, p_cascade, null)
$$;

comment on function pgdurable.cancel(text, boolean) is
$$Operator cancel (`app.cancel`, `pgdurable workflows cancel`): `cancel_tree(p_id, p_cascade,
null)`. Cancels run `p_id` if it has not finished and, with `p_cascade`, every unfinished
descendant, in one transaction; returns `p_id`'s status afterwards. Errors: PD004 (no such run),
PD006 (`p_cascade` null).$$;

create or replace function pgdurable.cancel(p_id text) returns text
language sql as $$
    select pgdurable.cancel_tree(p_id, true, null)
$$;

comment on function pgdurable.cancel(text) is
$$`cancel(p_id, true)`: cancels run `p_id` and every unfinished descendant. A `pending` or
`running` run becomes `cancelled` (owner and lease cleared, `finished_at` set, `ready` row
deleted) and `'cancelled'` is returned; the owner's next checkpoint fails with PD001 and it
stops. A finished run is left as it is and its status returned. Errors: PD004 (no such run).$$;

create or replace function pgdurable.forget_ending_failure(p_id text, p_run_error jsonb)
returns void
language sql as $$
    delete from pgdurable.steps s
     where s.workflow_id = p_id and s.status = 'failed'
       and s.step_no = (select max(l.step_no) from pgdurable.steps l where l.workflow_id = p_id)
       and s.error ->> 'type' is not distinct from p_run_error ->> 'type'
       and s.error ->> 'message' is not distinct from p_run_error ->> 'message'
$$;

comment on function pgdurable.forget_ending_failure(text, jsonb) is
$$Internal helper of `resume`, `requeue` and `finish_workflow`. Deletes the last recorded step of
run `p_id` if it `failed` with the same error type and message as `p_run_error` (the error that
ended the run), so that step runs again on resume or retry instead of replaying its error;
failures the workflow caught and handled stay recorded, keeping replay faithful.$$;
