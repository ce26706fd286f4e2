-- Idempotency keys of run submissions: a retried submission gets the run the first made.
CREATE TABLE idempotency_keys (
    idem_key TEXT PRIMARY KEY,
    run_id TEXT,
    created_ms BIGINT NOT NULL
);
