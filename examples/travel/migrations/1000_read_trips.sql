-- The trips read model: one row per trip stream, kept by the `trips` projection.
CREATE TABLE read_trips (
    trip_id      text        PRIMARY KEY,
    status       text        NOT NULL,
    reason       text,
    flight       text        NOT NULL,
    seats        int4        NOT NULL,
    hotel        text        NOT NULL,
    rooms        int4        NOT NULL,
    amount_cents int8        NOT NULL,
    updated_at   timestamptz NOT NULL,
    version      int8        NOT NULL
);

-- GET /trips?status= pages through one status by trip id.
CREATE INDEX read_trips_status ON read_trips (status, trip_id);
