-- Runs may end `skipped` (an interval dropped because max_active_runs was full and catchup is
-- off) and carry a `note` saying why a run ended as it did when no task says so.
ALTER TABLE dag_runs DROP CONSTRAINT dag_runs_state_check;
ALTER TABLE dag_runs ADD CONSTRAINT dag_runs_state_check
    CHECK (state IN ('queued', 'running', 'success', 'failed', 'skipped'));
ALTER TABLE dag_runs ADD COLUMN note TEXT;

-- Attempts made before the run was last queued again: a rerun's retries count from there,
-- so it gets a fresh retry budget while attempt numbers go on.
ALTER TABLE task_instances ADD COLUMN attempt_base INTEGER NOT NULL DEFAULT 0;

-- The file's `paused:` when `orch dags pause/unpause` last set the flag: the flag holds until
-- the file's value changes, then the file wins.
ALTER TABLE dag_pause ADD COLUMN file_paused INTEGER;
