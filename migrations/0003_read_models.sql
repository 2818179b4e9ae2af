-- The shop's read models, kept by its projectors (sagaflow-projections). Each table has one row
-- per stream of one aggregate type, and `version` is the stream version the row reflects: a row
-- at version v is always the fold of that stream's events 1..=v, so a projector applies event v
-- only on top of v-1, skips what a row already reflects, and reads a missing tail from `events`.
-- Writers never move a row backwards (upserts are guarded by `version`).

-- Orders (stream `order-<order_id>`).
CREATE TABLE read_orders (
    order_id    uuid        PRIMARY KEY,
    customer_id uuid        NOT NULL,
    status      text        NOT NULL CHECK (status IN ('pending', 'confirmed', 'rejected', 'cancelled')),
    reason      text,
    -- [{"sku", "quantity", "unit_price_cents"}], as placed.
    lines       jsonb       NOT NULL,
    total_cents bigint      NOT NULL,
    -- recorded_at of the order_placed event, and of the last event applied.
    placed_at   timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL,
    version     bigint      NOT NULL CHECK (version > 0)
);
-- Keyset paging of GET /orders by order id, filtered by status or by customer.
CREATE INDEX read_orders_status ON read_orders (status, order_id);
CREATE INDEX read_orders_customer ON read_orders (customer_id, order_id);

-- Stock per SKU (stream `inventory-<sku>`); available = on_hand - reserved.
CREATE TABLE read_inventory (
    sku        text        PRIMARY KEY,
    on_hand    bigint      NOT NULL,
    reserved   bigint      NOT NULL,
    updated_at timestamptz NOT NULL,
    version    bigint      NOT NULL CHECK (version > 0)
) WITH (fillfactor = 80);

-- Money per customer (stream `account-<customer_id>`); available = balance - held.
CREATE TABLE read_accounts (
    customer_id   uuid        PRIMARY KEY,
    balance_cents bigint      NOT NULL,
    held_cents    bigint      NOT NULL,
    updated_at    timestamptz NOT NULL,
    version       bigint      NOT NULL CHECK (version > 0)
) WITH (fillfactor = 80);
