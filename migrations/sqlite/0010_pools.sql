-- Pools: named slot counts shared by every DAG (orch.yaml's `pools:`, written here by
-- `orch serve`), so that workers on any host hold pooled attempts to the pool's size.
CREATE TABLE pools (
    name  TEXT PRIMARY KEY,
    slots INTEGER NOT NULL
);

-- Each attempt's pool, the slots it takes, and its priority in the queue.
ALTER TABLE task_attempts ADD COLUMN pool TEXT;
ALTER TABLE task_attempts ADD COLUMN pool_slots INTEGER NOT NULL DEFAULT 1;
ALTER TABLE task_attempts ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
