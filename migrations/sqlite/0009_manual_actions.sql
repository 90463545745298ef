-- What people did by hand (trigger, pause, cancel, clear, mark, backfill), who and from where:
-- the audit trail the web UI, the API and the CLI write and `runs show` reads.
CREATE TABLE manual_actions (
    id      INTEGER PRIMARY KEY AUTOINCREMENT,
    at      TEXT NOT NULL,
    dag_id  TEXT NOT NULL,
    -- NULL for actions on a whole DAG (pause, unpause, backfill).
    run_id  TEXT,
    task_id TEXT,
    action  TEXT NOT NULL,
    -- Who: the name given at sign-in, `api` for a bearer token, `local` on loopback without one.
    actor   TEXT NOT NULL,
    -- From where: the peer address of the request, or `cli`.
    source  TEXT NOT NULL,
    detail  TEXT
);
CREATE INDEX manual_actions_by_run ON manual_actions (run_id, id);

-- Set on a running run when someone asks to cancel it (who asked): the process executing it
-- stops its attempts and ends it failed.
ALTER TABLE dag_runs ADD COLUMN cancel_requested TEXT;

-- Backfills started through the API, so their progress can be asked for later.
CREATE TABLE backfills (
    backfill_id TEXT PRIMARY KEY,
    dag_id      TEXT NOT NULL,
    start_date  TEXT NOT NULL,
    end_date    TEXT NOT NULL,
    -- The logical dates it covers, from the first to the last (RFC 3339).
    first_logical_date TEXT NOT NULL,
    last_logical_date  TEXT NOT NULL,
    runs        INTEGER NOT NULL,
    created_at  TEXT NOT NULL,
    actor       TEXT NOT NULL
);
