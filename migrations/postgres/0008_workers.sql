-- Attempts reach workers through this table. The executor writes an attempt `running` with
-- its queue and what to run (`spec`); a worker serving that queue claims it (`worker`, a new
-- `claim_token`) and writes its outcome (`report`) only while its token is current, so a
-- worker declared lost can never overwrite the attempt that replaced its own. The executor
-- then records the attempt as usual and clears `spec` and `report`.
ALTER TABLE task_attempts ADD COLUMN queue TEXT;
ALTER TABLE task_attempts ADD COLUMN spec TEXT;
ALTER TABLE task_attempts ADD COLUMN worker TEXT;
ALTER TABLE task_attempts ADD COLUMN claim_token BIGINT NOT NULL DEFAULT 0;
ALTER TABLE task_attempts ADD COLUMN report TEXT;
-- The end of the attempt's log, so `orch logs` on any host reads an attempt run elsewhere.
ALTER TABLE task_attempts ADD COLUMN log_tail TEXT;

-- Running attempts are few among millions of finished ones: claims and reports look here.
CREATE INDEX task_attempts_running ON task_attempts (started_at) WHERE state = 'running';

-- Every orch process that executes runs or attempts, with its heartbeat: a process whose
-- heartbeat stops (kill -9, a lost host) is lost, its runs adopted and its attempts retried.
CREATE TABLE orch_processes (
    -- The process's lease id (PID-NANOS@HOST:DIR).
    id           TEXT PRIMARY KEY,
    -- serve, worker, run or backfill.
    role         TEXT NOT NULL,
    host         TEXT NOT NULL,
    pid          BIGINT NOT NULL,
    -- The queues its worker serves, comma-separated; NULL when it runs no worker.
    queues       TEXT,
    started_at   TEXT NOT NULL,
    heartbeat_at TEXT NOT NULL,
    -- Set when another process declared it lost; its heartbeat then fails and it stops.
    lost_at      TEXT
);

-- The one scheduler of a database: the `orch serve` holding this lease schedules, the others
-- stand by. The holder renews it; another takes it once it expires.
CREATE TABLE scheduler_lease (
    name        TEXT PRIMARY KEY,
    holder      TEXT NOT NULL,
    acquired_at TEXT NOT NULL,
    expires_at  TEXT NOT NULL
);
