-- Every claim asks whether a pooled attempt waits; most deployments queue none. This index
-- holds only pooled attempts waiting for a worker: empty, it answers at once rather than
-- walking every unclaimed attempt (as PostgreSQL's 0016 does too).
CREATE INDEX task_attempts_pooled_waiting ON task_attempts (queue)
    WHERE state = 'running' AND worker IS NULL AND report IS NULL AND pool IS NOT NULL;
