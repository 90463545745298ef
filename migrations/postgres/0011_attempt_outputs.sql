-- The small outputs a successful attempt published (`orch:output key=value`), as a JSON
-- object: downstream tasks read them as `{{ outputs.TASK.key }}`.
ALTER TABLE task_attempts ADD COLUMN outputs TEXT;
