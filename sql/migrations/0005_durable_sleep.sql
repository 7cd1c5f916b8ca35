-- pgdurable 0005: durable sleep. A sleep is a step whose recorded output is its wake-up time
-- (on the database's clock), so a replay after a crash sleeps only what is left. A long sleep
-- of a queued run suspends it: the run goes back to its queue with available_at = the wake-up
-- time and holds no worker meanwhile; a worker claims it once due (the recovery sweep's
-- wake_due notifies the queue then).

-- Record the sleep at position `p_step_no` (wake-up = now + `p_seconds`), or return the one
-- recorded there by an earlier execution, with the seconds still to wait (>= 0).
create function pgdurable.sleep_step(
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

-- Suspend a running execution until `p_until`: the run goes back to its queue (pending, no
-- owner, available_at = p_until) keeping its checkpoints; the next claim after p_until gives
-- it a new epoch and replays it. Fenced like every write of an execution (PD001).
create function pgdurable.suspend(p_id text, p_epoch integer, p_until timestamptz)
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

-- A graceful release (worker shutdown) is a suspension until now: back on the queue at once,
-- with a wake-up.
create or replace function pgdurable.release(p_id text, p_epoch integer) returns void
language sql as $$
    select pgdurable.suspend(p_id, p_epoch, pgdurable.now())
$$;
