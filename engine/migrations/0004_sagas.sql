-- The deadline of every saga that waits for something (replies, or its next attempt). Rows
-- are claimed with FOR UPDATE SKIP LOCKED, so several engine processes share them.
CREATE TABLE saga_deadlines (
    saga_id   uuid        PRIMARY KEY,
    saga_type text        NOT NULL,
    due_at    timestamptz NOT NULL
);
CREATE INDEX saga_deadlines_due ON saga_deadlines (due_at);

-- The saga read model, kept by the orchestrator in the same transaction as the saga's events
-- (an inline projection of the saga-<id> streams).
CREATE TABLE sagas (
    saga_id        uuid        PRIMARY KEY,
    saga_type      text        NOT NULL,
    state          text        NOT NULL,
    current_step   text,
    data           jsonb       NOT NULL,
    failure        jsonb,
    steps          jsonb       NOT NULL,
    correlation_id uuid        NOT NULL,
    started_at     timestamptz NOT NULL,
    updated_at     timestamptz NOT NULL,
    version        bigint      NOT NULL
);
CREATE INDEX sagas_state_updated ON sagas (state, updated_at);
