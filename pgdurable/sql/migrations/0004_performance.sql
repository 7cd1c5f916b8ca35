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
