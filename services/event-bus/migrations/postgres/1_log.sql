-- The durable event log, one cursor per subscriber, and the dead-letter store.
CREATE TABLE bus_events (
    seq         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id    TEXT   NOT NULL UNIQUE,
    type        TEXT   NOT NULL,
    payload     TEXT   NOT NULL,
    received_at BIGINT NOT NULL
);

CREATE TABLE bus_cursors (
    subscriber TEXT   PRIMARY KEY,
    position   BIGINT NOT NULL,
    attempts   BIGINT NOT NULL DEFAULT 0,
    last_error TEXT
);

CREATE TABLE bus_dead_letters (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscriber TEXT   NOT NULL,
    seq        BIGINT NOT NULL,
    event_id   TEXT   NOT NULL,
    type       TEXT   NOT NULL,
    payload    TEXT   NOT NULL,
    attempts   BIGINT NOT NULL,
    last_error TEXT   NOT NULL,
    dead_at    BIGINT NOT NULL,
    state      TEXT   NOT NULL DEFAULT 'dead'
);
CREATE INDEX bus_dead_letters_by_subscriber ON bus_dead_letters (subscriber, state, id);
