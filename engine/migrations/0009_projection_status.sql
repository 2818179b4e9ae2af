-- The projection runtime's own table. Until every part owned its tables it was created by the
-- shop's 0003_read_models.sql; a database from then already has it, and this changes nothing.

-- The last rebuild of each projection. A projection without a row was never rebuilt. While a
-- rebuild runs, its process holds a session advisory lock on the projection; a row left in
-- 'rebuilding' without that lock is a rebuild whose process stopped.
CREATE TABLE IF NOT EXISTS projection_status (
    name             text        PRIMARY KEY,
    state            text        NOT NULL CHECK (state IN ('idle', 'rebuilding', 'failed')),
    started_at       timestamptz,
    finished_at      timestamptz,
    -- Events of the store folded so far by the rebuild, and how many it had to fold.
    events_processed bigint      NOT NULL DEFAULT 0,
    events_total     bigint,
    error            text,
    updated_at       timestamptz NOT NULL DEFAULT now()
);
