-- pgdurable 0003: recovery sweep (expired leases with a recovery budget, due timers), cron
-- schedules and retention. Every part is a bounded function, so the `pgdurable recover` daemon
-- or pg_cron (`select pgdurable.recover_sweep(1000, 604800)`) can drive it.

-- Runs whose lease expired go back on their queue (the next claim gives them a new epoch), or,
-- once they have been recovered `max_recoveries` times (a run that keeps killing its workers),
-- end `failed` with a RecoveryLimitExceeded error: the dead letter state.
create function pgdurable.expire_leases(
    p_queues text[], p_limit integer, out requeued integer, out dead_lettered integer)
language plpgsql as $$
declare
    v_now timestamptz := pgdurable.now();
    v_run record;
begin
    requeued := 0;
    dead_lettered := 0;
    for v_run in
        select w.id, w.recoveries, coalesce(q.max_recoveries, 10) as max_recoveries
          from pgdurable.workflows w left join pgdurable.queues q on q.name = w.queue
         where w.status = 'running' and w.lease_until < v_now
           and (p_queues is null or w.queue = any(p_queues))
         order by w.lease_until
         limit p_limit
         for update of w skip locked
    loop
        if v_run.recoveries + 1 >= v_run.max_recoveries then
            update pgdurable.workflows
               set status = 'failed', owner = null, lease_until = null, finished_at = v_now,
                   updated_at = v_now, recoveries = recoveries + 1,
                   error = jsonb_build_object(
                       'type', 'RecoveryLimitExceeded',
                       'message', format('the run lost its worker %s times (lease expired); '
                                         'it is not recovered again', v_run.recoveries + 1),
                       'traceback', '')
             where id = v_run.id;
            dead_lettered := dead_lettered + 1;
        else
            update pgdurable.workflows
               set status = 'pending', owner = null, lease_until = null, available_at = v_now,
                   updated_at = v_now, recoveries = recoveries + 1
             where id = v_run.id;
            perform pgdurable.make_ready(v_run.id);
            requeued := requeued + 1;
        end if;
    end loop;
end
$$;

create or replace function pgdurable.requeue_expired(p_queues text[], p_limit integer)
returns integer language sql as $$
    select e.requeued + e.dead_lettered from pgdurable.expire_leases(p_queues, p_limit) e
$$;

-- Wake workers of queues that have runs which became due since `p_since` (delayed enqueues,
-- retry backoff): one notification per queue. Returns how many queues were woken.
create function pgdurable.wake_due(p_since timestamptz) returns integer
language plpgsql as $$
declare
    v_count integer;
begin
    select count(*) into v_count from (
        select pgdurable.notify_queue(d.queue) from (
            select distinct r.queue from pgdurable.ready r
             where r.available_at > p_since and r.available_at <= pgdurable.now()) d
    ) n;
    return v_count;
end
$$;

-- Cron schedules. The expression is parsed (and validated) by the client into the sets of
-- allowed values below, so matching a minute is plain SQL and any client can fire schedules.
create table pgdurable.schedules (
    name           text primary key check (name <> ''),
    cron           text not null,                  -- as declared, for display
    workflow_name  text not null,
    queue          text not null references pgdurable.queues (name),
    inputs         jsonb not null default '{"args": [], "kwargs": {}}',
    timezone       text not null default 'UTC',
    catch_up       boolean not null default false, -- fire ticks missed while nothing ran?
    minutes        smallint[] not null,
    hours          smallint[] not null,
    days           smallint[] not null,            -- day of month
    months         smallint[] not null,
    weekdays       smallint[] not null,            -- 0 = Sunday
    days_restricted     boolean not null,          -- cron: if both day fields are restricted,
    weekdays_restricted boolean not null,          -- a day matching either one fires
    last_tick      timestamptz not null,           -- ticks up to here are handled
    updated_at     timestamptz not null default pgdurable.now()
);

create function pgdurable.declare_schedule(
    p_name text, p_cron text, p_workflow_name text, p_queue text, p_inputs jsonb,
    p_timezone text, p_catch_up boolean, p_minutes smallint[], p_hours smallint[],
    p_days smallint[], p_months smallint[], p_weekdays smallint[],
    p_days_restricted boolean, p_weekdays_restricted boolean)
returns void language plpgsql as $$
begin
    if not exists (select 1 from pg_timezone_names where name = p_timezone) then
        perform pgdurable.raise_error('PD006', format('unknown time zone %L', p_timezone));
    end if;
    if not exists (select 1 from pgdurable.queues where name = p_queue) then
        perform pgdurable.raise_error('PD007', format('queue %L does not exist', p_queue));
    end if;
    insert into pgdurable.schedules as s
           (name, cron, workflow_name, queue, inputs, timezone, catch_up, minutes, hours, days,
            months, weekdays, days_restricted, weekdays_restricted, last_tick)
    values (p_name, p_cron, p_workflow_name, p_queue, p_inputs, p_timezone, p_catch_up,
            p_minutes, p_hours, p_days, p_months, p_weekdays, p_days_restricted,
            p_weekdays_restricted, date_trunc('minute', pgdurable.now()))
    on conflict (name) do update
       set cron = excluded.cron, workflow_name = excluded.workflow_name,
           queue = excluded.queue, inputs = excluded.inputs, timezone = excluded.timezone,
           catch_up = excluded.catch_up, minutes = excluded.minutes, hours = excluded.hours,
           days = excluded.days, months = excluded.months, weekdays = excluded.weekdays,
           days_restricted = excluded.days_restricted,
           weekdays_restricted = excluded.weekdays_restricted,
           updated_at = pgdurable.now()
     where (s.cron, s.workflow_name, s.queue, s.inputs, s.timezone, s.catch_up)
           is distinct from
           (excluded.cron, excluded.workflow_name, excluded.queue, excluded.inputs,
            excluded.timezone, excluded.catch_up);
end
$$;

-- Does minute `p_tick` match schedule `s` (in the schedule's time zone)?
create function pgdurable.cron_matches(s pgdurable.schedules, p_tick timestamptz)
returns boolean language sql stable as $$
    with t as (select p_tick at time zone s.timezone as local)
    select extract(minute from t.local)::smallint = any(s.minutes)
       and extract(hour from t.local)::smallint = any(s.hours)
       and extract(month from t.local)::smallint = any(s.months)
       and case
             when s.days_restricted and s.weekdays_restricted then
                  extract(day from t.local)::smallint = any(s.days)
                  or extract(dow from t.local)::smallint = any(s.weekdays)
             when s.days_restricted then extract(day from t.local)::smallint = any(s.days)
             when s.weekdays_restricted then extract(dow from t.local)::smallint = any(s.weekdays)
             else true
           end
      from t
$$;

-- Fire due schedule ticks: each tick enqueues one run with the deterministic id
-- 'schedule:<name>:<tick in UTC>', so a tick fires exactly once however many daemons sweep
-- (enqueue is idempotent by id). Without catch_up only the current minute's tick fires; ticks
-- missed while nothing swept are skipped. With catch_up missed ticks fire oldest first (at most
-- one day back). At most `p_limit` runs per call. Returns how many runs were enqueued.
create function pgdurable.fire_schedules(p_limit integer) returns integer
language plpgsql as $$
declare
    v_now   timestamptz := date_trunc('minute', pgdurable.now());
    v_sched pgdurable.schedules;
    v_tick  timestamptz;
    v_fired integer := 0;
    v_last  timestamptz;
begin
    for v_sched in
        select * from pgdurable.schedules s where s.last_tick < v_now
         order by s.name for update skip locked
    loop
        exit when v_fired >= p_limit;
        v_last := v_sched.last_tick;
        for v_tick in
            select g from generate_series(
                       greatest(v_sched.last_tick + interval '1 minute',
                                case when v_sched.catch_up then v_now - interval '1 day'
                                     else v_now end),
                       v_now, interval '1 minute') g
             where pgdurable.cron_matches(v_sched, g)
             order by g
        loop
            exit when v_fired >= p_limit;
            perform pgdurable.enqueue(
                v_sched.queue, v_sched.workflow_name, v_sched.inputs,
                'schedule:' || v_sched.name || ':'
                    || to_char(v_tick at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI"Z"'));
            v_fired := v_fired + 1;
            v_last := v_tick;
        end loop;
        -- Ticks not fired because of the limit are picked up by the next call.
        update pgdurable.schedules
           set last_tick = case when v_fired >= p_limit then v_last else v_now end
         where name = v_sched.name;
    end loop;
    return v_fired;
end
$$;

-- Retention: delete finished runs (and their steps) older than `p_older_than_seconds`, at most
-- `p_limit` per call (short transactions, no long locks). Returns how many runs were deleted.
create function pgdurable.purge(p_older_than_seconds double precision, p_limit integer)
returns integer language plpgsql as $$
declare
    v_count integer;
begin
    if p_older_than_seconds is null or p_older_than_seconds <= 0
       or p_older_than_seconds >= 'Infinity' then
        perform pgdurable.raise_error('PD006', format(
            'retention must be > 0 seconds, not %s', coalesce(p_older_than_seconds::text, 'NULL')));
    end if;
    with old as (
        select w.id from pgdurable.workflows w
         where w.status in ('succeeded', 'failed', 'cancelled')
           and w.finished_at < pgdurable.now() - make_interval(secs => p_older_than_seconds)
         order by w.finished_at
         limit p_limit
         for update skip locked
    ), gone as (
        delete from pgdurable.workflows w using old where w.id = old.id returning 1
    )
    select count(*) into v_count from gone;
    return v_count;
end
$$;

create table pgdurable.sweeps (
    id            boolean primary key default true check (id),
    last_sweep_at timestamptz not null
);

-- One recovery sweep: expired leases, due timers, cron ticks, retention. Bounded by `p_limit`
-- per part. Returns the counts as JSON. Safe to run from several places at once (row locks
-- with SKIP LOCKED, idempotent schedule ids), so a standby daemon or pg_cron cannot double work.
create function pgdurable.recover_sweep(p_limit integer, p_retention_seconds double precision)
returns jsonb language plpgsql as $$
declare
    v_now     timestamptz := pgdurable.now();
    v_since   timestamptz;
    v_expired record;
    v_result  jsonb;
begin
    if p_limit is null or p_limit < 1 then
        perform pgdurable.raise_error('PD006', format('limit must be >= 1, not %s', p_limit));
    end if;
    select last_sweep_at into v_since from pgdurable.sweeps for update;
    insert into pgdurable.sweeps (last_sweep_at) values (v_now)
    on conflict (id) do update set last_sweep_at = excluded.last_sweep_at;
    select * into v_expired from pgdurable.expire_leases(null, p_limit);
    v_result := jsonb_build_object(
        'requeued', v_expired.requeued,
        'dead_lettered', v_expired.dead_lettered,
        'woken_queues', pgdurable.wake_due(coalesce(v_since, v_now - interval '1 minute')),
        'scheduled', pgdurable.fire_schedules(p_limit),
        'purged', pgdurable.purge(p_retention_seconds, p_limit));
    return v_result;
end
$$;

-- Set a queue's recovery budget (runs recovered this many times end failed).
create or replace function pgdurable.declare_queue_recoveries(p_name text, p_max integer)
returns void language plpgsql as $$
begin
    if p_max is null or p_max < 1 then
        perform pgdurable.raise_error('PD006', format('max_recoveries must be >= 1, not %s',
                                                     p_max));
    end if;
    update pgdurable.queues set max_recoveries = p_max where name = p_name;
end
$$;
