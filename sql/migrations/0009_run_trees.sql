-- pgdurable 0009: run trees. A run started from inside a workflow is a child: `parent_id` names
-- its parent, and the parent's `joins` row counts its children that are not yet terminal, so the
-- last child to end wakes a waiting parent in that child's own final transaction. `timeout_at` is
-- a deadline for the whole run, waits included (distinct from `deadline`, the start-by time of a
-- queued run). `forked_from` names the run a fork copied its checkpoints from.

alter table pgdurable.workflows
    add column parent_id   text,
    add column timeout_at  timestamptz,
    add column forked_from text;

-- A run's children (listing, the tree, cancel cascades).
create index workflows_parent on pgdurable.workflows (parent_id) where parent_id is not null;
-- Runs with a timeout that are not finished, for the sweep.
create index workflows_timeout on pgdurable.workflows (timeout_at)
    where timeout_at is not null and status in ('pending', 'running');

-- One row per parent: how many of its children are not terminal, and what its waiting step
-- waits for (`wait_ids` null: any of its open children count).
create table pgdurable.joins (
    parent_id  text primary key references pgdurable.workflows (id) on delete cascade,
    open       integer not null default 0 check (open >= 0),
    wait_step  integer,
    wait_mode  text check (wait_mode in ('all', 'first')),
    wait_left  integer,
    wait_ids   text[]
) with (fillfactor = 50);  -- updated by every child that ends: room for HOT updates

-- A child that becomes terminal (or is resumed) updates its parent's joins row in the same
-- transaction, and wakes the parent when it was the last one it waited for. The function's
-- current definition is in sql/functions/trees.sql; this one only lets the trigger be created.
create function pgdurable.child_status_changed() returns trigger language plpgsql as $$
begin
    return null;
end
$$;

create trigger workflows_child_status_changed
    after update of status on pgdurable.workflows
    for each row
    when (new.parent_id is not null
          and (old.status in ('succeeded', 'failed', 'cancelled'))
              <> (new.status in ('succeeded', 'failed', 'cancelled')))
    execute function pgdurable.child_status_changed();
