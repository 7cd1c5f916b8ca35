-- pgdurable 0002: queues, flow control in the claim function, workflow-level retries.
--
-- New SQLSTATE: PD007 unknown queue.
--
-- Queued runs wait in `pgdurable.ready`, a narrow table that holds only claimable rows: a claim
-- deletes from it instead of updating an indexed status column, so the structure the claim scans
-- stays small however large the history in `workflows` grows.

create table pgdurable.queues (
    name                  text primary key check (name <> ''),
    concurrency           integer check (concurrency > 0),          -- across all workers
    worker_concurrency    integer check (worker_concurrency > 0),   -- per worker process
    rate_limit            integer check (rate_limit > 0),           -- starts per window ...
    rate_period_seconds   double precision                          -- ... of this size
                          check (rate_period_seconds > 0 and rate_period_seconds < 'Infinity'),
    partition_concurrency integer check (partition_concurrency > 0),  -- per partition key
    paused                boolean not null default false,
    max_recoveries        integer not null default 10 check (max_recoveries > 0),
    updated_at            timestamptz not null default pgdurable.now(),
    check ((rate_limit is null) = (rate_period_seconds is null))
);

insert into pgdurable.queues (name) values ('default');

alter table pgdurable.workflows
    add column queue          text not null default 'default',
    add column priority       integer not null default 0,
    add column available_at   timestamptz,
    add column dedup_key      text,
    add column partition_key  text,
    add column deadline       timestamptz,
    add column max_attempts   integer not null default 1 check (max_attempts >= 1),
    add column retry_backoff  double precision not null default 1.0 check (retry_backoff >= 0),
    add column failures       integer not null default 0,
    add column recoveries     integer not null default 0;  -- lease expiries survived so far

-- A live duplicate of a dedup key returns the existing run instead of creating one.
create unique index workflows_live_dedup on pgdurable.workflows (queue, dedup_key)
    where dedup_key is not null and status in ('pending', 'running');
-- Flow-control counts read only running rows.
create index workflows_running_queue on pgdurable.workflows (queue, partition_key)
    where status = 'running';
create index workflows_running_lease on pgdurable.workflows (lease_until)
    where status = 'running';

create table pgdurable.ready (
    workflow_id   text primary key,
    queue         text not null,
    name          text not null,
    priority      integer not null,
    available_at  timestamptz not null,
    seq           bigint generated always as identity,
    partition_key text
) with (fillfactor = 100, autovacuum_vacuum_scale_factor = 0.01,
        autovacuum_vacuum_threshold = 1000, autovacuum_vacuum_cost_delay = 0,
        autovacuum_analyze_scale_factor = 0.05);

-- Lower priority number first, then FIFO (due time, then enqueue order).
create index ready_claim on pgdurable.ready (queue, priority, available_at, seq);

-- Exact sliding-window rate limiting: one row per start of a rate-limited queue, pruned as the
-- window moves.
create table pgdurable.queue_starts (
    queue      text not null,
    started_at timestamptz not null
);
create index queue_starts_queue on pgdurable.queue_starts (queue, started_at);

-- Create or update a queue's limits (null = unlimited). `paused` is left as it is, so a redeploy
-- changes limits without un-pausing a queue an operator paused.
create function pgdurable.declare_queue(
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

-- Pause or resume claiming from a queue. Returns the new paused flag.
create function pgdurable.set_queue_paused(p_name text, p_paused boolean) returns boolean
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

-- Put a run into the ready table (status must already be 'pending').
create function pgdurable.make_ready(p_id text) returns void
language sql as $$
    insert into pgdurable.ready (workflow_id, queue, name, priority, available_at, partition_key)
    select w.id, w.queue, w.name, w.priority, coalesce(w.available_at, pgdurable.now()),
           w.partition_key
      from pgdurable.workflows w where w.id = p_id
    on conflict (workflow_id) do update
       set available_at = excluded.available_at, priority = excluded.priority
$$;

-- Wake idle workers of a queue. Identical notifications in one transaction are delivered once,
-- so a transaction that enqueues many runs into one queue sends one wake-up.
create function pgdurable.notify_queue(p_queue text) returns void
language sql as $$
    select pg_notify('pgdurable', p_queue)
$$;

create function pgdurable.check_enqueue_options(
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

-- Enqueue one run and return its id. With an existing id (or a live duplicate dedup key in the
-- same queue) the existing run's id is returned and nothing is written. Usable from any client:
--   select pgdurable.enqueue('emails', 'myapp.tasks.send_welcome', '{"args": [42]}');
create function pgdurable.enqueue(
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
    p_retry_backoff double precision default 1.0)
returns text language plpgsql as $$
declare
    v_id       text := coalesce(p_id, gen_random_uuid()::text);
    v_now      timestamptz := pgdurable.now();
    v_existing pgdurable.workflows;
begin
    perform pgdurable.check_enqueue_options(p_queue, p_name, p_delay_seconds, p_max_attempts,
                                            p_retry_backoff);
    if jsonb_typeof(p_inputs) is distinct from 'object' then
        perform pgdurable.raise_error('PD006',
            'inputs must be a JSON object like {"args": [...], "kwargs": {...}}');
    end if;
    insert into pgdurable.workflows
           (id, name, status, inputs, queue, priority, available_at, dedup_key, partition_key,
            deadline, max_attempts, retry_backoff, created_at, updated_at)
    values (v_id, p_name, 'pending', p_inputs, p_queue, p_priority,
            v_now + make_interval(secs => p_delay_seconds), p_dedup_key, p_partition_key,
            p_deadline, p_max_attempts, p_retry_backoff, v_now, v_now)
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
                                 p_retry_backoff);
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

-- Enqueue many runs of one workflow in one statement (one round trip, one wake-up).
-- `p_ids` may be null (ids are generated) or hold one id per input. Returns the ids in input
-- order; an id that already existed is returned as it is, without writing.
create function pgdurable.enqueue_many(
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

-- Put runs whose lease expired back in the ready table (their owner died or was cut off).
-- The next claim gives them a new epoch, so the old owner's late writes are refused.
-- `p_queues` null means every queue. Bounded by `p_limit`; returns how many it moved.
create function pgdurable.requeue_expired(p_queues text[], p_limit integer)
returns integer language plpgsql as $$
declare
    v_now   timestamptz := pgdurable.now();
    v_id    text;
    v_count integer := 0;
begin
    for v_id in
        select w.id from pgdurable.workflows w
         where w.status = 'running' and w.lease_until < v_now
           and (p_queues is null or w.queue = any(p_queues))
         order by w.lease_until
         limit p_limit
         for update skip locked
    loop
        update pgdurable.workflows
           set status = 'pending', owner = null, lease_until = null, available_at = v_now,
               updated_at = v_now
         where id = v_id;
        perform pgdurable.make_ready(v_id);
        v_count := v_count + 1;
    end loop;
    return v_count;
end
$$;

-- Claim up to `p_max` runs from `p_queues` for worker `p_worker`, honouring per queue: pause,
-- global concurrency, per-worker concurrency, the sliding-window rate limit, per-partition
-- concurrency, priority then FIFO, and `available_at`. Only runs whose workflow name is in
-- `p_names` are taken (null: any), so a worker never claims what it cannot run.
-- Queues with limits are claimed under a lock on their `queues` row, so concurrent claimers
-- cannot both see the last free slot. Each claimed run gets a new epoch and a lease.
-- Runs whose deadline passed before they could start are cancelled instead of claimed.
create function pgdurable.claim(
    p_worker text, p_queues text[], p_max integer, p_lease_seconds double precision,
    p_names text[] default null)
returns table (id text, name text, epoch integer, inputs jsonb, queue text, has_steps boolean)
language plpgsql
-- The ready index already yields claim order; statistics of a fast-moving queue lag behind,
-- and a stale estimate must not turn the claim into a bitmap scan plus sort of the backlog.
set enable_sort = off
set enable_bitmapscan = off
as $$
#variable_conflict use_column
declare
    v_now       timestamptz := pgdurable.now();
    v_left      integer := p_max;
    v_allow     integer;
    v_queue     pgdurable.queues;
    v_limited   boolean;
    v_cand      record;
    v_row       pgdurable.workflows;
    v_running   integer;
begin
    if p_max is null or p_max < 1 then
        return;
    end if;
    perform pgdurable.check_lease(p_lease_seconds);

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

        -- No LIMIT: candidates skipped for their partition or cancelled for their deadline must
        -- not use up the batch; the loop stops once the slots are filled.
        for v_cand in
            select r.workflow_id, r.partition_key from pgdurable.ready r
             where r.queue = v_queue.name and r.available_at <= v_now
               and (p_names is null or r.name = any(p_names))
             order by r.priority, r.available_at, r.seq
             for update skip locked
        loop
            exit when v_allow <= 0;
            if v_queue.partition_concurrency is not null and v_cand.partition_key is not null then
                -- Runs claimed earlier in this call are already `running` in our transaction.
                select count(*) into v_running from pgdurable.workflows w
                 where w.queue = v_queue.name and w.partition_key = v_cand.partition_key
                   and w.status = 'running';
                continue when v_running >= v_queue.partition_concurrency;
            end if;
            delete from pgdurable.ready r where r.workflow_id = v_cand.workflow_id;
            update pgdurable.workflows w
               set status = 'running', attempt = w.attempt + 1, owner = p_worker,
                   lease_until = v_now + make_interval(secs => p_lease_seconds),
                   started_at = coalesce(w.started_at, v_now), updated_at = v_now
             where w.id = v_cand.workflow_id and w.status = 'pending'
            returning w.* into v_row;
            continue when not found;  -- a stale ready row: the run moved on meanwhile
            -- The deadline applies to the first start only (started_at was unset until now).
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

-- Give a claimed run back (graceful shutdown): it becomes claimable again at once. Fenced.
create function pgdurable.release(p_id text, p_epoch integer) returns void
language plpgsql as $$
declare
    v_now timestamptz := pgdurable.now();
begin
    perform pgdurable.check_epoch(p_id, p_epoch);
    update pgdurable.workflows
       set status = 'pending', owner = null, lease_until = null, available_at = v_now,
           updated_at = v_now
     where id = p_id;
    perform pgdurable.make_ready(p_id);
    perform pgdurable.notify_queue((select queue from pgdurable.workflows where id = p_id));
end
$$;

-- Put a failed, cancelled or abandoned (lease expired) run back on its queue, to be continued
-- from its checkpoints by a worker. Recorded steps are kept; the error and the failure and
-- recovery counts are cleared. Returns the run's status afterwards.
create function pgdurable.requeue(p_id text) returns text
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

-- Finishing now retries failed runs that have attempts left: the run goes back to its queue
-- after `retry_backoff * 2^(failures - 1)` seconds (capped at one hour), keeping its
-- checkpoints. The last failure leaves it `failed` (the dead letter state).
create or replace function pgdurable.finish_workflow(
    p_id text, p_epoch integer, p_status text, p_output jsonb, p_error jsonb)
returns void language plpgsql as $$
declare
    v_now  timestamptz := pgdurable.now();
    v_row  pgdurable.workflows;
    v_wait double precision;
begin
    if p_status is null or p_status not in ('succeeded', 'failed') then
        perform pgdurable.raise_error('PD006', format(
            'a run finishes as succeeded or failed, not %L', p_status));
    end if;
    if p_status = 'succeeded' then
        -- The hot path: one fenced UPDATE (the row lock it takes orders it with take-overs).
        update pgdurable.workflows
           set status = 'succeeded', output = p_output, error = null, owner = null,
               lease_until = null, finished_at = v_now, updated_at = v_now
         where id = p_id and attempt = p_epoch and status = 'running';
        if not found then
            perform pgdurable.check_epoch(p_id, p_epoch);  -- raises the precise error
        end if;
        return;
    end if;
    perform pgdurable.check_epoch(p_id, p_epoch);
    select w.* into v_row from pgdurable.workflows w where w.id = p_id;
    if v_row.failures + 1 < v_row.max_attempts then
        v_wait := least(v_row.retry_backoff * power(2, v_row.failures), 3600);
        update pgdurable.workflows
           set status = 'pending', error = p_error, failures = failures + 1, owner = null,
               lease_until = null, available_at = v_now + make_interval(secs => v_wait),
               updated_at = v_now
         where id = p_id;
        perform pgdurable.forget_ending_failure(p_id, p_error);
        perform pgdurable.make_ready(p_id);
        if v_wait = 0 then
            perform pgdurable.notify_queue(v_row.queue);
        end if;
        return;
    end if;
    update pgdurable.workflows
       set status = p_status, output = p_output, error = p_error, owner = null,
           lease_until = null, finished_at = v_now, updated_at = v_now,
           failures = failures + (p_status = 'failed')::integer
     where id = p_id;
end
$$;

-- Cancelling a queued run also takes it out of the ready table.
create or replace function pgdurable.cancel(p_id text) returns text
language plpgsql as $$
declare
    v_status text;
    v_now    timestamptz := pgdurable.now();
begin
    select status into v_status from pgdurable.workflows where id = p_id for update;
    if not found then
        perform pgdurable.raise_error('PD004', format('workflow %L does not exist', p_id));
    end if;
    if v_status in ('pending', 'running') then
        update pgdurable.workflows
           set status = 'cancelled', owner = null, lease_until = null, finished_at = v_now,
               updated_at = v_now
         where id = p_id;
        delete from pgdurable.ready where workflow_id = p_id;
        return 'cancelled';
    end if;
    return v_status;
end
$$;

-- Queues with their limits and current counts, for `pgdurable queues list`.
create function pgdurable.queue_stats()
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

-- Taking a queued run over directly (app.start / app.resume of its id) also removes it from the
-- ready table, so no worker claims it beside the new owner.
create or replace function pgdurable.acquire(
    p_id text, p_owner text, p_lease_seconds double precision)
returns table (id text, name text, status text, epoch integer, inputs jsonb)
language plpgsql as $$
#variable_conflict use_column
declare
    v_now timestamptz := pgdurable.now();
begin
    perform pgdurable.check_lease(p_lease_seconds);
    delete from pgdurable.ready r
     where r.workflow_id = p_id
       and exists (select 1 from pgdurable.workflows w
                    where w.id = p_id and w.status = 'pending');
    return query
    update pgdurable.workflows w
       set status = 'running', attempt = w.attempt + 1, owner = p_owner,
           lease_until = v_now + make_interval(secs => p_lease_seconds),
           started_at = coalesce(w.started_at, v_now), updated_at = v_now
     where w.id = p_id
       and (w.status = 'pending' or (w.status = 'running' and w.lease_until < v_now))
    returning w.id, w.name, w.status, w.attempt, w.inputs;
end
$$;

-- Finish many runs in one call (group commit: the executions of one process share a commit).
-- Successes take one set-based UPDATE; failures and anything the fast path could not finish go
-- through finish_workflow one by one. Returns one row per run that could not be finished, with
-- the SQLSTATE and message of the error (e.g. PD001 when fenced); the others succeeded.
create function pgdurable.finish_many(
    p_ids text[], p_epochs integer[], p_statuses text[], p_outputs jsonb[], p_errors jsonb[])
returns table (id text, sqlstate text, message text)
language plpgsql as $$
#variable_conflict use_column
declare
    v_now  timestamptz := pgdurable.now();
    v_done text[];
    v_item record;
begin
    with finished as (
        update pgdurable.workflows w
           set status = 'succeeded', output = i.output, error = null, owner = null,
               lease_until = null, finished_at = v_now, updated_at = v_now
          from unnest(p_ids, p_epochs, p_statuses, p_outputs)
               as i(id, epoch, status, output)
         where i.status = 'succeeded' and w.id = i.id and w.attempt = i.epoch
           and w.status = 'running'
        returning w.id, w.queue
    ), freed as (
        -- A finished run frees a slot of a concurrency-limited queue: wake the workers that
        -- may be waiting for it (one notification per queue and transaction).
        select pgdurable.notify_queue(q.name)
          from pgdurable.queues q
         where q.concurrency is not null and q.name in (select f.queue from finished f)
    )
    select coalesce(array_agg(f.id), array[]::text[]) into v_done
      from finished f, (select count(*) from freed) n;

    for v_item in
        select i.id, i.epoch, i.status, i.output, i.error
          from unnest(p_ids, p_epochs, p_statuses, p_outputs, p_errors)
               as i(id, epoch, status, output, error)
         where not (i.id = any(v_done))
    loop
        begin
            perform pgdurable.finish_workflow(v_item.id, v_item.epoch, v_item.status,
                                              v_item.output, v_item.error);
        exception when others then
            return query select v_item.id, sqlstate::text, sqlerrm;
        end;
    end loop;
end
$$;
