-- pgdurable 0010: timeouts. `start_workflow`, `enqueue` and `enqueue_runs` take a trailing
-- `p_timeout_seconds` (default null: no timeout), which sets `workflows.timeout_at` on the
-- database clock. Their old signatures are dropped here and the new ones created by the
-- function files; every existing call (positional or named) still resolves, since the new
-- parameter is last and has a default.

drop function pgdurable.start_workflow(text, text, jsonb, text, double precision);
drop function pgdurable.enqueue(text, text, jsonb, text, integer, double precision, text, text,
                                timestamptz, integer, double precision);
drop function pgdurable.enqueue_runs(text, text, jsonb, integer, double precision, text,
                                     timestamptz, integer, double precision);
