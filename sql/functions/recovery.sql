-- Recovery and retention
--
-- Each function is bounded by a limit so that it is a short transaction; `recover_sweep` calls
-- the others (and `fire_due_ticks` of the schedules) and is what `pgdurable recover` and pg_cron
-- run. A null limit means no limit in `expire_leases`, `purge` and `fire_due_ticks` (avoid it on
-- large tables); a negative one is PostgreSQL's `LIMIT must not be negative` error (SQLSTATE
-- 2201W) in `expire_leases` and `purge`.

-- The current definition of each function, applied by `pgdurable migrate` whenever this file
-- changes. Change a function here. A table change, or a function whose signature or result
-- type changes (drop it there first), goes in a new sql/migrations/ file: see "SQL files" in
-- docs/explanation/design.md.

create or replace function pgdurable.expire_leases(
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

comment on function pgdurable.expire_leases(text[], integer) is
$$Handles up to `p_limit` runs of `p_queues` (null: every queue) that are `running` with
`lease_until < now()`, oldest lease first. Each one's `recoveries` goes up by one. If it is still
below the queue's `max_recoveries` (10 for a queue missing from `queues`), the run goes back to
`pending`, available at once, owner and lease cleared, with a `ready` row (`requeued`); the next
claim gives it a new epoch. Otherwise it ends `failed` with `finished_at` set and `error =
{"type": "RecoveryLimitExceeded", "message": "the run lost its worker N times (lease expired); it
is not recovered again", "traceback": ""}` (`dead_lettered`). The epoch is not changed; the old
execution is fenced because the run is no longer `running`. Sends no notification. Errors: none
of its own. Locks: the runs `FOR UPDATE SKIP LOCKED` (a run whose step write, heartbeat or finish
is in flight is left for the next call).$$;

create or replace function pgdurable.requeue_expired(p_queues text[], p_limit integer)
returns integer language sql as $$
    select e.requeued + e.dead_lettered from pgdurable.expire_leases(p_queues, p_limit) e
$$;

comment on function pgdurable.requeue_expired(text[], integer) is
$$`expire_leases(p_queues, p_limit)`, returning `requeued + dead_lettered`: the expired runs it
handled, whether put back on their queue or ended by the recovery budget. Workers call it for
their queues once per heartbeat period, with a limit of 100. Errors: none of its own.$$;

create or replace function pgdurable.wake_due(p_since timestamptz, p_until timestamptz)
returns integer
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

comment on function pgdurable.wake_due(timestamptz, timestamptz) is
$$Sends `NOTIFY pgdurable, '<queue>'` once for each queue that has `ready` runs whose
`available_at` is after `p_since` and not after `p_until`: delayed enqueues, retry backoffs and
suspensions that became due, and runs just requeued. Returns the number of queues notified.
Read-only apart from the notifications, which are delivered at commit. `p_since` or `p_until`
null: nothing. A caller that passes each call's `p_until` as the next call's `p_since` (as
`recover_sweep` does) wakes a due run's queue exactly once. Errors: none.$$;

create or replace function pgdurable.wake_due(p_since timestamptz) returns integer
language sql as $$
    select pgdurable.wake_due(p_since, pgdurable.now())
$$;

comment on function pgdurable.wake_due(timestamptz) is
$$`wake_due(p_since, now())`.$$;

create or replace function pgdurable.purge(p_older_than_seconds double precision, p_limit integer)
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

comment on function pgdurable.purge(double precision, integer) is
$$Retention: deletes up to `p_limit` runs that are `succeeded`, `failed` or `cancelled` and whose
`finished_at` is more than `p_older_than_seconds` ago, oldest first; their steps go with them
(`on delete cascade`). Returns how many runs it deleted. A deleted run's id can be used again.
Errors: PD006 unless `p_older_than_seconds` is > 0 and finite (`retention must be > 0 seconds,
not 0`). Locks: the runs `FOR UPDATE SKIP LOCKED`. Finding them scans the finished runs (there is
no index on `finished_at`).$$;

create or replace function pgdurable.time_out_runs(p_limit integer) returns integer
language plpgsql as $$
declare
    v_now   timestamptz := pgdurable.now();
    v_run   record;
    v_count integer := 0;
begin
    for v_run in
        select w.id, w.timeout_at from pgdurable.workflows w
         where w.timeout_at < v_now and w.status in ('pending', 'running')
         order by w.timeout_at
         limit p_limit
           for update skip locked
    loop
        -- An earlier iteration may have cancelled it with its ancestor.
        perform 1 from pgdurable.workflows w
         where w.id = v_run.id and w.status in ('pending', 'running');
        if not found then
            continue;
        end if;
        perform pgdurable.cancel_tree(v_run.id, true, jsonb_build_object(
            'type', 'WorkflowTimeout',
            'message', format('the run passed its timeout (timeout_at %s)', v_run.timeout_at),
            'timeout_at', v_run.timeout_at,
            'traceback', ''));
        v_count := v_count + 1;
    end loop;
    return v_count;
end
$$;

comment on function pgdurable.time_out_runs(integer) is
$$Cancels up to `p_limit` runs that are `pending` (queued, delayed or suspended waiting) or
`running` and whose `timeout_at` has passed, earliest first, each with its subtree
(`cancel_tree(id, true, error)`), and returns how many runs timed out (descendants not counted).
The run's `error` is `{"type": "WorkflowTimeout", "message": "the run passed its timeout
(timeout_at ...)", "timeout_at": "...", "traceback": ""}`; its cancelled descendants get the same
type with `ancestor` set. A running run's next checkpoint is refused (PD001). A null limit means
no limit; a negative one is PostgreSQL's `LIMIT must not be negative` error. Errors: none of its
own. Locks: the runs `FOR UPDATE SKIP LOCKED` (a run whose write is in flight is left for the
next call), then their descendants.$$;

create or replace function pgdurable.recover_sweep(
    p_limit integer, p_retention_seconds double precision)
returns jsonb language plpgsql as $$
declare
    v_since   timestamptz;
    v_until   timestamptz;
    v_expired record;
    v_ticks   record;
    v_woken   integer;
    v_timed_out integer;
begin
    if p_limit is null or p_limit < 1 then
        perform pgdurable.raise_error('PD006', format('limit must be >= 1, not %s', p_limit));
    end if;
    select last_sweep_at into v_since from pgdurable.sweeps for update;
    select * into v_expired from pgdurable.expire_leases(null, p_limit);
    v_timed_out := pgdurable.time_out_runs(p_limit);
    v_until := pgdurable.now();
    insert into pgdurable.sweeps (last_sweep_at) values (v_until)
    on conflict (id) do update set last_sweep_at = excluded.last_sweep_at;
    v_woken := pgdurable.wake_due(coalesce(v_since, v_until - interval '1 minute'), v_until);
    select * into v_ticks from pgdurable.fire_due_ticks(p_limit);
    return jsonb_build_object(
        'requeued', v_expired.requeued,
        'dead_lettered', v_expired.dead_lettered,
        'timed_out', v_timed_out,
        'woken_queues', v_woken,
        'scheduled', v_ticks.fired,
        'schedule_errors', v_ticks.failed,
        'purged', pgdurable.purge(p_retention_seconds, p_limit));
end
$$;

comment on function pgdurable.recover_sweep(integer, double precision) is
$$One recovery sweep, in one transaction: lock the row of `pgdurable.sweeps` (a concurrent sweep
waits), `expire_leases(null, p_limit)`, `time_out_runs(p_limit)`, then read the clock and record
that time as this sweep's, `wake_due(<previous sweep's time>, <this sweep's time>)` (a minute
back on the first sweep), `fire_due_ticks(p_limit)`, `purge(p_retention_seconds, p_limit)`.
Returns `{"requeued": n, "dead_lettered": n, "timed_out": n, "woken_queues": n, "scheduled": n,
"schedule_errors": n, "purged": n}`; a schedule that cannot fire is counted in
`schedule_errors` and does not stop the sweep. Safe to run from several sessions at once.
Errors: PD006 (`limit must be >= 1`) when `p_limit` is null or < 1; PD006 from `purge` for a bad
retention (raised after the other parts ran; the transaction rolls back whole).$$;

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

comment on function pgdurable.declare_queue_recoveries(text, integer) is
$$Sets the recovery budget `max_recoveries` of queue `p_name` to `p_max`: the lease expiry that
brings a run's `recoveries` to it ends the run `failed` (`RecoveryLimitExceeded`). Errors: PD006
unless `p_max` >= 1; PD007 (`queue 'nope' does not exist`) for an unknown queue. Locks: the
queue's row (like `declare_queue`).$$;
