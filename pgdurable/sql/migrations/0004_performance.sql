-- pgdurable: the performance migration.

-- Bulk enqueue for clients that build JSON cheaply (the Python library): like enqueue_many, but
-- the runs come as one JSON array of [id, inputs] pairs, which a client encodes in one call and
-- sends as one parameter (a jsonb[] and a text[] of 1000 elements cost a client more to build
-- than the inserts cost the server). Ids are required (the client chooses them, so a retried
-- call is idempotent). Returns how many runs were written; an id that already existed is left
-- as it is (PD002 if it belongs to another workflow).
create function pgdurable.enqueue_runs(
    p_queue text,
    p_name text,
    p_runs jsonb,
    p_priority integer default 0,
    p_delay_seconds double precision default 0,
    p_partition_key text default null,
    p_deadline timestamptz default null,
    p_max_attempts integer default 1,
    p_retry_backoff double precision default 1.0)
returns integer language plpgsql as $$
declare
    v_now       timestamptz := pgdurable.now();
    v_available timestamptz;
    v_given     integer;
    v_written   integer;
    v_clash     record;
begin
    perform pgdurable.check_enqueue_options(p_queue, p_name, p_delay_seconds, p_max_attempts,
                                            p_retry_backoff);
    if jsonb_typeof(p_runs) is distinct from 'array' then
        perform pgdurable.raise_error('PD006', 'runs must be a JSON array of [id, inputs] pairs');
    end if;
    v_given := jsonb_array_length(p_runs);
    if v_given = 0 then
        return 0;
    end if;
    if exists (select 1 from jsonb_array_elements(p_runs) r
                where jsonb_typeof(r -> 0) is distinct from 'string') then
        perform pgdurable.raise_error('PD006', 'every run needs a string id');
    end if;
    v_available := v_now + make_interval(secs => p_delay_seconds);
    with inserted as (
        insert into pgdurable.workflows
               (id, name, status, inputs, queue, priority, available_at, partition_key,
                deadline, max_attempts, retry_backoff, created_at, updated_at)
        select r.run ->> 0, p_name, 'pending', r.run -> 1, p_queue, p_priority, v_available,
               p_partition_key, p_deadline, p_max_attempts, p_retry_backoff, v_now, v_now
          from jsonb_array_elements(p_runs) with ordinality as r(run, ord) order by r.ord
        on conflict do nothing
        returning workflows.id
    ), readied as (
        insert into pgdurable.ready (workflow_id, queue, name, priority, available_at,
                                     partition_key)
        select ins.id, p_queue, p_name, p_priority, v_available, p_partition_key
          from inserted ins
        returning 1
    )
    select count(*) into v_written from readied;
    if v_written < v_given then  -- some ids existed: they must be runs of this workflow
        select w.id, w.name into v_clash from pgdurable.workflows w
         where w.id in (select r ->> 0 from jsonb_array_elements(p_runs) r)
           and w.name <> p_name limit 1;
        if found then
            perform pgdurable.raise_error('PD002', format(
                'workflow id %L already belongs to workflow %L, not %L', v_clash.id,
                v_clash.name, p_name),
                'choose other workflow ids, or enqueue the same workflow function');
        end if;
    end if;
    if p_delay_seconds = 0 then
        perform pgdurable.notify_queue(p_queue);
    end if;
    return v_written;
end
$$;

-- Group commit: write, in one transaction, the step checkpoints and run endings that the
-- executions of one process queued up meanwhile. Step items are recorded as `record_step` does
-- it, endings as `finish_many` does it (all arrays of one kind have one element per item).
--
-- Returns only the exceptions: one 'step' row per step item that was not simply inserted (the
-- outcome on record, or the SQLSTATE that refused it) and one 'finish' row per ending that was
-- not applied (its SQLSTATE). `ord` is the item's 1-based position in its arrays. An item without
-- a row was written as given.
create function pgdurable.commit_many(
    p_step_ids text[], p_step_epochs integer[], p_step_nos integer[], p_step_names text[],
    p_step_statuses text[], p_step_outputs jsonb[], p_step_errors jsonb[],
    p_ids text[], p_epochs integer[], p_statuses text[], p_outputs jsonb[], p_errors jsonb[])
returns table (kind text, ord integer, status text, output jsonb, error jsonb, inserted boolean,
               sqlstate text, message text)
language plpgsql
-- Custom plans would be made again on every call (their estimates never favour the generic
-- one); every statement here is a primary-key lookup or a scan of the arrays.
set plan_cache_mode = force_generic_plan
as $$
#variable_conflict use_column
declare
    v_now      timestamptz := pgdurable.now();
    v_steps    integer := coalesce(cardinality(p_step_ids), 0);
    v_live     bigint[];
    v_inserted bigint[] := '{}';
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
