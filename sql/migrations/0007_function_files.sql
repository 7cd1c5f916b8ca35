-- pgdurable 0007: the record of the repeatable function files.
--
-- From here on the current definition of every function lives in sql/functions/<domain>.sql.
-- `pgdurable migrate` applies the pending migrations, then re-applies each function file whose
-- sha256 differs from the one recorded here. Migrations 0001-0006 still create the functions
-- they created (the tables' defaults call pgdurable.now(), and a migration sees the functions
-- as they were at its time); the function files then replace them.

create table pgdurable.repeatables (
    name       text primary key,             -- path below sql/, e.g. 'functions/queues.sql'
    sha256     text not null,
    applied_at timestamptz not null default now()
);
