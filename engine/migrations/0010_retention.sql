-- Retention deletes old rows in small batches, oldest first: these indexes find them without
-- reading the tables.
CREATE INDEX idempotency_keys_age ON idempotency_keys (created_at);
CREATE INDEX dead_letters_resolved ON dead_letters (resolved_at) WHERE status <> 'parked';
