-- The event store: the source of truth. UNIQUE (stream_id, stream_version) is the
-- optimistic-concurrency guard; message_id is unique across the whole system.
CREATE TABLE events (
    global_position bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL CHECK (stream_version > 0),
    message_id      uuid        NOT NULL UNIQUE,
    event_type      text        NOT NULL,
    schema_version  integer     NOT NULL DEFAULT 1,
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL,
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    UNIQUE (stream_id, stream_version)
);

-- Messages to publish, written in the same transaction as the events (and, later, saga
-- commands and replies). A row is deleted only after the transport acknowledged it.
CREATE TABLE outbox (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    shard         smallint    NOT NULL,
    topic         text        NOT NULL,
    partition_key text        NOT NULL,
    message_id    uuid        NOT NULL,
    envelope      jsonb       NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX outbox_shard_id ON outbox (shard, id);

-- Responses of commands sent with an Idempotency-Key: a repeat returns the stored response.
CREATE TABLE idempotency_keys (
    key          text        PRIMARY KEY,
    request_hash bytea       NOT NULL,
    status_code  integer,
    response     jsonb,
    created_at   timestamptz NOT NULL DEFAULT now()
);
