-- Debugging and replay (issue 6).

-- GET /sagas/{saga_id}/timeline finds every event of one saga's correlation id.
CREATE INDEX events_correlation_id ON events ((metadata->>'correlation_id'));

-- When an operator last retried or discarded a parked message.
ALTER TABLE dead_letters ADD COLUMN resolved_at timestamptz;
