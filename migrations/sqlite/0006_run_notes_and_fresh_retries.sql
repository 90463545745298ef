-- no-transaction
-- Runs may end `skipped` (an interval dropped because max_active_runs was full and catchup is
-- off) and carry a `note` saying why a run ended as it did when no task says so. SQLite cannot
-- change a CHECK constraint in place, so dag_runs is rebuilt (SQLite's documented procedure:
-- foreign keys off, so dropping the old table cascades nothing, then everything in one
-- transaction).
PRAGMA foreign_keys = OFF;
BEGIN IMMEDIATE;

CREATE TABLE dag_runs_rebuilt (
    run_id              TEXT PRIMARY KEY,
    dag_id              TEXT NOT NULL,
    run_type            TEXT NOT NULL CHECK (run_type IN ('scheduled', 'manual', 'backfill')),
    logical_date        TEXT NOT NULL,
    data_interval_start TEXT NOT NULL,
    data_interval_end   TEXT NOT NULL,
    conf                TEXT NOT NULL DEFAULT '{}',
    state               TEXT NOT NULL CHECK (state IN ('queued', 'running', 'success', 'failed', 'skipped')),
    queued_at           TEXT NOT NULL,
    started_at          TEXT,
    ended_at            TEXT,
    -- The process lease that executes the run; a dead owner means the run is orphaned.
    owner               TEXT,
    -- The DAG file as it was when the run started: a run is resumed only with a loaded DAG
    -- file of exactly this text.
    dag_source          TEXT,
    dag_path            TEXT,
    -- Why the run ended as it did, when no task says so.
    note                TEXT
);
INSERT INTO dag_runs_rebuilt (run_id, dag_id, run_type, logical_date, data_interval_start,
        data_interval_end, conf, state, queued_at, started_at, ended_at, owner, dag_source, dag_path)
    SELECT run_id, dag_id, run_type, logical_date, data_interval_start, data_interval_end, conf,
        state, queued_at, started_at, ended_at, owner, dag_source, dag_path
    FROM dag_runs;
DROP TABLE dag_runs;
ALTER TABLE dag_runs_rebuilt RENAME TO dag_runs;
CREATE UNIQUE INDEX dag_runs_one_per_interval
    ON dag_runs (dag_id, logical_date) WHERE run_type <> 'manual';
CREATE INDEX dag_runs_by_dag ON dag_runs (dag_id, queued_at);
CREATE INDEX dag_runs_by_state ON dag_runs (state);

-- Attempts made before the run was last queued again: a rerun's retries count from there,
-- so it gets a fresh retry budget while attempt numbers go on.
ALTER TABLE task_instances ADD COLUMN attempt_base INTEGER NOT NULL DEFAULT 0;

-- The file's `paused:` when `orch dags pause/unpause` last set the flag: the flag holds until
-- the file's value changes, then the file wins.
ALTER TABLE dag_pause ADD COLUMN file_paused INTEGER;

COMMIT;
PRAGMA foreign_keys = ON;
