-- The latest report of each live stream (state, throughput, latency, gaps), written about once a
-- second by the process running it, so `orch streams` can show it from any other process.
CREATE TABLE stream_state (
    stream_id  TEXT PRIMARY KEY,
    owner      TEXT NOT NULL,
    state      TEXT NOT NULL,
    report     TEXT NOT NULL,
    updated_at TEXT NOT NULL
);
