-- State a task kind keeps across runs, such as the last trade id fetched per symbol.
-- Written only after the data it describes is durable, so it can lag the data but never lead it.
CREATE TABLE task_state (
    namespace  TEXT NOT NULL,
    key        TEXT NOT NULL,
    value      TEXT NOT NULL,
    updated_at TEXT NOT NULL,
    PRIMARY KEY (namespace, key)
);
