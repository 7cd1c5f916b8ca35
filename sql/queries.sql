-- Every statement the Python library sends. Each block starts with `-- name: <name>`; the
-- loader in pgdurable/store/sql.py turns this file into a dict. State changes are calls of the
-- functions defined in functions/; the rest are reads.

-- name: migrations_bootstrap
create schema if not exists pgdurable;
create table if not exists pgdurable.migrations (
    version    integer primary key,
    name       text not null,
    sha256     text not null,
    applied_at timestamptz not null default now()
)

-- name: migrations_lock
-- Blocking: a second `migrate` waits for the first instead of racing it.
select pg_advisory_xact_lock(7301544015412283461)

-- name: migrations_applied
select version, name, sha256 from pgdurable.migrations order by version

-- name: migrations_record
insert into pgdurable.migrations (version, name, sha256) values (%(version)s, %(name)s, %(sha256)s)

-- name: repeatables_applied
select name, sha256 from pgdurable.repeatables order by name

-- name: repeatables_record
insert into pgdurable.repeatables (name, sha256) values (%(name)s, %(sha256)s)
on conflict (name) do update set sha256 = excluded.sha256, applied_at = excluded.applied_at

-- name: repeatables_forget
-- The records of function files this pgdurable no longer ships (renamed or merged).
delete from pgdurable.repeatables where not (name = any(%(names)s::text[]))

-- name: migrations_table_exists
select to_regclass('pgdurable.migrations') is not null as present

-- name: schema_version
select coalesce(max(version), 0) as version from pgdurable.migrations

-- name: start_workflow
select id, name, status, epoch, inputs, started, xact_id
  from pgdurable.start_workflow(%(id)s, %(name)s, %(inputs)s, %(owner)s, %(lease_seconds)s,
                                %(timeout_seconds)s)

-- name: acquire
select id, name, status, epoch, inputs
  from pgdurable.acquire(%(id)s, %(owner)s, %(lease_seconds)s)

-- name: resume
select id, name, status, epoch, inputs
  from pgdurable.resume(%(id)s, %(owner)s, %(lease_seconds)s)

-- name: heartbeat
-- `lost`: the runs among `ids` that exist and are no longer running under `owner` (cancelled,
-- timed out, taken over): the executor stops them before their next step.
select pgdurable.heartbeat(%(owner)s, %(ids)s::text[], %(lease_seconds)s) as renewed,
       array(select w.id from pgdurable.workflows w
              where w.id = any(%(ids)s::text[])
                and (w.status <> 'running' or w.owner is distinct from %(owner)s)) as lost

-- name: load_steps
select step_no, name, status, output, error from pgdurable.load_steps(%(id)s, %(epoch)s)

-- name: begin_step
select status, output, error, is_new
  from pgdurable.begin_step(%(id)s, %(epoch)s, %(step_no)s, %(name)s)

-- name: record_step
select status, output, error, inserted
  from pgdurable.record_step(%(id)s, %(epoch)s, %(step_no)s, %(name)s, %(status)s,
                             %(output)s, %(error)s)

-- name: fork
select pgdurable.fork(%(id)s, %(from_step)s, %(new_id)s, %(queue)s) as id

-- name: cancel
select pgdurable.cancel(%(id)s, %(cascade)s) as status

-- name: xact_status
-- 'committed', 'aborted' or 'in progress' for the transaction that created a run.
select pg_xact_status(%(xact_id)s::xid8) as status

-- name: get_workflow
select id, name, status, inputs, output, error, attempt, owner, lease_until, available_at,
       case when status = 'pending' then waiting_for end as waiting_for,
       parent_id, forked_from, created_at, started_at, finished_at, updated_at
  from pgdurable.workflows where id = %(id)s

-- name: list_workflows
select id, name, status, inputs, output, error, attempt, owner, lease_until, available_at,
       case when status = 'pending' then waiting_for end as waiting_for,
       parent_id, forked_from, created_at, started_at, finished_at, updated_at
  from pgdurable.workflows
 where (%(status)s::text is null or status = %(status)s::text)
   and (%(name)s::text is null or name = %(name)s::text)
   and (%(parent)s::text is null or parent_id = %(parent)s::text)
 order by created_at desc, id
 limit %(limit)s

-- name: workflow_tree
-- A run and its descendants, breadth first: at most `per_parent` children of each run (oldest
-- first), `max_depth` levels below the root and `limit` rows in all. The recursion is pulled
-- row by row, so the limit stops it early however big the tree is. `children` counts each
-- shown run's children (shown or not), so a client can say how many it left out.
with recursive tree as (
    select w.id, w.parent_id, w.name, w.status, w.created_at, 0 as depth, array[w.id] as path
      from pgdurable.workflows w where w.id = %(id)s
    union all
    select c.id, c.parent_id, c.name, c.status, c.created_at, t.depth + 1, t.path || c.id
      from tree t
     cross join lateral (select k.id, k.parent_id, k.name, k.status, k.created_at
                           from pgdurable.workflows k
                          where k.parent_id = t.id
                          order by k.created_at, k.id
                          limit %(per_parent)s) c
     where t.depth < %(max_depth)s and not c.id = any(t.path)
), shown as (
    select * from tree limit %(limit)s
)
select s.id, s.parent_id, s.name, s.status, s.created_at, s.depth,
       (select count(*) from pgdurable.workflows k where k.parent_id = s.id) as children
  from shown s
 order by s.depth, s.created_at, s.id

-- name: list_steps
select step_no, name, status, output, error, attempt, started_at, finished_at
  from pgdurable.steps where workflow_id = %(id)s order by step_no

-- name: declare_queue
select pgdurable.declare_queue(%(name)s, %(concurrency)s, %(worker_concurrency)s,
                               %(rate_limit)s, %(rate_period_seconds)s,
                               %(partition_concurrency)s)

-- name: declare_queue_recoveries
select pgdurable.declare_queue_recoveries(%(name)s, %(max_recoveries)s)

-- name: set_queue_paused
select pgdurable.set_queue_paused(%(name)s, %(paused)s) as paused

-- name: existing_queues
-- Which of these queues exist: a worker's start-up check (queue_stats would count the backlog).
select name from pgdurable.queues where name = any(%(names)s::text[])

-- name: queue_stats
select name, paused, concurrency, worker_concurrency, rate_limit, rate_period_seconds,
       partition_concurrency, ready, running
  from pgdurable.queue_stats()

-- name: enqueue
select pgdurable.enqueue(%(queue)s, %(name)s, %(inputs)s, %(id)s, %(priority)s,
                         %(delay_seconds)s, %(dedup_key)s, %(partition_key)s, %(deadline)s,
                         %(max_attempts)s, %(retry_backoff)s, %(timeout_seconds)s) as id

-- name: enqueue_many
-- `runs`: one JSON array of [id, inputs] pairs (see pgdurable.enqueue_runs).
select pgdurable.enqueue_runs(%(queue)s, %(name)s, %(runs)s, %(priority)s, %(delay_seconds)s,
                              %(partition_key)s, %(deadline)s, %(max_attempts)s,
                              %(retry_backoff)s, %(timeout_seconds)s) as written

-- name: claim
select id, name, epoch, inputs, queue, has_steps
  from pgdurable.claim(%(worker)s, %(queues)s::text[], %(max)s, %(lease_seconds)s,
                       %(names)s::text[])

-- name: release
select pgdurable.release(%(id)s, %(epoch)s)

-- name: requeue
select pgdurable.requeue(%(id)s) as status

-- name: listen
listen pgdurable

-- name: requeue_expired
select pgdurable.requeue_expired(%(queues)s::text[], %(limit)s) as requeued

-- name: declare_schedule
select pgdurable.declare_schedule(%(name)s, %(cron)s, %(workflow_name)s, %(queue)s, %(inputs)s,
                                  %(timezone)s, %(catch_up)s, %(minutes)s::smallint[],
                                  %(hours)s::smallint[], %(days)s::smallint[],
                                  %(months)s::smallint[], %(weekdays)s::smallint[],
                                  %(days_restricted)s, %(weekdays_restricted)s)

-- name: recover_sweep
select pgdurable.recover_sweep(%(limit)s, %(retention_seconds)s) as counts

-- name: recovery_leader_lock
-- Session-level: held for as long as the daemon's connection lives, released if it dies.
select pg_try_advisory_lock(7301544015412283462) as leader

-- name: list_schedules
select name, cron, workflow_name, queue, timezone, catch_up, last_tick, last_error,
       last_error_at
  from pgdurable.schedules order by name

-- name: sleep_step
select wake_at, remaining_seconds
  from pgdurable.sleep_step(%(id)s, %(epoch)s, %(step_no)s, %(seconds)s)

-- name: suspend
select pgdurable.suspend(%(id)s, %(epoch)s, %(until)s::timestamptz, %(wait_for)s::text)

-- name: wake
select pgdurable.wake(%(id)s, %(condition)s) as woken

-- name: commit_many
select kind, ord, status, output, error, inserted, sqlstate, message
  from pgdurable.commit_many(%(step_ids)s::text[], %(step_epochs)s::integer[],
                             %(step_nos)s::integer[], %(step_names)s::text[],
                             %(step_statuses)s::text[], %(step_outputs)s::jsonb[],
                             %(step_errors)s::jsonb[], %(ids)s::text[], %(epochs)s::integer[],
                             %(statuses)s::text[], %(outputs)s::jsonb[], %(errors)s::jsonb[])

-- name: start_children
-- `runs`: one JSON array of [id, inputs] pairs (see pgdurable.start_children).
select pgdurable.start_children(%(parent)s, %(epoch)s, %(step_no)s, %(queue)s, %(name)s,
                                %(runs)s, %(priority)s, %(delay_seconds)s, %(partition_key)s,
                                %(deadline)s, %(max_attempts)s, %(retry_backoff)s,
                                %(timeout_seconds)s) as ids

-- name: await_children
select ready, suspended, results
  from pgdurable.await_children(%(id)s, %(epoch)s, %(step_no)s, %(ids)s::text[], %(mode)s,
                                %(suspend)s)
