-- An outbox row's id is drawn only once its transaction has a transaction id. The relay
-- relies on it to skip the rows it already moved (see `Floor` in the relay): a row whose id
-- is below one the relay has seen committed was then written by a transaction that was
-- already running, and is in that snapshot's list of running transactions, so the relay
-- knows when it can no longer appear. An identity column draws its value before the insert
-- assigns the transaction id whenever that insert is the transaction's first write, so the
-- id now comes from a function that takes the transaction id first.
DO $$
DECLARE
    next_id bigint;
BEGIN
    EXECUTE format('SELECT last_value + 1 FROM %s', pg_get_serial_sequence('outbox', 'id'))
        INTO next_id;
    ALTER TABLE outbox ALTER COLUMN id DROP IDENTITY;
    EXECUTE format('CREATE SEQUENCE outbox_id_seq AS bigint START WITH %s OWNED BY outbox.id',
                   next_id);
END
$$;

CREATE FUNCTION outbox_next_id() RETURNS bigint LANGUAGE sql VOLATILE AS $$
    SELECT CASE WHEN pg_current_xact_id() IS NOT NULL THEN nextval('outbox_id_seq'::regclass) END
$$;

ALTER TABLE outbox ALTER COLUMN id SET DEFAULT outbox_next_id();
