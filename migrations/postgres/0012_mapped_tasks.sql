-- A task with `for_each:` is expanded when it is ready into one task instance per item,
-- `TASK[0]`, `TASK[1]`, ...: each has its own state, retries and logs. The mapped parent
-- keeps its own row, whose state sums up its instances'.
ALTER TABLE task_instances ADD COLUMN map_index INTEGER;
-- The item, as JSON, which the instance's templates read as `{{ item }}`.
ALTER TABLE task_instances ADD COLUMN map_item TEXT;
