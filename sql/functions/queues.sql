-- Queues: declaring, enqueueing, claiming
--
-- Queued runs wait in `pgdurable.ready`, a narrow table holding only claimable rows: a claim
-- deletes from it instead of updating an indexed status column, so what the claim scans stays
-- small however long the history in `workflows` grows. Flow control (pause, concurrency,
-- per-worker concurrency, rate limit, partitions, priority, due time) is enforced in `claim`.

-- The current definition of each function, applied by `pgdurable migrate` whenever this file
-- changes. Change a function here. A table change, or a function whose signature or result
-- type changes (drop it there first), goes in a new sql/migrations/ file: see "SQL files" in
-- docs/explanation/design.md.

create or replace function pgdurable.declare_queue(
    p_name text,
    p_concurrency integer default null,
    p_worker_concurrency integer default null,
    p_rate_limit integer default null,
    p_rate_period_seconds double precision default null,
    p_partition_concurrency integer default null)
returns void language plpgsql as $$
begin
    if p_name is null or p_name = '' then
        perform pgdurable.raise_error('PD006', 'a queue needs a non-empty name');
    end if;
    if coalesce(p_concurrency, 1) < 1 or coalesce(p_worker_concurrency, 1) < 1
       or coalesce(p_partition_concurrency, 1) < 1 or coalesce(p_rate_limit, 1) < 1
       or coalesce(p_rate_period_seconds, 1) <= 0
       or coalesce(p_rate_period_seconds, 1) >= 'Infinity' then  -- NaN sorts above Infinity
        perform pgdurable.raise_error('PD006', format(
            'queue %L: limits must be positive (concurrency %s, worker_concurrency %s, '
            'rate_limit %s per %s s, partition_concurrency %s)', p_name, p_concurrency,
            p_worker_concurrency, p_rate_limit, p_rate_period_seconds, p_partition_concurrency));
    end if;
    if (p_rate_limit is null) <> (p_rate_period_seconds is null) then
        perform pgdurable.raise_error('PD006', format(
            'queue %L: a rate limit needs both a count and a period', p_name));
    end if;
    insert into pgdurable.queues as q
           (name, concurrency, worker_concurrency, rate_limit, rate_period_seconds,
            partition_concurrency, updated_at)
    values (p_name, p_concurrency, p_worker_concurrency, p_rate_limit, p_rate_period_seconds,
            p_partition_concurrency, pgdurable.now())
    on conflict (name) do update
       set concurrency = excluded.concurrency,
           worker_concurrency = excluded.worker_concurrency,
           rate_limit = excluded.rate_limit,
           rate_period_seconds = excluded.rate_period_seconds,
           partition_concurrency = excluded.partition_concurrency,
           updated_at = excluded.updated_at
     where (q.concurrency, q.worker_concurrency, q.rate_limit, q.rate_period_seconds,
            q.partition_concurrency)
           is distinct from
           (excluded.concurrency, excluded.worker_concurrency, excluded.rate_limit,
            excluded.rate_period_seconds, excluded.partition_concurrency);
end
$$;

comment on function pgdurable.declare_queue(text, integer, integer, integer, double precision,
    integer) is
$$Creates queue `p_name` or updates its limits (null = unlimited): `p_concurrency` running runs
across all workers, `p_worker_concurrency` per worker, at most `p_rate_limit` starts in any
window of `p_rate_period_seconds` (both or neither), `p_partition_concurrency` running runs per
partition key. `paused` and `max_recoveries` are left as they are (a redeploy does not un-pause a
queue an operator paused), and an unchanged queue is not written. `App` calls it for every
`app.queue(...)` when it connects. Errors: PD006 for an empty name, a limit < 1, a period <= 0 or
infinite, or a rate limit without its period (or the reverse). Locks: the queue's row.$$;

create or replace function pgdurable.set_queue_paused(p_name text, p_paused boolean) returns boolean
language plpgsql as $$
begin
    update pgdurable.queues set paused = p_paused, updated_at = pgdurable.now()
     where name = p_name;
    if not found then
        perform pgdurable.raise_error('PD007', format('queue %L does not exist', p_name));
    end if;
    return p_paused;
end
$$;

comment on function pgdurable.set_queue_paused(text, boolean) is
$$Pauses (`p_paused = true`) or resumes claiming from queue `p_name`; returns the new flag. Runs
already claimed go on. Errors: PD007 (unknown queue).$$;

create or replace function pgdurable.queue_stats()
returns table (name text, paused boolean, concurrency integer, worker_concurrency integer,
               rate_limit integer, rate_period_seconds double precision,
               partition_concurrency integer, ready bigint, running bigint)
language sql stable as $$
    select q.name, q.paused, q.concurrency, q.worker_concurrency, q.rate_limit,
           q.rate_period_seconds, q.partition_concurrency,
           (select count(*) from pgdurable.ready r where r.queue = q.name),
           (select count(*) from pgdurable.workflows w
             where w.queue = q.name and w.status = 'running')
      from pgdurable.queues q order by q.name
$$;

comment on function pgdurable.queue_stats() is
$$Every queue, in name order, with its limits, the number of its runs in `ready` (claimable now or
later) and the number `running`. What `pgdurable queues list` shows. Read-only.$$;

create or replace function pgdurable.enqueue(
    p_queue text,
    p_name text,
    p_inputs jsonb default '{"args": [], "kwargs": {}}',
    p_id text default null,
    p_priority integer default 0,
    p_delay_seconds double precision default 0,
    p_dedup_key text default null,
    p_partition_key text default null,
    p_deadline timestamptz default null,
    p_max_attempts integer default 1,
    p_retry_backoff double precision default 1.0,
    p_timeout_seconds double precision default null)
returns text language plpgsql as $$
declare
    v_id       text := coalesce(p_id, gen_random_uuid()::text);
    v_now      timestamptz := pgdurable.now();
    v_existing pgdurable.workflows;
    v_timeout_at timestamptz;
begin
    perform pgdurable.check_enqueue_options(p_queue, p_name, p_delay_seconds, p_max_attempts,
                                            p_retry_backoff);
    v_timeout_at := pgdurable.timeout_at(v_now, p_timeout_seconds);
    if jsonb_typeof(p_inputs) is distinct from 'object' then
        perform pgdurable.raise_error('PD006',
            'inputs must be a JSON object like {"args": [...], "kwargs": {...}}');
    end if;
    insert into pgdurable.workflows
           (id, name, status, inputs, queue, priority, available_at, dedup_key, partition_key,
            deadline, max_attempts, retry_backoff, created_at, updated_at, timeout_at)
    values (v_id, p_name, 'pending', p_inputs, p_queue, p_priority,
            v_now + make_interval(secs => p_delay_seconds), p_dedup_key, p_partition_key,
            p_deadline, p_max_attempts, p_retry_backoff, v_now, v_now, v_timeout_at)
    on conflict do nothing;
    if found then
        perform pgdurable.make_ready(v_id);
        if p_delay_seconds = 0 then
            perform pgdurable.notify_queue(p_queue);
        end if;
        return v_id;
    end if;

    select w.* into v_existing from pgdurable.workflows w where w.id = v_id;
    if not found and p_dedup_key is not null then
        select w.* into v_existing from pgdurable.workflows w
         where w.queue = p_queue and w.dedup_key = p_dedup_key
           and w.status in ('pending', 'running');
    end if;
    if v_existing.id is null then
        -- The conflicting row finished between our insert and this read: try once more.
        return pgdurable.enqueue(p_queue, p_name, p_inputs, p_id, p_priority, p_delay_seconds,
                                 p_dedup_key, p_partition_key, p_deadline, p_max_attempts,
                                 p_retry_backoff, p_timeout_seconds);
    end if;
    if v_existing.name <> p_name then
        perform pgdurable.raise_error('PD002', format(
            'workflow id %L already belongs to workflow %L, not %L', v_existing.id,
            v_existing.name, p_name),
            'choose another workflow_id, or enqueue the same workflow function');
    end if;
    return v_existing.id;
end
$$;

comment on function pgdurable.enqueue(text, text, jsonb, text, integer, double precision, text,
    text, timestamptz, integer, double precision, double precision) is
$$Enqueues one run of workflow `p_name` on queue `p_queue` and returns its id: a `pending` run with
inputs `p_inputs` (`{"args": [...], "kwargs": {...}}`), id `p_id` (a UUID when null), priority
`p_priority` (lower is claimed first), available after `p_delay_seconds`, with `p_dedup_key`,
`p_partition_key`, `p_deadline` (cancelled if not started by then), `p_max_attempts`,
`p_retry_backoff` and `p_timeout_seconds` (null: none; else `timeout_at = now() +
p_timeout_seconds`, a deadline for the whole run, waits included, after which `recover_sweep`
cancels it with its subtree), and its `ready` row. Sends `NOTIFY pgdurable, '<queue>'` when there is
no delay. If the id exists, or a `pending` / `running` run of this queue has the same `p_dedup_key`,
that run's id is returned and nothing is written (PD002 if it belongs to another workflow name).
Errors: PD007 (unknown queue), PD006 (empty name, negative delay, `max_attempts` < 1, negative
`retry_backoff`, a timeout not > 0 and finite, `p_inputs` not a JSON object), PD002. Run in the
caller's transaction, the run and the notification appear at commit.$$;

create or replace function pgdurable.enqueue_many(
    p_queue text,
    p_name text,
    p_inputs jsonb[],
    p_ids text[] default null,
    p_priority integer default 0,
    p_delay_seconds double precision default 0,
    p_partition_key text default null,
    p_deadline timestamptz default null,
    p_max_attempts integer default 1,
    p_retry_backoff double precision default 1.0)
returns table (id text) language plpgsql as $$
#variable_conflict use_column
declare
    v_now timestamptz := pgdurable.now();
    v_available timestamptz;
    v_clash record;
begin
    perform pgdurable.check_enqueue_options(p_queue, p_name, p_delay_seconds, p_max_attempts,
                                            p_retry_backoff);
    if p_ids is not null and cardinality(p_ids) <> cardinality(p_inputs) then
        perform pgdurable.raise_error('PD006', format(
            '%s ids given for %s inputs', cardinality(p_ids), cardinality(p_inputs)));
    end if;
    v_available := v_now + make_interval(secs => p_delay_seconds);
    return query
    with input as (
        select t.inputs, coalesce(t.id, gen_random_uuid()::text) as id, t.ord
          from unnest(p_inputs, coalesce(p_ids, array[]::text[])) with ordinality
               as t(inputs, id, ord)
    ), inserted as (
        insert into pgdurable.workflows
               (id, name, status, inputs, queue, priority, available_at, partition_key,
                deadline, max_attempts, retry_backoff, created_at, updated_at)
        select i.id, p_name, 'pending', i.inputs, p_queue, p_priority, v_available,
               p_partition_key, p_deadline, p_max_attempts, p_retry_backoff, v_now, v_now
          from input i order by i.ord
        on conflict do nothing
        returning workflows.id
    ), readied as (
        insert into pgdurable.ready (workflow_id, queue, name, priority, available_at,
                                     partition_key)
        select ins.id, p_queue, p_name, p_priority, v_available, p_partition_key
          from inserted ins
    )
    select i.id from input i order by i.ord;
    if p_ids is not null then
        select w.id, w.name into v_clash from pgdurable.workflows w
         where w.id = any(p_ids) and w.name <> p_name limit 1;
        if found then
            perform pgdurable.raise_error('PD002', format(
                'workflow id %L already belongs to workflow %L, not %L', v_clash.id,
                v_clash.name, p_name),
                'choose other workflow ids, or enqueue the same workflow function');
        end if;
    end if;
    if p_delay_seconds = 0 and cardinality(p_inputs) > 0 then
        perform pgdurable.notify_queue(p_queue);
    end if;
end
$$;

comment on function pgdurable.enqueue_many(text, text, jsonb[], text[], integer, double precision,
    text, timestamptz, integer, double precision) is
$$Enqueues one run of workflow `p_name` on queue `p_queue` per element of `p_inputs`, in one
statement, with one notification (none with a delay). `p_priority`, `p_delay_seconds`,
`p_partition_key`, `p_deadline`, `p_max_attempts` and `p_retry_backoff` apply to every run, as in
`enqueue`. `p_ids` is null (ids are generated) or has one id per input (PD006 otherwise). Returns
the ids in input order; an id that already exists is returned without writing. Errors: as
`enqueue`; PD002 when an id in `p_ids` belongs to another workflow name.$$;

create or replace function pgdurable.insert_runs(
    p_queue text, p_name text, p_runs jsonb, p_priority integer, p_available timestamptz,
    p_partition_key text, p_deadline timestamptz, p_max_attempts integer,
    p_retry_backoff double precision, p_timeout_at timestamptz, p_parent text)
returns integer language plpgsql as $$
declare
    v_now     timestamptz := pgdurable.now();
    v_written integer;
    v_clash   record;
begin
    with inserted as (
        insert into pgdurable.workflows
               (id, name, status, inputs, queue, priority, available_at, partition_key,
                deadline, max_attempts, retry_backoff, created_at, updated_at, timeout_at,
                parent_id)
        select r.run ->> 0, p_name, 'pending', r.run -> 1, p_queue, p_priority, p_available,
               p_partition_key, p_deadline, p_max_attempts, p_retry_backoff, v_now, v_now,
               p_timeout_at, p_parent
          from jsonb_array_elements(p_runs) with ordinality as r(run, ord) order by r.ord
        on conflict do nothing
        returning workflows.id
    ), readied as (
        insert into pgdurable.ready (workflow_id, queue, name, priority, available_at,
                                     partition_key)
        select ins.id, p_queue, p_name, p_priority, p_available, p_partition_key
          from inserted ins
        returning 1
    )
    select count(*) into v_written from readied;
    if v_written < jsonb_array_length(p_runs) then  -- ids that existed: runs of this workflow?
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
    return v_written;
end
$$;

comment on function pgdurable.insert_runs(text, text, jsonb, integer, timestamptz, text,
    timestamptz, integer, double precision, timestamptz, text) is
$$Internal: the one insert of queued runs, shared by `enqueue_runs` and `start_children`, which
check their inputs first. Writes one `pending` run of workflow `p_name` on queue `p_queue` per
`[id, inputs]` pair of `p_runs`, in array order, with `p_priority`, `p_available` (its
`available_at`), `p_partition_key`, `p_deadline`, `p_max_attempts`, `p_retry_backoff`,
`p_timeout_at` and `p_parent` (its `parent_id`), and its `ready` row; an id that exists already is
left as it is. Returns how many runs it wrote. Errors: PD002 when an existing id belongs to
another workflow.$$;

create or replace function pgdurable.enqueue_runs(
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
returns integer language plpgsql as $$
declare
    v_now       timestamptz := pgdurable.now();
    v_timeout_at timestamptz;
    v_given     integer;
    v_written   integer;
begin
    perform pgdurable.check_enqueue_options(p_queue, p_name, p_delay_seconds, p_max_attempts,
                                            p_retry_backoff);
    v_timeout_at := pgdurable.timeout_at(v_now, p_timeout_seconds);
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
    v_written := pgdurable.insert_runs(
        p_queue, p_name, p_runs, p_priority, v_now + make_interval(secs => p_delay_seconds),
        p_partition_key, p_deadline, p_max_attempts, p_retry_backoff, v_timeout_at, null);
    if p_delay_seconds = 0 then
        perform pgdurable.notify_queue(p_queue);
    end if;
    return v_written;
end
$$;

comment on function pgdurable.enqueue_runs(text, text, jsonb, integer, double precision, text,
    timestamptz, integer, double precision, double precision) is
$$Enqueues runs of workflow `p_name` on queue `p_queue` like `enqueue_many` (`p_priority`,
`p_delay_seconds`, `p_partition_key`, `p_deadline`, `p_max_attempts`, `p_retry_backoff` and
`p_timeout_seconds` apply to every run), but the runs come as one JSON array `p_runs` of `[id,
inputs]` pairs (`[["id-1", {"args": [1], "kwargs": {}}], ...]`), which a client encodes in one call
and sends as one parameter: what `Queue.enqueue_many` sends. Ids are required strings (the client
chooses them, so a retried call is idempotent). Writes the runs in array order with their `ready`
rows and one notification (none with a delay); an id that already exists is left as it is. Returns
how many runs it wrote. Errors: as `enqueue_many`, plus PD006 when `p_runs` is not an array or an id
is not a string, and PD002 when an existing id belongs to another workflow name (checked only when
some id existed).$$;

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
                               lease_until = v_lease, waiting_for = null,
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
                   lease_until = v_lease, waiting_for = null,
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

comment on function pgdurable.claim(text, text[], integer, double precision, text[]) is
$$Claims up to `p_max` runs of `p_queues` whose workflow name is in `p_names` (null: any) for
worker `p_worker`: each becomes `running` with epoch + 1, owner `p_worker` and a lease of
`p_lease_seconds`, and leaves `ready`. Per queue, in name order: paused queues are skipped;
`concurrency`, `worker_concurrency`, the rate limit and `partition_concurrency` bound how many
are taken; candidates are taken in `priority`, `available_at`, `seq` order among those with
`available_at <= now()`. A run whose `deadline` passed before its first start is cancelled (error
type `DeadlineExceeded`) instead. `has_steps` tells whether the run has recorded steps to load.
Returns nothing when `p_max` < 1. Errors: PD006 (lease). Locks: the `queues` row `FOR UPDATE`
when the queue has any limit (serialises claimers of a limited queue); candidate `ready` rows
`FOR UPDATE SKIP LOCKED`; the claimed `workflows` rows. A queue without `partition_concurrency`
is claimed set-based (one statement locks the first candidates, `LIMIT` the free slots, deletes
their `ready` rows and updates their runs, repeated only if some turned out stale or past their
deadline); a partitioned queue run by run, since each claim changes the count the next candidate
is checked against. Runs with `enable_sort` and `enable_bitmapscan` off (the plan follows the
`ready_claim` index), a forced generic plan with `enable_seqscan`, `enable_hashjoin` and
`enable_mergejoin` off (claimed rows are reached through their primary keys), and `jit` off
(before PostgreSQL 18 the disabled plan types' cost would make every call JIT-compile).$$;

create or replace function pgdurable.requeue(p_id text) returns text
language plpgsql as $$
declare
    v_row pgdurable.workflows;
    v_now timestamptz := pgdurable.now();
begin
    select w.* into v_row from pgdurable.workflows w where w.id = p_id for update;
    if not found then
        perform pgdurable.raise_error('PD004', format('workflow %L does not exist', p_id));
    end if;
    if v_row.status in ('failed', 'cancelled')
       or (v_row.status = 'running' and v_row.lease_until < v_now) then
        if v_row.dedup_key is not null and exists (
            select 1 from pgdurable.workflows w
             where w.queue = v_row.queue and w.dedup_key = v_row.dedup_key and w.id <> p_id
               and w.status in ('pending', 'running')) then
            perform pgdurable.raise_error('PD005', format(
                'workflow %L cannot go back on queue %L: run with the same dedup key %L is live',
                p_id, v_row.queue, v_row.dedup_key));
        end if;
        update pgdurable.workflows
           set status = 'pending', error = null, finished_at = null, failures = 0,
               recoveries = 0, owner = null, lease_until = null, available_at = v_now,
               updated_at = v_now
         where id = p_id;
        if v_row.status = 'failed' then
            perform pgdurable.forget_ending_failure(p_id, v_row.error);
        end if;
        perform pgdurable.make_ready(p_id);
        perform pgdurable.notify_queue(v_row.queue);
        return 'pending';
    end if;
    return v_row.status;
end
$$;

comment on function pgdurable.requeue(text) is
$$Operator resume through the queue. Locks run `p_id` `FOR UPDATE`. A `failed` or `cancelled` run,
or a `running` run with an expired lease, becomes `pending` (error, failure count, recovery
count, owner and lease cleared; the failed step that ended a failed run forgotten), gets a
`ready` row and a notification, and `'pending'` is returned; a worker continues it from its
checkpoints. Otherwise returns the current status unchanged. Errors: PD004 (no such run), PD005
when a live run of the same queue holds the same dedup key.$$;

create or replace function pgdurable.check_enqueue_options(
    p_queue text, p_name text, p_delay_seconds double precision, p_max_attempts integer,
    p_retry_backoff double precision)
returns void language plpgsql as $$
begin
    if not exists (select 1 from pgdurable.queues where name = p_queue) then
        perform pgdurable.raise_error('PD007', format('queue %L does not exist', p_queue),
            'declare it with app.queue(...) or pgdurable.declare_queue(...)');
    end if;
    if p_name is null or p_name = '' then
        perform pgdurable.raise_error('PD006', 'a workflow name is required');
    end if;
    -- 'NaN' sorts above 'Infinity' in PostgreSQL, so `>= 'Infinity'` refuses both.
    if p_delay_seconds is null or p_delay_seconds < 0 or p_delay_seconds >= 'Infinity' then
        perform pgdurable.raise_error('PD006', format('delay must be >= 0, not %s', p_delay_seconds));
    end if;
    if p_max_attempts is null or p_max_attempts < 1 then
        perform pgdurable.raise_error('PD006', format('max_attempts must be >= 1, not %s',
                                                     p_max_attempts));
    end if;
    if p_retry_backoff is null or p_retry_backoff < 0 or p_retry_backoff >= 'Infinity' then
        perform pgdurable.raise_error('PD006', format('retry_backoff must be >= 0, not %s',
                                                     p_retry_backoff));
    end if;
end
$$;

comment on function pgdurable.check_enqueue_options(text, text, double precision, integer,
    double precision) is
$$Internal helper: the argument checks of `enqueue`, `enqueue_many` and `enqueue_runs`. PD007 when
queue `p_queue` does not exist; PD006 for an empty workflow name `p_name`, or a null, negative,
infinite or NaN `p_delay_seconds` or `p_retry_backoff`, or `p_max_attempts` null or < 1.$$;

create or replace function pgdurable.make_ready(p_id text) returns void
language sql as $$
    insert into pgdurable.ready (workflow_id, queue, name, priority, available_at, partition_key)
    select w.id, w.queue, w.name, w.priority, coalesce(w.available_at, pgdurable.now()),
           w.partition_key
      from pgdurable.workflows w where w.id = p_id
    on conflict (workflow_id) do update
       set available_at = excluded.available_at, priority = excluded.priority
$$;

comment on function pgdurable.make_ready(text) is
$$Internal helper: inserts or refreshes run `p_id`'s `ready` row (queue, name, priority,
`available_at` or now, partition key) from its `workflows` row. The run must already be
`pending`.$$;

create or replace function pgdurable.notify_queue(p_queue text) returns void
language sql as $$
    select pg_notify('pgdurable', p_queue)
$$;

comment on function pgdurable.notify_queue(text) is
$$Internal helper: `pg_notify('pgdurable', p_queue)`, delivered at commit. Identical notifications
of one transaction are delivered once, so a transaction that enqueues many runs into one queue
wakes its workers once.$$;
