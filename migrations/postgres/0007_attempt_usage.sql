-- What each attempt used, from its process's rusage: peak resident memory and CPU time.
-- NULL for attempts that ran inside orch's own process (or before this migration).
ALTER TABLE task_attempts ADD COLUMN peak_rss_bytes BIGINT;
ALTER TABLE task_attempts ADD COLUMN cpu_ms BIGINT;
