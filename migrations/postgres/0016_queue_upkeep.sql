-- The queue under sustained load (issue 23). Every claim asks whether a pooled attempt waits;
-- most deployments queue none, and the question scanned every unclaimed attempt's index entry,
-- the dead ones of a burst included (3 ms a claim after 100,000 runs). This index holds only
-- pooled attempts waiting for a worker: empty, it answers at once.
CREATE INDEX task_attempts_pooled_waiting ON task_attempts (queue)
    WHERE state = 'running' AND worker IS NULL AND report IS NULL AND pool IS NOT NULL;

-- Attempts and runs are rewritten several times each on their way through the queue. With
-- PostgreSQL's default (vacuum at 20% of the table dead), a table of 200,000 attempts carried
-- 40,000 dead rows whose index entries each claim and count walked over. Vacuum at 1%.
ALTER TABLE task_attempts SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.05);
ALTER TABLE task_instances SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.05);
ALTER TABLE dag_runs SET (autovacuum_vacuum_scale_factor = 0.01, autovacuum_analyze_scale_factor = 0.05);
