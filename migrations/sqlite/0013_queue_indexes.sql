-- Indexes for the two reads the queue makes all the time, each over the few rows it wants
-- rather than every running attempt. Without them, a run of 1,000 queued attempts spent
-- 1.5 ms on each claim (since 0010 added the priority, the claim order was a sort of every
-- running attempt) and 0.3 ms on each look for reports.

-- Attempts waiting for a worker, in the order workers claim them.
CREATE INDEX task_attempts_unclaimed ON task_attempts (priority DESC, started_at)
    WHERE state = 'running' AND worker IS NULL AND report IS NULL;

-- Attempts whose worker reported, for the executor waiting for them to record.
CREATE INDEX task_attempts_reported ON task_attempts (run_id)
    WHERE state = 'running' AND report IS NOT NULL;
