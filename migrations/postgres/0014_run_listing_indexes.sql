-- Run listings are ordered by (queued_at, run_id): newest first for people, oldest first for
-- the scheduler's queue. The indexes on (dag_id, queued_at) and on (state) left the order to a
-- sort: of each DAG's runs for a page of one DAG (0.5 ms with 500 runs), of every failed run
-- for a page of failures, of the whole history for a page of every DAG. With the order in the
-- indexes, a page reads its rows in order and stops at its limit.
DROP INDEX dag_runs_by_dag;
CREATE INDEX dag_runs_by_dag ON dag_runs (dag_id, queued_at, run_id);
DROP INDEX dag_runs_by_state;
CREATE INDEX dag_runs_by_state ON dag_runs (state, queued_at, run_id);
CREATE INDEX dag_runs_by_queued ON dag_runs (queued_at, run_id);
