-- The embedded transport: a partitioned, append-only log with gap-free offsets per
-- (topic, partition). The relay is its only writer; message_log_heads hands out offsets, and
-- its row lock keeps concurrent relays of different outbox shards gap-free and ordered.
CREATE TABLE message_log (
    topic         text        NOT NULL,
    partition     integer     NOT NULL,
    "offset"      bigint      NOT NULL,
    partition_key text        NOT NULL,
    message_id    uuid        NOT NULL,
    envelope      jsonb       NOT NULL,
    appended_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (topic, partition, "offset")
);

CREATE TABLE message_log_heads (
    topic       text    NOT NULL,
    partition   integer NOT NULL,
    next_offset bigint  NOT NULL,
    PRIMARY KEY (topic, partition)
);

-- Consumer offsets of every transport live here, committed in the same transaction as the
-- consumer's effects.
CREATE TABLE consumer_offsets (
    consumer_group text        NOT NULL,
    topic          text        NOT NULL,
    partition      integer     NOT NULL,
    next_offset    bigint      NOT NULL,
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, topic, partition)
);

-- Messages a consumer group already applied: a redelivered message (the relay published it
-- twice) is skipped.
CREATE TABLE processed_messages (
    consumer_group text        NOT NULL,
    message_id     uuid        NOT NULL,
    processed_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer_group, message_id)
);
CREATE INDEX processed_messages_age ON processed_messages (processed_at);

-- Messages that kept failing: parked with their error so the partition moves on. An admin
-- retries or discards them.
CREATE TABLE dead_letters (
    id              bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    consumer_group  text        NOT NULL,
    topic           text        NOT NULL,
    partition       integer     NOT NULL,
    "offset"        bigint      NOT NULL,
    message_id      uuid        NOT NULL,
    partition_key   text        NOT NULL,
    envelope        jsonb       NOT NULL,
    error           text        NOT NULL,
    attempts        integer     NOT NULL,
    first_failed_at timestamptz NOT NULL,
    last_failed_at  timestamptz NOT NULL,
    status          text        NOT NULL DEFAULT 'parked' CHECK (status IN ('parked', 'retried', 'discarded')),
    UNIQUE (consumer_group, message_id)
);
