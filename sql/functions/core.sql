-- Clock and checks
--
-- The one clock every timestamp of the schema goes through, the domain errors (SQLSTATE class
-- PD), and the checks the other functions share.

-- The current definition of each function, applied by `pgdurable migrate` whenever this file
-- changes. Change a function here. A table change, or a function whose signature or result
-- type changes (drop it there first), goes in a new sql/migrations/ file: see "SQL files" in
-- docs/explanation/design.md.

create or replace function pgdurable.now() returns timestamptz
language sql volatile as $$
    select coalesce(nullif(current_setting('pgdurable.now', true), '')::timestamptz,
                    clock_timestamp())
$$;

comment on function pgdurable.now() is
$$The one clock. Returns the setting `pgdurable.now` when it is set and non-empty, else
`clock_timestamp()`. `set pgdurable.now = '2030-01-01 00:00+00'` moves time for the session, `set
local` for the transaction, `reset pgdurable.now` restores the wall clock. Every timestamp and
lease comparison in the schema goes through it, and so do the tables' column defaults (so
migration 0001 creates it before the tables). Errors: none of its own (a setting that is not a
timestamp is PostgreSQL's invalid datetime error, SQLSTATE 22007).$$;

create or replace function pgdurable.raise_error(code text, message text, hint text default null)
returns void language plpgsql as $$
begin
    raise exception using errcode = code, message = message, hint = coalesce(hint, '');
end
$$;

comment on function pgdurable.raise_error(text, text, text) is
$$Internal helper. Raises `message` with SQLSTATE `code` (one of PD001-PD007, see the table at the
top of the SQL reference) and `hint` (empty when null). Every domain error of the schema is
raised through it.$$;

create or replace function pgdurable.check_lease(p_lease_seconds double precision) returns void
language plpgsql as $$
begin
    if p_lease_seconds is null or p_lease_seconds <= 0 or p_lease_seconds = 'Infinity' then
        perform pgdurable.raise_error('PD006', format('lease_seconds must be > 0, not %s',
                                                     coalesce(p_lease_seconds::text, 'NULL')));
    end if;
end
$$;

comment on function pgdurable.check_lease(double precision) is
$$Internal helper. Checks a lease length: PD006 (`lease_seconds must be > 0, not 0`) unless
`p_lease_seconds` is > 0 and finite: 0 or less would grant an expired lease, null or infinity an
endless one.$$;

create or replace function pgdurable.check_epoch(p_id text, p_epoch integer) returns void
language plpgsql as $$
declare
    v_attempt integer;
    v_status  text;
begin
    select attempt, status into v_attempt, v_status
      from pgdurable.workflows where id = p_id for share;
    if not found then
        perform pgdurable.raise_error('PD004', format('workflow %L does not exist', p_id));
    end if;
    if p_epoch is null or v_attempt is distinct from p_epoch or v_status <> 'running' then
        perform pgdurable.raise_error('PD001', format(
            'workflow %L: execution epoch %s is stale (current epoch %s, status %s)',
            p_id, p_epoch, v_attempt, v_status),
            'another worker took this run over after the lease expired');
    end if;
end
$$;

comment on function pgdurable.check_epoch(text, integer) is
$$The fencing check every write of an execution makes first. Reads run `p_id` `FOR SHARE`: PD004 if
it does not exist; PD001 (hint: another worker took this run over) unless `p_epoch` equals its
`attempt` and its status is `running`. The share lock makes a concurrent takeover (an `UPDATE` of
the row) wait until the caller's transaction ends, so a stale execution can never slip a write in
beside its successor.$$;
