-- The outbox and the embedded log carry each envelope as the JSON text it was encoded to,
-- once, by the writer: the relay and the consumers pass it on or decode it, and PostgreSQL no
-- longer parses it into jsonb on every insert and prints it back on every read. Cast to
-- jsonb to query it (`envelope::jsonb ->> 'event_type'`).
ALTER TABLE outbox ALTER COLUMN envelope TYPE text USING envelope::text;
ALTER TABLE message_log ALTER COLUMN envelope TYPE text USING envelope::text;
