-- Run history: one row per DAG run, per task instance and per task attempt.
-- Times are RFC 3339 UTC text with microseconds ("2026-11-22T04:00:00.000000Z"), so they sort
-- as text and read well in the sqlite3 shell.

CREATE TABLE dag_runs (
    run_id              TEXT PRIMARY KEY,
    dag_id              TEXT NOT NULL,
    run_type            TEXT NOT NULL CHECK (run_type IN ('scheduled', 'manual', 'backfill')),
    logical_date        TEXT NOT NULL,
    data_interval_start TEXT NOT NULL,
    data_interval_end   TEXT NOT NULL,
    conf                TEXT NOT NULL DEFAULT '{}',
    state               TEXT NOT NULL CHECK (state IN ('queued', 'running', 'success', 'failed')),
    queued_at           TEXT NOT NULL,
    started_at          TEXT,
    ended_at            TEXT,
    -- The process lease that executes the run; a dead owner means the run is orphaned.
    owner               TEXT,
    -- The DAG file as it was when the run started: a running run keeps its definition
    -- across edits of the file and across a restart of the scheduler.
    dag_source          TEXT,
    dag_path            TEXT
);

-- One scheduled or backfill run per logical date; manual runs may repeat a date.
CREATE UNIQUE INDEX dag_runs_one_per_interval
    ON dag_runs (dag_id, logical_date) WHERE run_type <> 'manual';
CREATE INDEX dag_runs_by_dag ON dag_runs (dag_id, queued_at);
CREATE INDEX dag_runs_by_state ON dag_runs (state);

CREATE TABLE task_instances (
    run_id        TEXT NOT NULL REFERENCES dag_runs (run_id) ON DELETE CASCADE,
    task_id       TEXT NOT NULL,
    -- The task's place in its DAG file, so listings follow the order the author wrote.
    position      INTEGER NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('scheduled', 'queued', 'running', 'success', 'failed',
                                                 'up_for_retry', 'upstream_failed', 'skipped')),
    try_number    INTEGER NOT NULL DEFAULT 0,
    next_retry_at TEXT,
    PRIMARY KEY (run_id, task_id)
);

CREATE TABLE task_attempts (
    run_id      TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    attempt     INTEGER NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('running', 'success', 'failed')),
    started_at  TEXT NOT NULL,
    ended_at    TEXT,
    duration_ms INTEGER,
    rows        INTEGER,
    error       TEXT,
    log_path    TEXT NOT NULL,
    -- The process group a command runs in, and its leader's start time, so a scheduler that
    -- recovers the attempt after a crash can kill what is left of it before retrying.
    pgid             INTEGER,
    pgid_start_ticks INTEGER,
    PRIMARY KEY (run_id, task_id, attempt),
    FOREIGN KEY (run_id, task_id) REFERENCES task_instances (run_id, task_id) ON DELETE CASCADE
);

-- `orch dags pause/unpause` overrides the `paused:` default of the DAG file.
CREATE TABLE dag_pause (
    dag_id     TEXT PRIMARY KEY,
    paused     INTEGER NOT NULL CHECK (paused IN (0, 1)),
    updated_at TEXT NOT NULL
);
