-- Figures a task reports beyond its row count, as a JSON object: rows read, rows written per
-- table, and the like. NULL when the task reported none.
ALTER TABLE task_attempts ADD COLUMN metrics TEXT;
