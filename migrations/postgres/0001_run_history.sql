-- Run history in PostgreSQL: the same tables and columns as migrations/sqlite, so one set of
-- queries serves both. Times are RFC 3339 UTC text with microseconds
-- ("2026-11-22T04:00:00.000000Z"), which sorts as text exactly as it sorts in time.

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
    -- The DAG file as it was when the run started.
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
    position      BIGINT NOT NULL,
    state         TEXT NOT NULL CHECK (state IN ('scheduled', 'queued', 'running', 'success', 'failed',
                                                 'up_for_retry', 'upstream_failed', 'skipped')),
    try_number    BIGINT NOT NULL DEFAULT 0,
    next_retry_at TEXT,
    PRIMARY KEY (run_id, task_id)
);

CREATE TABLE task_attempts (
    run_id      TEXT NOT NULL,
    task_id     TEXT NOT NULL,
    attempt     BIGINT NOT NULL,
    state       TEXT NOT NULL CHECK (state IN ('running', 'success', 'failed')),
    started_at  TEXT NOT NULL,
    ended_at    TEXT,
    duration_ms BIGINT,
    rows        BIGINT,
    error       TEXT,
    log_path    TEXT NOT NULL,
    -- The process group a command runs in, and its leader's start time (see migrations/sqlite).
    pgid             BIGINT,
    pgid_start_ticks BIGINT,
    PRIMARY KEY (run_id, task_id, attempt),
    FOREIGN KEY (run_id, task_id) REFERENCES task_instances (run_id, task_id) ON DELETE CASCADE
);

-- `orch dags pause/unpause` overrides the `paused:` default of the DAG file (0 or 1, as in
-- SQLite, so both backends decode it alike).
CREATE TABLE dag_pause (
    dag_id     TEXT PRIMARY KEY,
    paused     BIGINT NOT NULL CHECK (paused IN (0, 1)),
    updated_at TEXT NOT NULL
);
