-- The relay reads and deletes a shard's rows by (shard, id), so that is the outbox's key. The
-- primary key on id alone cost one more index entry per message and served no query.
ALTER TABLE outbox DROP CONSTRAINT outbox_pkey;
DROP INDEX outbox_shard_id;
ALTER TABLE outbox ADD PRIMARY KEY (shard, id);
