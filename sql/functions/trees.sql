-- Run trees: child workflows and the parents that wait for them
--
-- A workflow that starts children records one step ('pgdurable.children', its output the
-- children's ids) in the same transaction as the children, so a replay returns the same ids
-- and creates nothing. The parent's `joins` row counts its children that are not terminal; a
-- parent waiting on some of them ('pgdurable.gather') suspends waiting for 'children', and the
-- child whose end completes the wait wakes it in that child's own final transaction.

-- The current definition of each function, applied by `pgdurable migrate` whenever this file
-- changes. Change a function here. A table change, or a function whose signature or result
-- type changes (drop it there first), goes in a new sql/migrations/ file: see "SQL files" in
-- docs/explanation/design.md.

create or replace function pgdurable.start_children(
    p_parent text,
    p_epoch integer,
    p_step_no integer,
    p_queue text,
    p_name text,
    p_runs jsonb,
    p_priority integer default 0,
    p_delay_seconds double precision default 0,
    p_partition_key text default null,
    p_deadline timestamptz default null,
    p_max_attempts integer default 1,
    p_retry_backoff double precision default 1.0,
    p_timeout_seconds double precision default null)
returns jsonb language plpgsql as $$
declare
    v_now       timestamptz := pgdurable.now();
    v_step      pgdurable.steps;
    v_ids       jsonb;
    v_written   integer;
begin
    select s.* into v_step from pgdurable.steps s
     where s.workflow_id = p_parent and s.step_no = p_step_no;
    if found then  -- a replay: the children exist already
        if v_step.name <> 'pgdurable.children' then
            perform pgdurable.raise_error('PD003', format(
                'workflow %L step %s was recorded as %L but the code now starts child workflows',
                p_parent, p_step_no, v_step.name),
                'the workflow code changed under a running workflow; steps must be called in the same order on replay');
        end if;
        return v_step.output;
    end if;
    perform pgdurable.check_epoch(p_parent, p_epoch);
    perform pgdurable.check_enqueue_options(p_queue, p_name, p_delay_seconds, p_max_attempts,
                                            p_retry_backoff);
    if jsonb_typeof(p_runs) is distinct from 'array'
       or exists (select 1 from jsonb_array_elements(p_runs) r
                   where jsonb_typeof(r -> 0) is distinct from 'string'
                      or jsonb_typeof(r -> 1) is distinct from 'object') then
        perform pgdurable.raise_error('PD006',
            'runs must be a JSON array of [id, inputs] pairs, inputs an object');
    end if;
    select coalesce(jsonb_agg(r -> 0 order by ord), '[]') into v_ids
      from jsonb_array_elements(p_runs) with ordinality as t(r, ord);
    v_written := pgdurable.insert_runs(
        p_queue, p_name, p_runs, p_priority, v_now + make_interval(secs => p_delay_seconds),
        p_partition_key, p_deadline, p_max_attempts, p_retry_backoff,
        pgdurable.timeout_at(v_now, p_timeout_seconds), p_parent);
    insert into pgdurable.joins as j (parent_id, open) values (p_parent, v_written)
    on conflict (parent_id) do update set open = j.open + excluded.open;
    insert into pgdurable.steps
           (workflow_id, step_no, name, status, output, attempt, started_at, finished_at)
    values (p_parent, p_step_no, 'pgdurable.children', 'done', v_ids, p_epoch, v_now, v_now);
    if p_delay_seconds = 0 and v_written > 0 then
        perform pgdurable.notify_queue(p_queue);
    end if;
    return v_ids;
end
$$;

comment on function pgdurable.start_children(text, integer, integer, text, text, jsonb, integer, double precision, text, timestamptz, integer, double precision, double precision) is
$$Starts child workflows of run `p_parent` (at epoch `p_epoch`) as its step `p_step_no`, in one
transaction: queues one run of workflow `p_name` on `p_queue` per element of `p_runs` (a JSON
array of `[id, inputs]` pairs) with `parent_id = p_parent`, counts them in the parent's `joins`
row, and records the step ('pgdurable.children', output: the children's ids in order). The
options `p_priority`, `p_delay_seconds`, `p_partition_key`, `p_deadline`, `p_max_attempts`,
`p_retry_backoff` and `p_timeout_seconds` mean what they mean for `enqueue`. An id that exists already is left as it is
(and not counted as a child). A replay (the step is recorded) returns the recorded ids and
writes nothing. Errors: PD001 (stale epoch), PD002 (an id belongs to another workflow), PD003
(the step is recorded as something else), PD004, PD006 (bad `p_runs` or options), PD007
(unknown queue).$$;

create or replace function pgdurable.await_children(
    p_id text, p_epoch integer, p_step_no integer, p_ids text[], p_mode text, p_suspend boolean)
returns table (ready boolean, suspended boolean, results jsonb)
language plpgsql as $$
#variable_conflict use_column
declare
    v_now      timestamptz := pgdurable.now();
    v_step     pgdurable.steps;
    v_open     integer;
    v_found    integer;
    v_distinct integer;
    v_all_open integer;
    v_results  jsonb;
begin
    if p_mode is null or p_mode not in ('all', 'first') then
        perform pgdurable.raise_error('PD006', format('the wait mode must be all or first, not %L',
                                                     p_mode));
    end if;
    if p_ids is null or cardinality(p_ids) = 0 then
        perform pgdurable.raise_error('PD006', 'a wait needs at least one run');
    end if;
    select s.* into v_step from pgdurable.steps s
     where s.workflow_id = p_id and s.step_no = p_step_no;
    if found then  -- a replay: what the wait returned then
        if v_step.name <> 'pgdurable.gather' then
            perform pgdurable.raise_error('PD003', format(
                'workflow %L step %s was recorded as %L but the code now waits for child workflows',
                p_id, p_step_no, v_step.name),
                'the workflow code changed under a running workflow; steps must be called in the same order on replay');
        end if;
        return query select true, false, v_step.output;
        return;
    end if;
    perform pgdurable.check_epoch(p_id, p_epoch);
    -- The joins row lock orders this check against every child's end (which updates the row).
    insert into pgdurable.joins (parent_id) values (p_id) on conflict do nothing;
    perform 1 from pgdurable.joins where parent_id = p_id for update;
    v_distinct := cardinality(array(select distinct unnest(p_ids)));
    -- One pass over the runs waited for: how many exist, how many have not ended.
    select count(*), count(*) filter (where w.status not in ('succeeded', 'failed', 'cancelled'))
      into v_found, v_open
      from pgdurable.workflows w where w.id = any(p_ids);
    if v_found < v_distinct then
        perform pgdurable.raise_error('PD004', format('a run waited for does not exist (%s)',
            (select string_agg(i, ', ') from unnest(p_ids) i
              where not exists (select 1 from pgdurable.workflows w where w.id = i))));
    end if;
    if (p_mode = 'all' and v_open = 0) or (p_mode = 'first' and v_open < v_distinct) then
        if p_mode = 'all' then
            select jsonb_agg(jsonb_build_object('id', w.id, 'name', w.name, 'status', w.status,
                                                'output', w.output, 'error', w.error)
                             order by i.ord)
              into v_results
              from unnest(p_ids) with ordinality as i(id, ord)
              join pgdurable.workflows w on w.id = i.id;
        else
            select jsonb_build_array(jsonb_build_object(
                       'id', w.id, 'name', w.name, 'status', w.status, 'output', w.output,
                       'error', w.error, 'index', i.ord - 1))
              into v_results
              from unnest(p_ids) with ordinality as i(id, ord)
              join pgdurable.workflows w on w.id = i.id
             where w.status in ('succeeded', 'failed', 'cancelled')
             order by w.finished_at, i.ord limit 1;
        end if;
        insert into pgdurable.steps
               (workflow_id, step_no, name, status, output, attempt, started_at, finished_at)
        values (p_id, p_step_no, 'pgdurable.gather', 'done', v_results, p_epoch, v_now, v_now);
        update pgdurable.joins
           set wait_step = null, wait_mode = null, wait_left = null, wait_ids = null
         where parent_id = p_id and wait_step is not null;
        return query select true, false, v_results;
        return;
    end if;
    -- Not there yet. Suspend only when every run waited for is a child of this run (the only
    -- runs whose end updates its joins row); otherwise the caller waits in its own thread.
    if not p_suspend or exists (select 1 from pgdurable.workflows w
                                 where w.id = any(p_ids) and w.parent_id is distinct from p_id)
    then
        return query select false, false, null::jsonb;
        return;
    end if;
    select count(*) into v_all_open from pgdurable.workflows w
     where w.parent_id = p_id and w.status not in ('succeeded', 'failed', 'cancelled');
    update pgdurable.joins
       set wait_step = p_step_no, wait_mode = p_mode,
           wait_left = case when p_mode = 'all' then v_open else 1 end,
           -- Waiting for every open child: no membership test when one ends.
           wait_ids = case when v_all_open = v_open then null else p_ids end
     where parent_id = p_id;
    perform pgdurable.suspend(p_id, p_epoch, null, 'children');
    return query select false, true, null::jsonb;
end
$$;

comment on function pgdurable.await_children(text, integer, integer, text[], text, boolean) is
$$Waits, as step `p_step_no` of run `p_id` at epoch `p_epoch`, for the runs `p_ids`: all of them
(`p_mode` 'all') or the first to end ('first'). If the wait is over, records the step
('pgdurable.gather', output: for 'all' one `{id, name, status, output, error}` per run in the
order given; for 'first' a one-element array of the first run to end, with its `index` in
`p_ids`) and returns `ready = true` with it. A replay returns the recorded results and writes
nothing. Otherwise returns `ready = false`; with `p_suspend` and every run a child of `p_id`, it
first records what the parent waits for in its `joins` row and suspends it waiting for
'children' (no ready row; `suspended = true`): the child whose end completes the wait wakes it
in that child's final transaction. Without, the caller waits and asks again. Errors: PD001, PD003 (the step is recorded as something else), PD004 (`p_id` or a
run waited for does not exist), PD006 (bad `p_mode`, no runs).$$;

create or replace function pgdurable.child_status_changed() returns trigger
language plpgsql as $$
declare
    v_ended   boolean := new.status in ('succeeded', 'failed', 'cancelled');
    v_delta   integer := case when new.status in ('succeeded', 'failed', 'cancelled')
                              then -1 else 1 end;
    v_join    pgdurable.joins;
    v_awaited boolean;
begin
    -- Always write the parent's row: its lock orders this end against the parent's check.
    update pgdurable.joins j
       set open = greatest(j.open + v_delta, 0),
           wait_left = case when j.wait_step is not null
                                 and (j.wait_ids is null or new.id = any(j.wait_ids))
                            then j.wait_left + v_delta else j.wait_left end
     where j.parent_id = new.parent_id
    returning j.* into v_join;
    if not found or not v_ended or v_join.wait_step is null then
        return null;
    end if;
    v_awaited := v_join.wait_ids is null or new.id = any(v_join.wait_ids);
    if v_awaited and (v_join.wait_mode = 'first' or v_join.wait_left <= 0) then
        update pgdurable.joins
           set wait_step = null, wait_mode = null, wait_left = null, wait_ids = null
         where parent_id = new.parent_id;
        perform pgdurable.wake(new.parent_id, 'children');
    end if;
    return null;
end
$$;

comment on function pgdurable.child_status_changed() is
$$Trigger of `workflows` (after a child's status crosses between terminal and not terminal):
keeps the parent's `joins` row counting its open children, and when the ending child completes
what the parent waits for (the last one for 'all', any awaited one for 'first'), clears the wait
and wakes the parent (`wake(parent, 'children')`) in this same transaction. Errors: none of its
own.$$;
