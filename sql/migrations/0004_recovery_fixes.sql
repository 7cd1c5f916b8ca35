-- pgdurable 0004: recovery fixes. A schedule that cannot fire no longer aborts the sweep (its
-- error is kept on the schedule, the other parts go on); declare_schedule refuses inputs that
-- could never be enqueued; a requeued run wakes its queue once; declare_queue_recoveries
-- refuses an unknown queue.

alter table pgdurable.schedules
    add column last_error    jsonb,        -- why the latest failed tick did not fire
    add column last_error_at timestamptz;  -- when (cleared by the next tick that fires)

create or replace function pgdurable.declare_queue_recoveries(p_name text, p_max integer)
returns void language plpgsql as $$
begin
    if p_max is null or p_max < 1 then
        perform pgdurable.raise_error('PD006', format('max_recoveries must be >= 1, not %s',
                                                     p_max));
    end if;
    update pgdurable.queues set max_recoveries = p_max where name = p_name;
    if not found then
        perform pgdurable.raise_error('PD007', format('queue %L does not exist', p_name),
            'declare it with app.queue(...) or pgdurable.declare_queue(...)');
    end if;
end
$$;

-- Wake workers of queues that have runs which became due in (`p_since`, `p_until`]: one
-- notification per queue. Returns how many queues were woken. A caller that remembers
-- `p_until` and passes it as the next `p_since` wakes each due run's queue exactly once.
create function pgdurable.wake_due(p_since timestamptz, p_until timestamptz) returns integer
language plpgsql as $$
declare
    v_count integer;
begin
    select count(*) into v_count from (
        select pgdurable.notify_queue(d.queue) from (
            select distinct r.queue from pgdurable.ready r
             where r.available_at > p_since and r.available_at <= p_until) d
    ) n;
    return v_count;
end
$$;

create or replace function pgdurable.wake_due(p_since timestamptz) returns integer
language sql as $$
    select pgdurable.wake_due(p_since, pgdurable.now())
$$;

create or replace function pgdurable.declare_schedule(
    p_name text, p_cron text, p_workflow_name text, p_queue text, p_inputs jsonb,
    p_timezone text, p_catch_up boolean, p_minutes smallint[], p_hours smallint[],
    p_days smallint[], p_months smallint[], p_weekdays smallint[],
    p_days_restricted boolean, p_weekdays_restricted boolean)
returns void language plpgsql as $$
begin
    if p_name is null or p_name = '' then
        perform pgdurable.raise_error('PD006', 'a schedule needs a non-empty name');
    end if;
    if p_workflow_name is null or p_workflow_name = '' then
        perform pgdurable.raise_error('PD006', format('schedule %L needs a workflow name', p_name));
    end if;
    if jsonb_typeof(p_inputs) is distinct from 'object' then
        perform pgdurable.raise_error('PD006', format(
            'schedule %L: inputs must be a JSON object like {"args": [...], "kwargs": {...}}',
            p_name));
    end if;
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

-- Fire due schedule ticks (see fire_schedules), reporting how many runs were enqueued and how
-- many ticks could not fire. A tick whose enqueue raises is skipped: its error is kept in
-- schedules.last_error (and raised as a WARNING), and the sweep goes on with the other
-- schedules, so one broken schedule cannot stop recovery.
create function pgdurable.fire_due_ticks(p_limit integer, out fired integer, out failed integer)
language plpgsql as $$
declare
    v_now   timestamptz := date_trunc('minute', pgdurable.now());
    v_sched pgdurable.schedules;
    v_tick  timestamptz;
    v_last  timestamptz;
    v_error jsonb;    -- the error of the schedule's latest tick in this call, if it failed
    v_ticked boolean; -- did any tick of the schedule fire or fail in this call?
    v_state text;
    v_msg   text;
begin
    fired := 0;
    failed := 0;
    for v_sched in
        select * from pgdurable.schedules s where s.last_tick < v_now
         order by s.name for update skip locked
    loop
        exit when fired >= p_limit;
        v_last := v_sched.last_tick;
        v_error := null;
        v_ticked := false;
        for v_tick in
            select g from generate_series(
                       greatest(v_sched.last_tick + interval '1 minute',
                                case when v_sched.catch_up then v_now - interval '1 day'
                                     else v_now end),
                       v_now, interval '1 minute') g
             where pgdurable.cron_matches(v_sched, g)
             order by g
        loop
            exit when fired >= p_limit;
            begin
                perform pgdurable.enqueue(
                    v_sched.queue, v_sched.workflow_name, v_sched.inputs,
                    'schedule:' || v_sched.name || ':'
                        || to_char(v_tick at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI"Z"'));
                fired := fired + 1;
                v_error := null;
            exception when others then
                get stacked diagnostics v_state = returned_sqlstate, v_msg = message_text;
                raise warning 'pgdurable: schedule % could not fire its % tick: % (SQLSTATE %)',
                    v_sched.name, v_tick, v_msg, v_state;
                v_error := jsonb_build_object('tick', v_tick, 'sqlstate', v_state,
                                              'message', v_msg);
                failed := failed + 1;
            end;
            v_last := v_tick;
            v_ticked := true;
        end loop;
        -- Ticks not fired because of the limit are picked up by the next call.
        update pgdurable.schedules s
           set last_tick = case when fired >= p_limit then v_last else v_now end,
               last_error = case when v_ticked then v_error else s.last_error end,
               last_error_at = case when not v_ticked then s.last_error_at
                                    when v_error is not null then pgdurable.now() end
         where s.name = v_sched.name;
    end loop;
end
$$;

create or replace function pgdurable.fire_schedules(p_limit integer) returns integer
language sql as $$
    select f.fired from pgdurable.fire_due_ticks(p_limit) f
$$;

-- One recovery sweep (see 0003). The wake-up window ends at a time read after the expired
-- leases were requeued, and that time is the next sweep's start: each due run wakes its
-- queue once.
create or replace function pgdurable.recover_sweep(
    p_limit integer, p_retention_seconds double precision)
returns jsonb language plpgsql as $$
declare
    v_since   timestamptz;
    v_until   timestamptz;
    v_expired record;
    v_ticks   record;
    v_woken   integer;
begin
    if p_limit is null or p_limit < 1 then
        perform pgdurable.raise_error('PD006', format('limit must be >= 1, not %s', p_limit));
    end if;
    select last_sweep_at into v_since from pgdurable.sweeps for update;
    select * into v_expired from pgdurable.expire_leases(null, p_limit);
    v_until := pgdurable.now();
    insert into pgdurable.sweeps (last_sweep_at) values (v_until)
    on conflict (id) do update set last_sweep_at = excluded.last_sweep_at;
    v_woken := pgdurable.wake_due(coalesce(v_since, v_until - interval '1 minute'), v_until);
    select * into v_ticks from pgdurable.fire_due_ticks(p_limit);
    return jsonb_build_object(
        'requeued', v_expired.requeued,
        'dead_lettered', v_expired.dead_lettered,
        'woken_queues', v_woken,
        'scheduled', v_ticks.fired,
        'schedule_errors', v_ticks.failed,
        'purged', pgdurable.purge(p_retention_seconds, p_limit));
end
$$;
