-- Durable sleep and suspension
--
-- A sleep is a step whose recorded output is its wake-up time on the database's clock, so a
-- replay after a crash sleeps only what is left. `pgdurable.sleep(seconds)` in Python calls
-- `sleep_step`, then either waits in the executing thread or, for a worker's run sleeping
-- longer than 5 s, calls `suspend`: the run goes back to its queue until it is due and holds no
-- worker meanwhile.

-- The current definition of each function, applied by `pgdurable migrate` whenever this file
-- changes. Change a function here. A table change, or a function whose signature or result
-- type changes (drop it there first), goes in a new sql/migrations/ file: see "SQL files" in
-- docs/explanation/design.md.

create or replace function pgdurable.sleep_step(
    p_id text, p_epoch integer, p_step_no integer, p_seconds double precision)
returns table (wake_at timestamptz, remaining_seconds double precision)
language plpgsql as $$
#variable_conflict use_column
declare
    v_now  timestamptz := pgdurable.now();
    v_step pgdurable.steps;
begin
    if p_seconds is null or p_seconds < 0 or p_seconds >= 'Infinity' then
        perform pgdurable.raise_error('PD006', format('sleep must be >= 0 seconds, not %s',
                                                     coalesce(p_seconds::text, 'NULL')));
    end if;
    -- A replay reads the recorded time without the fencing lock: it writes nothing.
    select s.* into v_step from pgdurable.steps s
     where s.workflow_id = p_id and s.step_no = p_step_no;
    if not found then
        perform pgdurable.check_epoch(p_id, p_epoch);
        insert into pgdurable.steps
               (workflow_id, step_no, name, status, output, attempt, started_at, finished_at)
        values (p_id, p_step_no, 'pgdurable.sleep', 'done',
                jsonb_build_object('wake_at', v_now + make_interval(secs => p_seconds)),
                p_epoch, v_now, v_now)
        on conflict (workflow_id, step_no) do nothing;
        select s.* into v_step from pgdurable.steps s
         where s.workflow_id = p_id and s.step_no = p_step_no;
    end if;
    if v_step.name <> 'pgdurable.sleep' then
        perform pgdurable.raise_error('PD003', format(
            'workflow %L step %s was recorded as %L but the code now calls pgdurable.sleep',
            p_id, p_step_no, v_step.name),
            'the workflow code changed under a running workflow; steps must be called in the same order on replay');
    end if;
    wake_at := (v_step.output ->> 'wake_at')::timestamptz;
    remaining_seconds := greatest(0, extract(epoch from wake_at - v_now));
    return next;
end
$$;

comment on function pgdurable.sleep_step(text, integer, integer, double precision) is
$$The durable sleep of `p_seconds` at position `p_step_no` of run `p_id`. If the position is free:
`check_epoch(p_id, p_epoch)`, then records the step as `pgdurable.sleep`, `done`, with output
`{"wake_at": now() + p_seconds}`. If it is recorded already (a replay), reads it and writes
nothing (no fencing lock: a stale execution is fenced at its next write). Returns the recorded
wake-up time and the seconds still to wait (0 once it has passed), so a replay keeps the first
execution's wake-up time and waits only for what is left. Errors: PD006 unless `p_seconds` is
finite and >= 0 (`sleep must be >= 0 seconds, not -1`); PD001, PD004 when recording; PD003 when
another step is recorded at the position. Locks: share lock on the run when recording.$$;

create or replace function pgdurable.suspend(p_id text, p_epoch integer, p_until timestamptz)
returns void language plpgsql as $$
declare
    v_now timestamptz := pgdurable.now();
begin
    if p_until is null or not isfinite(p_until) then
        perform pgdurable.raise_error('PD006', format('cannot suspend until %s',
                                                     coalesce(p_until::text, 'NULL')));
    end if;
    perform pgdurable.check_epoch(p_id, p_epoch);
    update pgdurable.workflows
       set status = 'pending', owner = null, lease_until = null, available_at = p_until,
           updated_at = v_now
     where id = p_id;
    perform pgdurable.make_ready(p_id);
    if p_until <= v_now then
        perform pgdurable.notify_queue((select queue from pgdurable.workflows where id = p_id));
    end if;
end
$$;

comment on function pgdurable.suspend(text, integer, timestamptz) is
$$Suspends the execution of run `p_id` at epoch `p_epoch` until `p_until`: `check_epoch`, then the
run goes back on its queue, `pending`, owner and lease cleared, `available_at = p_until`, with a
`ready` row at that time. Its checkpoints stay; the first claim at or after `p_until` gives it a
new epoch and replays it (`has_steps = true`). Notifies the queue at once if `p_until` has
passed; otherwise the recovery sweep's `wake_due` does when it is due, and polling workers find
it. The run holds no concurrency or partition slot while suspended (a rate-limited queue counts
its next claim as a start). Errors: PD006 for a null or infinite `p_until`, PD001, PD004.$$;

create or replace function pgdurable.release(p_id text, p_epoch integer) returns void
language sql as $$
    select pgdurable.suspend(p_id, p_epoch, pgdurable.now())
$$;

comment on function pgdurable.release(text, integer) is
$$A worker gives claimed run `p_id` back (graceful shutdown): `suspend(p_id, p_epoch, now())`, so
it is `pending` and claimable again at once, keeps its checkpoints, and its queue is notified.
Errors: PD001, PD004.$$;
