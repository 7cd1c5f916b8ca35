-- Forks: a new run from another run's checkpoints
--
-- `fork` copies a run's inputs and its first recorded steps into a new queued run, which a
-- worker replays up to the chosen step and continues from there, as new code or a changed world
-- would have it. The original is only read. The copying counts as the fork's first execution:
-- the fork is created at epoch 1 and its copied step rows carry attempt 1, so its first real
-- execution is epoch 2. That keeps the rule the claim and the executors rely on, that epoch 1
-- is a run's first execution with no checkpoints to load, and tells the copies from the fork's
-- own checkpoints.

-- The current definition of each function, applied by `pgdurable migrate` whenever this file
-- changes. Change a function here. A table change, or a function whose signature or result
-- type changes (drop it there first), goes in a new sql/migrations/ file: see "SQL files" in
-- docs/explanation/design.md.

create or replace function pgdurable.fork(
    p_id text, p_from_step integer, p_new_id text default null, p_queue text default null)
returns text language plpgsql as $$
declare
    v_orig   pgdurable.workflows;
    v_new    pgdurable.workflows;
    v_id     text := coalesce(p_new_id, gen_random_uuid()::text);
    v_queue  text;
    v_steps  integer;
    v_copies integer;
    v_now    timestamptz := pgdurable.now();
begin
    if p_new_id = '' then
        perform pgdurable.raise_error('PD006', 'a fork needs a non-empty id (or null for a UUID)');
    end if;
    -- FOR SHARE: an operator's resume or requeue, or a retried failure, which change the
    -- original's last steps, update its row first and so wait for this copy (and vice versa).
    select w.* into v_orig from pgdurable.workflows w where w.id = p_id for share;
    if not found then
        perform pgdurable.raise_error('PD004', format('workflow %L does not exist', p_id));
    end if;
    select coalesce(max(s.step_no) + 1, 0) into v_steps
      from pgdurable.steps s where s.workflow_id = p_id;
    if p_from_step is null or p_from_step < 0 or p_from_step > v_steps then
        perform pgdurable.raise_error('PD006', format(
            'workflow %L has %s recorded steps: fork from a step in 0..%s, not %s',
            p_id, v_steps, v_steps, coalesce(p_from_step::text, 'NULL')),
            'pgdurable workflows steps ID lists them; from_step = their number continues a copy');
    end if;
    v_queue := coalesce(p_queue, v_orig.queue);
    if not exists (select 1 from pgdurable.queues q where q.name = v_queue) then
        perform pgdurable.raise_error('PD007', format('queue %L does not exist', v_queue),
            'declare it with app.queue(...) or pgdurable.declare_queue(...)');
    end if;

    insert into pgdurable.workflows as w
           (id, name, status, inputs, attempt, queue, priority, partition_key, max_attempts,
            retry_backoff, available_at, forked_from, created_at, updated_at)
    values (v_id, v_orig.name, 'pending', v_orig.inputs, 1, v_queue, v_orig.priority,
            v_orig.partition_key, v_orig.max_attempts, v_orig.retry_backoff, v_now, p_id,
            v_now, v_now)
    on conflict on constraint workflows_pkey do nothing;
    if not found then
        -- A retried fork returns the fork it made; any other run with this id is a conflict.
        select w.* into v_new from pgdurable.workflows w where w.id = v_id;
        select count(*)::integer into v_copies
          from pgdurable.steps s where s.workflow_id = v_id and s.attempt = 1;
        if v_new.forked_from is distinct from p_id or v_new.name <> v_orig.name
           or v_copies <> (select count(*) from pgdurable.steps s
                            where s.workflow_id = p_id and s.step_no < p_from_step) then
            perform pgdurable.raise_error('PD002', format(
                'workflow id %L already exists and is not a fork of %L from step %s',
                v_id, p_id, p_from_step), 'choose another id for the fork, or none');
        end if;
        return v_id;
    end if;

    insert into pgdurable.steps
           (workflow_id, step_no, name, status, output, error, attempt, started_at, finished_at)
    select v_id, s.step_no, s.name, s.status, s.output, s.error, 1, s.started_at, s.finished_at
      from pgdurable.steps s
     where s.workflow_id = p_id and s.step_no < p_from_step
     order by s.step_no;
    perform pgdurable.make_ready(v_id);
    perform pgdurable.notify_queue(v_queue);
    return v_id;
end
$$;

comment on function pgdurable.fork(text, integer, text, text) is
$$Forks run `p_id` from step `p_from_step` and returns the new run's id: a `pending` run with id
`p_new_id` (a UUID when null) of the same workflow name, with the original's inputs, priority,
partition key, `max_attempts` and `retry_backoff`, `forked_from = p_id`, no parent, on queue
`p_queue` (null: the original's queue), ready at once (with a notification), and with copies of
the original's recorded steps `0 .. p_from_step - 1` (status, output, error, name and times).
The copying counts as the fork's first execution: the fork is created at epoch 1 and the copies
carry attempt 1, so its first real execution (epoch 2) loads them. A worker replays the copies
and runs the workflow on from step
`p_from_step`. Copied at-most-once intents (`started`) stay unknown outcomes, as on the
original's own recovery: to run such a step again, fork from it. Copied steps that started
children share them (the children stay the original's); later steps start their own. Its
dedup key, deadline, timeout, failures and recoveries are not copied. The original is not
written. `p_from_step` may be the number of recorded positions (`max(step_no) + 1`): the fork
continues a copy. If `p_new_id` exists and is a fork of `p_id` with the same copied steps (a
retried call), its id is returned and nothing is written. Errors: PD004 (no run `p_id`), PD006
(`p_from_step` null, < 0 or beyond the recorded positions; `p_new_id` empty), PD007 (unknown
queue), PD002 (`p_new_id` is another run). Locks: the original's row `FOR SHARE`.$$;
