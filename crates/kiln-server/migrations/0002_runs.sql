-- Runs, their records (one row per event, in order) and the result cache: kiln's metadata
-- store in SQL. Written for both SQLite and PostgreSQL.
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    plan TEXT NOT NULL,
    created_ms BIGINT NOT NULL
);

CREATE TABLE run_events (
    run_id TEXT NOT NULL REFERENCES runs (id),
    seq BIGINT NOT NULL,
    event TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);

CREATE TABLE cache_entries (
    cache_key TEXT PRIMARY KEY,
    entry TEXT NOT NULL
);
