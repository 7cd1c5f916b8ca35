-- The statements of `pgdurable bench` (pgdurable/bench*.py). Same format as queries.sql: each
-- block starts with `-- name: <name>`. Everything here runs in the bench's own throw-away
-- database; the `bench` schema holds the raw-SQL yardstick and the rows the bench workflows
-- write, never anything of the user's.

-- name: create_tables
create schema bench;
-- The baseline's job table: the same lifecycle columns as pgdurable.workflows, nothing else.
create table bench.jobs (
    id          bigint generated always as identity primary key,
    payload     jsonb not null,
    status      text not null default 'pending',
    created_at  timestamptz not null default clock_timestamp(),
    started_at  timestamptz,
    finished_at timestamptz
) with (fillfactor = 80);
-- The baseline's small claim table: a claim deletes from it, like pgdurable.ready.
create table bench.ready (
    job_id bigint primary key
) with (fillfactor = 100);
-- Written by the `transaction` scenario's @app.transaction step.
create table bench.tx_rows (
    id      bigint generated always as identity primary key,
    payload text not null
);
-- Written by the raw one-commit-per-step loop of the `direct` scenario.
create table bench.step_rows (
    id      bigint generated always as identity primary key,
    step_no integer not null,
    payload text not null
);

-- name: session_setup
-- The bench's own session: a worker that failed to let go of a lock must not hang `reset`.
set lock_timeout = '30s'

-- name: reset
-- Between measurements: empty every table a scenario writes (cascade reaches the steps and any
-- other table that references workflows).
truncate pgdurable.workflows, pgdurable.ready, pgdurable.queue_starts,
         bench.jobs, bench.ready, bench.tx_rows, bench.step_rows cascade

-- name: checkpoint
-- Needs superuser or pg_checkpoint (PostgreSQL 15+); the bench skips it without.
checkpoint

-- name: create_database
create database {name}

-- name: drop_database
-- `with (force)` ends any connection still open (PostgreSQL 13+).
drop database if exists {name} with (force)

-- name: server_info
select current_setting('server_version') as server_version,
       current_setting('fsync') as fsync,
       current_setting('synchronous_commit') as synchronous_commit,
       current_setting('full_page_writes') as full_page_writes,
       current_setting('shared_buffers') as shared_buffers,
       current_setting('max_connections') as max_connections

-- name: database_exists
select exists (select 1 from pg_database where datname = %(name)s) as present

-- name: wal_lsn
select pg_current_wal_lsn()::text as lsn

-- name: wal_since
select pg_wal_lsn_diff(pg_current_wal_lsn(), %(lsn)s::pg_lsn)::bigint as bytes

-- name: listening
-- How many other sessions of this database wait on LISTEN (an idle worker's listener).
select count(*) as n from pg_stat_activity
 where datname = current_database() and pid <> pg_backend_pid()
   and query ilike %(query)s

-- name: raw_insert_many
-- The yardstick for enqueue_many: the same rows, one statement, no PL/pgSQL.
with ins as (
    insert into bench.jobs (payload) select unnest(%(payloads)s::jsonb[]) returning id
)
insert into bench.ready (job_id) select id from ins

-- name: raw_insert_one
with ins as (insert into bench.jobs (payload) values (%(payload)s) returning id)
insert into bench.ready (job_id) select id from ins

-- name: raw_insert_notify
-- One job for the idle-latency yardstick: written and announced in one transaction.
with ins as (insert into bench.jobs (payload) values (%(payload)s) returning id),
     r as (insert into bench.ready (job_id) select id from ins returning job_id)
select pg_notify('pgdurable_bench', ''), (select job_id from r) as id

-- name: raw_claim
-- Batched claim from the small table, the way pgdurable.claim does it.
with picked as (
    delete from bench.ready
     where job_id in (select job_id from bench.ready order by job_id
                      limit %(max)s for update skip locked)
    returning job_id
)
update bench.jobs j set status = 'running', started_at = clock_timestamp()
  from picked where j.id = picked.job_id
returning j.id, j.payload

-- name: raw_complete
update bench.jobs set status = 'done', finished_at = clock_timestamp() where id = %(id)s

-- name: raw_step
insert into bench.step_rows (step_no, payload) values (%(step_no)s, %(payload)s)

-- name: tx_insert
insert into bench.tx_rows (payload) values (%(payload)s)

-- name: tx_rows
select count(*) as n from bench.tx_rows

-- name: job_status
select status from bench.jobs where id = %(id)s

-- name: run_status
select status from pgdurable.workflows where id = %(id)s

-- name: ready_left
select (select count(*) from pgdurable.ready) + (select count(*) from bench.ready) as n

-- name: workflow_stats
-- Throughput window: first claim to last finish. Latencies in milliseconds, p50/p95/p99.
-- With `from_first_claim` (a backlog enqueued before the workers started), a run's wait is
-- counted from when it was enqueued or when the first worker began claiming, whichever is
-- later: worker start-up is not queueing delay.
with t as (
    select status = 'succeeded' as ok, started_at, finished_at,
           case when %(from_first_claim)s then greatest(created_at, min(started_at) over ())
                else created_at end as queued_at
      from pgdurable.workflows
)
select count(*) as total,
       count(*) filter (where ok) as ok,
       extract(epoch from max(finished_at) - min(started_at))::float8 as seconds,
       percentile_cont(array[0.5, 0.95, 0.99]) within group (
           order by extract(epoch from started_at - queued_at)::float8 * 1000)
           as enqueue_to_start,
       percentile_cont(array[0.5, 0.95, 0.99]) within group (
           order by extract(epoch from finished_at - queued_at)::float8 * 1000)
           as enqueue_to_finish,
       percentile_cont(array[0.5, 0.95, 0.99]) within group (
           order by extract(epoch from finished_at - started_at)::float8 * 1000)
           as start_to_finish
  from t

-- name: job_stats
-- The same for the baseline's jobs.
with t as (
    select status = 'done' as ok, started_at, finished_at,
           case when %(from_first_claim)s then greatest(created_at, min(started_at) over ())
                else created_at end as queued_at
      from bench.jobs
)
select count(*) as total,
       count(*) filter (where ok) as ok,
       extract(epoch from max(finished_at) - min(started_at))::float8 as seconds,
       percentile_cont(array[0.5, 0.95, 0.99]) within group (
           order by extract(epoch from started_at - queued_at)::float8 * 1000)
           as enqueue_to_start,
       percentile_cont(array[0.5, 0.95, 0.99]) within group (
           order by extract(epoch from finished_at - queued_at)::float8 * 1000)
           as enqueue_to_finish,
       percentile_cont(array[0.5, 0.95, 0.99]) within group (
           order by extract(epoch from finished_at - started_at)::float8 * 1000)
           as start_to_finish
  from t

-- name: unfinished
-- Why a measurement did not complete: runs by status, and the first error recorded.
select string_agg(status || ': ' || n, ', ' order by status) as statuses,
       (select error::text from pgdurable.workflows
         where error is not null order by created_at limit 1) as first_error
  from (select status, count(*) as n from pgdurable.workflows
         where status <> 'succeeded' group by status) s

-- name: step_gaps
-- Time between consecutive checkpoints of one run: the per-step cost of a direct workflow.
select percentile_cont(array[0.5, 0.95, 0.99]) within group (order by gap_ms) as step
  from (select extract(epoch from finished_at - lag(finished_at) over (
                   partition by workflow_id order by step_no))::float8 * 1000 as gap_ms
          from pgdurable.steps) s
 where gap_ms is not null

-- -- the `backlog` scenario (pgdurable/bench_backlog.py) -----------------------------------------

-- name: backlog_fill
-- One batch of the standing backlog, through pgdurable's own bulk enqueue (the same function
-- `Queue.enqueue_many` calls, ids generated by the server), at a lower priority than the
-- measured runs (priority 0): they stand queued, claimable, behind the measured ones.
select count(*)::bigint as n
  from pgdurable.enqueue_many(%(queue)s, %(name)s,
                              array_fill(%(inputs)s::jsonb, array[%(count)s::integer]),
                              p_priority => %(priority)s)

-- name: backlog_vacuum
-- After the fill: a backlog that has stood for a while has been vacuumed and analyzed by
-- autovacuum; doing it now keeps a just-triggered autovacuum of it out of the measurement.
vacuum (analyze) pgdurable.workflows, pgdurable.ready

-- name: backlog_vacuum_plain
-- While xmin is held: what (auto)vacuum can do about the churn (nothing, if the hold works).
vacuum pgdurable.workflows, pgdurable.ready

-- name: backlog_rows
select count(*) as n from pgdurable.ready where queue = %(queue)s and priority = %(priority)s

-- name: server_now
select pgdurable.now() as now

-- name: stats_flush
-- Our own session's pending table statistics go to shared memory now (PostgreSQL 15+), not up
-- to a second later: pg_stat_user_tables must count the rows this session just wrote.
select pg_stat_force_next_flush()

-- name: backlog_tables
-- Size and tuple counts of the two tables of the hot path. Sizes are the main fork only
-- (pg_relation_size) and all indexes (pg_indexes_size). n_live_tup / n_dead_tup are the
-- server's running estimates (each VACUUM and ANALYZE overwrites them with its own count).
select s.relname as "table", s.n_live_tup, s.n_dead_tup, s.n_tup_upd, s.n_tup_hot_upd,
       s.n_tup_del, s.autovacuum_count, s.autoanalyze_count,
       pg_relation_size(s.relid) as table_bytes,
       pg_indexes_size(s.relid) as index_bytes,
       (select jsonb_object_agg(i.indexrelname, pg_relation_size(i.indexrelid))
          from pg_stat_user_indexes i where i.relid = s.relid) as indexes
  from pg_stat_user_tables s
 where s.schemaname = 'pgdurable' and s.relname in ('ready', 'workflows')
 order by s.relname

-- name: backlog_functions
-- Calls and total time of the claim and group-commit functions (needs track_functions = 'pl'
-- in the sessions that call them: the workers).
select funcname as name, calls, total_time
  from pg_stat_user_functions
 where schemaname = 'pgdurable' and funcname in ('claim', 'finish_many')

-- name: track_functions_on
-- Only for the backlog scenario's workers (new sessions of the bench database); needs superuser.
alter database {name} set track_functions = 'pl'

-- name: track_functions_off
alter database {name} reset track_functions

-- name: claim_probe_setup
-- The settings pgdurable.claim runs with, for this transaction.
select set_config('enable_sort', 'off', true), set_config('enable_bitmapscan', 'off', true)

-- name: claim_probe
-- The candidate scan of pgdurable.claim (its FOR loop, bounded here by a LIMIT), explained
-- with the rows it would lock; run in a transaction that is rolled back. The time is computed
-- once, as claim's `v_now` is: a bare volatile pgdurable.now() would not be an index condition.
explain (analyze, buffers, format json)
select r.workflow_id, r.partition_key from pgdurable.ready r
 where r.queue = %(queue)s and r.available_at <= (select pgdurable.now())
   and r.name = any(%(names)s::text[])
 order by r.priority, r.available_at, r.seq
 limit %(limit)s
   for update skip locked

-- name: client_backends
-- The other client sessions of the bench database (to tell when exited workers' backends are
-- gone, and their statistics flushed).
select coalesce(array_agg(pid), array[]::integer[]) as pids from pg_stat_activity
 where datname = current_database() and pid <> pg_backend_pid()
   and backend_type = 'client backend'

-- name: xmin_hold
-- In a REPEATABLE READ transaction left open: its snapshot holds back the xmin horizon of the
-- bench database, so vacuum cannot remove any row version deleted or updated after it.
select pg_current_snapshot()::text as snapshot

-- name: xmin_held
-- The holder's xmin, and how many transaction ids were assigned since (its age).
select backend_xmin::text as xmin, age(backend_xmin) as age
  from pg_stat_activity where pid = %(pid)s

-- name: runs_done
-- Progress of the measured runs (enqueued at or after `since`).
select count(*) as total,
       count(*) filter (where status in ('succeeded', 'failed', 'cancelled')) as done
  from pgdurable.workflows where created_at >= %(since)s

-- name: runs_stats
-- workflow_stats, for the runs enqueued at or after `since` only (not the backlog, not earlier
-- rounds). Waits count from the later of the enqueue and the first claim.
with t as (
    select status = 'succeeded' as ok, started_at, finished_at,
           greatest(created_at, min(started_at) over ()) as queued_at
      from pgdurable.workflows
     where created_at >= %(since)s
)
select count(*) as total,
       count(*) filter (where ok) as ok,
       extract(epoch from max(finished_at) - min(started_at))::float8 as seconds,
       percentile_cont(array[0.5, 0.95, 0.99]) within group (
           order by extract(epoch from started_at - queued_at)::float8 * 1000)
           as enqueue_to_start,
       percentile_cont(array[0.5, 0.95, 0.99]) within group (
           order by extract(epoch from finished_at - queued_at)::float8 * 1000)
           as enqueue_to_finish,
       percentile_cont(array[0.5, 0.95, 0.99]) within group (
           order by extract(epoch from finished_at - started_at)::float8 * 1000)
           as start_to_finish
  from t

-- name: runs_unfinished
select string_agg(status || ': ' || n, ', ' order by status) as statuses,
       (select error::text from pgdurable.workflows
         where error is not null and created_at >= %(since)s
         order by created_at limit 1) as first_error
  from (select status, count(*) as n from pgdurable.workflows
         where status <> 'succeeded' and created_at >= %(since)s group by status) s

-- name: fanout_stats
-- The fan-out's parent (no parent_id) and its children: from the parent's first start to its
-- finish; the parent's wake-up latency from the last child's finish to its join being recorded
-- (the claim and replay that follow the wake-up included).
select (select status from pgdurable.workflows where parent_id is null) as status,
       (select count(*) from pgdurable.workflows
         where parent_id is not null and status = 'succeeded') as children_ok,
       extract(epoch from (select finished_at - started_at from pgdurable.workflows
                            where parent_id is null))::float8 as seconds,
       extract(epoch from (select s.finished_at from pgdurable.steps s
                            join pgdurable.workflows w on w.id = s.workflow_id
                           where w.parent_id is null and s.name = 'pgdurable.gather')
                          - (select max(finished_at) from pgdurable.workflows
                              where parent_id is not null))::float8 * 1000 as wake_ms
