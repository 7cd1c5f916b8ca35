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

create or replace function pgdurable.suspend(
    p_id text, p_epoch integer, p_until timestamptz, p_wait_for text)
returns void language plpgsql as $$
declare
    v_now   timestamptz := pgdurable.now();
    v_queue text;
begin
    if p_until is null and p_wait_for is null then
        perform pgdurable.raise_error('PD006',
            'cannot suspend until NULL: a suspension needs a wake-up time, a condition, or both');
    end if;
    if not isfinite(p_until) then
        perform pgdurable.raise_error('PD006', format('cannot suspend until %s', p_until));
    end if;
    if p_wait_for = '' or length(p_wait_for) > 200 then
        perform pgdurable.raise_error('PD006', format(
            'a suspension condition must be 1 to 200 characters, not %L', left(p_wait_for, 40)));
    end if;
    perform pgdurable.check_epoch(p_id, p_epoch);
    update pgdurable.workflows
       set status = 'pending', owner = null, lease_until = null, available_at = p_until,
           waiting_for = p_wait_for, updated_at = v_now
     where id = p_id
    returning queue into v_queue;
    if p_until is null then
        return;  -- claimable only once woken: no ready row until then
    end if;
    perform pgdurable.make_ready(p_id);
    if p_until <= v_now then
        perform pgdurable.notify_queue(v_queue);
    end if;
end
$$;

comment on function pgdurable.suspend(text, integer, timestamptz, text) is
$$The one suspension primitive: suspends the execution of run `p_id` at epoch `p_epoch` until
`p_until` and/or until woken for the condition `p_wait_for`. `check_epoch`, then the run goes
back on its queue, `pending`, owner and lease cleared, `waiting_for = p_wait_for`,
`available_at = p_until`. With a `p_until`, it gets a `ready` row at that time (the first claim
at or after it gives the run a new epoch and replays it; the queue is notified at once if
`p_until` has passed, else the recovery sweep's `wake_due` does when it is due). Without one, it
has no `ready` row and no worker can claim it until `wake(p_id, p_wait_for)`. Its checkpoints
stay; it holds no concurrency or partition slot while suspended. A feature that waits checks its
condition under the run's row lock in the same transaction before suspending, so a wake-up
committed meanwhile is never lost. Errors: PD006 when both `p_until` and `p_wait_for` are null,
for an infinite `p_until`, or a `p_wait_for` that is empty or longer than 200 characters (text
cannot hold a NUL); PD001, PD004.$$;

create or replace function pgdurable.suspend(p_id text, p_epoch integer, p_until timestamptz)
returns void language sql as $$
    select pgdurable.suspend(p_id, p_epoch, p_until, null)
$$;

comment on function pgdurable.suspend(text, integer, timestamptz) is
$$`suspend(p_id, p_epoch, p_until, null)`: suspends run `p_id` at epoch `p_epoch` until
`p_until` only (no condition). Errors: PD006 for a null or infinite `p_until`; PD001, PD004.$$;

create or replace function pgdurable.wake(p_id text, p_condition text) returns boolean
language plpgsql as $$
declare
    v_now   timestamptz := pgdurable.now();
    v_queue text;
begin
    update pgdurable.workflows
       set available_at = v_now, waiting_for = null, updated_at = v_now
     where id = p_id and status = 'pending' and waiting_for = p_condition
    returning queue into v_queue;
    if not found then
        return false;
    end if;
    perform pgdurable.make_ready(p_id);
    perform pgdurable.notify_queue(v_queue);
    return true;
end
$$;

comment on function pgdurable.wake(text, text) is
$$Wakes run `p_id` if it is suspended waiting for `p_condition`: it becomes claimable now (its
`ready` row is created or moved to now), `waiting_for` is cleared, and its queue is notified when
the calling transaction commits. Returns whether it woke a run; false (and nothing written) when
the run does not exist, is not pending, or waits for another condition or none. Safe to call
from any transaction, including a trigger: the wake-up happens if and only if that transaction
commits. Errors: none of its own.$$;

create or replace function pgdurable.release(p_id text, p_epoch integer) returns void
language sql as $$
    select pgdurable.suspend(p_id, p_epoch, pgdurable.now())
$$;

comment on function pgdurable.release(text, integer) is
$$A worker gives claimed run `p_id` back (graceful shutdown): `suspend(p_id, p_epoch, now())`, so
it is `pending` and claimable again at once, keeps its checkpoints, and its queue is notified.
Errors: PD001, PD004.$$;
