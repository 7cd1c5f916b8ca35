-- pgdurable 0008: one suspension primitive. A suspended run is `pending` with no owner, waiting
-- until a time (`available_at`, with a `ready` row then), until woken for a named condition
-- (`waiting_for`, by `pgdurable.wake`), or whichever comes first. `waiting_for` says what a
-- pending run waits for ('sleep' for a durable sleep); a run that starts running is no longer
-- waiting, so claim and acquire clear it. The functions are in sql/functions/sleep.sql.

alter table pgdurable.workflows add column waiting_for text;
