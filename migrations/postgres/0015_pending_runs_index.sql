-- Back-pressure counts the runs queued or running, across DAGs and of one DAG, before each
-- trigger. With (state, dag_id) in one index both counts read index entries only, never the
-- rows, however long a burst made the backlog.
CREATE INDEX dag_runs_pending ON dag_runs (state, dag_id);
