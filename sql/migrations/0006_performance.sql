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
-- one). Every statement here is a scan of the arrays with primary-key lookups: a generic plan
-- made while the tables were small (or its estimate for the arrays' length) must not become a
-- sequential scan with a hash join.
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
set enable_hashjoin = off
set enable_mergejoin = off
-- Before PostgreSQL 18 a disabled plan type still counts as a huge cost (disable_cost), which
-- pushes these plans over jit_above_cost: every call would JIT-compile them (about 0.2 s).
set jit = off
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

-- Claiming, set-based: a queue without partition_concurrency is claimed with one statement per
-- batch (lock the first candidates of `ready` with SKIP LOCKED, delete them, update their runs),
-- instead of three statements per claimed run. Same contract and flow control as in 0002: only
-- the way rows are taken changed. A partitioned queue keeps the run-by-run loop, because each
-- claim changes the count the next candidate is checked against.
create or replace function pgdurable.claim(
    p_worker text, p_queues text[], p_max integer, p_lease_seconds double precision,
    p_names text[] default null)
returns table (id text, name text, epoch integer, inputs jsonb, queue text, has_steps boolean)
language plpgsql
-- The ready index already yields claim order; statistics of a fast-moving queue lag behind,
-- and a stale estimate must not turn the claim into a bitmap scan plus sort of the backlog.
set enable_sort = off
set enable_bitmapscan = off
-- Planned once per session, not on every call. The generic plan does not know the batch size:
-- the claimed rows must still be deleted and updated through their primary keys, never by a
-- sequential scan with a hash join.
set plan_cache_mode = force_generic_plan
set enable_seqscan = off
set enable_hashjoin = off
set enable_mergejoin = off
-- Before PostgreSQL 18 a disabled plan type still counts as a huge cost (disable_cost), which
-- pushes these plans over jit_above_cost: every call would JIT-compile them (about 0.2 s).
set jit = off
as $$
#variable_conflict use_column
declare
    v_now       timestamptz := pgdurable.now();
    v_lease     timestamptz;
    v_left      integer := p_max;
    v_allow     integer;
    v_queue     pgdurable.queues;
    v_limited   boolean;
    v_cand      record;
    v_row       record;
    v_running   integer;
    v_asked     integer;
    v_picked    integer;
    v_taken     integer;
    v_expired   text[];
begin
    if p_max is null or p_max < 1 then
        return;
    end if;
    perform pgdurable.check_lease(p_lease_seconds);
    v_lease := v_now + make_interval(secs => p_lease_seconds);

    for v_queue in
        select q.* from pgdurable.queues q
         where q.name = any(p_queues) and not q.paused order by q.name
    loop
        exit when v_left <= 0;
        v_allow := v_left;
        v_limited := v_queue.concurrency is not null or v_queue.worker_concurrency is not null
                     or v_queue.rate_limit is not null
                     or v_queue.partition_concurrency is not null;
        if v_limited then
            select q.* into v_queue from pgdurable.queues q
             where q.name = v_queue.name for update;
            continue when v_queue.paused;
            if v_queue.concurrency is not null then
                select count(*) into v_running from pgdurable.workflows w
                 where w.queue = v_queue.name and w.status = 'running';
                v_allow := least(v_allow, v_queue.concurrency - v_running);
            end if;
            if v_queue.worker_concurrency is not null then
                select count(*) into v_running from pgdurable.workflows w
                 where w.owner = p_worker and w.status = 'running' and w.queue = v_queue.name;
                v_allow := least(v_allow, v_queue.worker_concurrency - v_running);
            end if;
            if v_queue.rate_limit is not null then
                delete from pgdurable.queue_starts s
                 where s.queue = v_queue.name
                   and s.started_at <= v_now - make_interval(secs => v_queue.rate_period_seconds);
                select count(*) into v_running from pgdurable.queue_starts s
                 where s.queue = v_queue.name;
                v_allow := least(v_allow, v_queue.rate_limit - v_running);
            end if;
        end if;
        continue when v_allow <= 0;

        if v_queue.partition_concurrency is null then
            -- Batches until the slots are filled or no candidate is left: candidates found stale
            -- (the run moved on) or cancelled for their deadline do not use up the batch.
            loop
                v_asked := v_allow;
                v_picked := 0;
                v_taken := 0;
                v_expired := '{}';
                for v_row in
                    with picked as (
                        select r.workflow_id, r.priority, r.available_at, r.seq
                          from pgdurable.ready r
                         where r.queue = v_queue.name and r.available_at <= v_now
                           and (p_names is null or r.name = any(p_names))
                         order by r.priority, r.available_at, r.seq
                         limit v_asked
                           for update skip locked
                    ), gone as (
                        delete from pgdurable.ready r using picked p
                         where r.workflow_id = p.workflow_id
                        returning p.workflow_id, p.priority, p.available_at, p.seq
                    ), claimed as (
                        update pgdurable.workflows w
                           set status = 'running', attempt = w.attempt + 1, owner = p_worker,
                               lease_until = v_lease,
                               started_at = coalesce(w.started_at, v_now), updated_at = v_now
                          from gone g
                         where w.id = g.workflow_id and w.status = 'pending'
                        returning w.id, w.name, w.attempt, w.inputs, w.queue, w.deadline,
                                  w.started_at, g.priority, g.available_at, g.seq
                    )
                    select n.picked, c.id, c.name, c.attempt, c.inputs, c.queue,
                           -- The deadline applies to the first start only (started_at was
                           -- unset until now).
                           (c.deadline is not null and c.deadline < v_now
                            and c.started_at = v_now) as expired,
                           c.attempt > 1 and exists (select 1 from pgdurable.steps s
                                                      where s.workflow_id = c.id) as has_steps
                      from (select count(*)::integer as picked from picked) n
                      left join claimed c on true
                     order by c.priority, c.available_at, c.seq
                loop
                    v_picked := v_row.picked;
                    continue when v_row.id is null;
                    if v_row.expired then
                        v_expired := v_expired || v_row.id;
                        continue;
                    end if;
                    v_taken := v_taken + 1;
                    id := v_row.id;
                    name := v_row.name;
                    epoch := v_row.attempt;
                    inputs := v_row.inputs;
                    queue := v_row.queue;
                    has_steps := v_row.has_steps;
                    return next;
                end loop;
                if cardinality(v_expired) > 0 then
                    update pgdurable.workflows w
                       set status = 'cancelled', owner = null, lease_until = null,
                           finished_at = v_now,
                           error = jsonb_build_object(
                               'type', 'DeadlineExceeded',
                               'message', format('deadline %s passed before the run started',
                                                 w.deadline),
                               'traceback', '')
                     where w.id = any(v_expired);
                end if;
                if v_queue.rate_limit is not null and v_taken > 0 then
                    insert into pgdurable.queue_starts (queue, started_at)
                    select v_queue.name, v_now from generate_series(1, v_taken);
                end if;
                v_allow := v_allow - v_taken;
                v_left := v_left - v_taken;
                exit when v_allow <= 0 or v_picked < v_asked;  -- filled, or nothing more
            end loop;
            continue;
        end if;

        -- A partitioned queue, run by run (as in 0002). No LIMIT: candidates skipped for their
        -- partition or cancelled for their deadline must not use up the batch; the loop stops
        -- once the slots are filled.
        for v_cand in
            select r.workflow_id, r.partition_key from pgdurable.ready r
             where r.queue = v_queue.name and r.available_at <= v_now
               and (p_names is null or r.name = any(p_names))
             order by r.priority, r.available_at, r.seq
             for update skip locked
        loop
            exit when v_allow <= 0;
            if v_cand.partition_key is not null then
                -- Runs claimed earlier in this call are already `running` in our transaction.
                select count(*) into v_running from pgdurable.workflows w
                 where w.queue = v_queue.name and w.partition_key = v_cand.partition_key
                   and w.status = 'running';
                continue when v_running >= v_queue.partition_concurrency;
            end if;
            delete from pgdurable.ready r where r.workflow_id = v_cand.workflow_id;
            update pgdurable.workflows w
               set status = 'running', attempt = w.attempt + 1, owner = p_worker,
                   lease_until = v_lease,
                   started_at = coalesce(w.started_at, v_now), updated_at = v_now
             where w.id = v_cand.workflow_id and w.status = 'pending'
            returning w.id, w.name, w.attempt, w.inputs, w.queue, w.deadline, w.started_at
                 into v_row;
            continue when not found;  -- a stale ready row: the run moved on meanwhile
            if v_row.deadline is not null and v_row.deadline < v_now
               and v_row.started_at = v_now then
                update pgdurable.workflows w
                   set status = 'cancelled', owner = null, lease_until = null,
                       finished_at = v_now,
                       error = jsonb_build_object(
                           'type', 'DeadlineExceeded',
                           'message', format('deadline %s passed before the run started',
                                             v_row.deadline),
                           'traceback', '')
                 where w.id = v_row.id;
                continue;
            end if;
            if v_queue.rate_limit is not null then
                insert into pgdurable.queue_starts (queue, started_at)
                values (v_queue.name, v_now);
            end if;
            v_allow := v_allow - 1;
            v_left := v_left - 1;
            return query select v_row.id, v_row.name, v_row.attempt, v_row.inputs, v_row.queue,
                                v_row.attempt > 1 and exists (
                                    select 1 from pgdurable.steps s
                                     where s.workflow_id = v_row.id);
        end loop;
    end loop;
end
$$;
