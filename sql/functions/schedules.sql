-- Cron schedules
--
-- The client parses a cron expression into the sets of values each field allows, so matching
-- a minute is plain SQL and any client (pg_cron included) can fire schedules. Each tick
-- enqueues one run with the deterministic id `schedule:<name>:<tick in UTC>`, so a tick fires
-- once however many sweeps run. Rows are written by `declare_schedule` and never deleted by
-- pgdurable.

-- The current definition of each function, applied by `pgdurable migrate` whenever this file
-- changes. Change a function here. A table change, or a function whose signature or result
-- type changes (drop it there first), goes in a new sql/migrations/ file: see "SQL files" in
-- docs/explanation/design.md.

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

comment on function pgdurable.declare_schedule(text, text, text, text, jsonb, text, boolean,
    smallint[], smallint[], smallint[], smallint[], smallint[], boolean, boolean) is
$$Creates or updates schedule `p_name`: expression `p_cron` (kept for display), workflow
`p_workflow_name` enqueued on `p_queue` with `p_inputs`, matched in time zone `p_timezone`,
firing missed ticks when `p_catch_up`. The client parses the expression into the arrays
`p_minutes`, `p_hours`, `p_days`, `p_months`, `p_weekdays` (0-6, Sunday 0) and the flags
`p_days_restricted`, `p_weekdays_restricted` (whether that day field was other than `*`); the
function does not check them against `p_cron`. A new schedule gets `last_tick` = the current
minute, so it fires from the next tick on. An existing one is updated only if its expression,
workflow, queue, inputs, time zone or `catch_up` changed; `last_tick` is kept. `App` calls it for
every `app.schedule` / `@app.scheduled` when it connects. Errors: PD006 for an empty name (`a
schedule needs a non-empty name`), an empty workflow name, inputs that are not a JSON object, or
an unknown time zone (`unknown time zone 'Mars/Olympus'`, checked against `pg_timezone_names`);
PD007 (`queue 'nope' does not exist`). Locks: the schedule's row.$$;

create or replace function pgdurable.cron_matches(s pgdurable.schedules, p_tick timestamptz)
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

comment on function pgdurable.cron_matches(pgdurable.schedules, timestamptz) is
$$Whether minute `p_tick`, converted to schedule `s`'s time zone, matches its minute, hour and
month sets and its day rule: both day fields restricted, day of month or day of week; one
restricted, that one; neither, any day. `stable`, no locks. In a time zone with daylight saving,
a local time that is skipped never matches and one that repeats matches twice (two UTC ticks).$$;

create or replace function pgdurable.fire_due_ticks(
    p_limit integer, out fired integer, out failed integer)
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

comment on function pgdurable.fire_due_ticks(integer) is
$$Fires due schedule ticks, at most `p_limit` runs, and counts those that could not fire. For each
schedule whose `last_tick` is before the current minute (in name order, rows taken `FOR UPDATE
SKIP LOCKED`), enqueues one run per matching minute after `last_tick`: only the current minute
without `catch_up`; with it, every minute since `last_tick`, at most one day back, oldest first.
Each run is `enqueue(queue, workflow_name, inputs, 'schedule:<name>:<tick>')`, the tick in UTC as
`YYYY-MM-DDTHH:MMZ`, so a tick creates one run however often it is fired (an existing id is
returned unchanged); scheduled runs get `enqueue`'s defaults (priority 0, one attempt). Each
`enqueue` runs in a subtransaction: when it raises, that tick is skipped (not retried later), its
error is stored in the schedule's `last_error` / `last_error_at`, a `WARNING` is raised, `failed`
goes up by one, and the other ticks and schedules go on; a tick that fires clears `last_error`.
After `p_limit` runs, `last_tick` is set to the last tick handled, so the next call continues
from there; otherwise to the current minute. `fired` counts the runs enqueued (existing ids
included). Errors: none from the ticks. Locks: schedule rows, and what `enqueue` writes.$$;

create or replace function pgdurable.fire_schedules(p_limit integer) returns integer
language sql as $$
    select f.fired from pgdurable.fire_due_ticks(p_limit) f
$$;

comment on function pgdurable.fire_schedules(integer) is
$$`select fired from fire_due_ticks(p_limit)`: fires due schedule ticks, at most `p_limit` runs,
and returns how many runs were enqueued; a tick whose `enqueue` raises is skipped and kept in the
schedule's `last_error`.$$;
