-- The durable event log, one cursor per subscriber, and the dead-letter store.
CREATE TABLE bus_events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT    NOT NULL UNIQUE,
    type        TEXT    NOT NULL,
    payload     TEXT    NOT NULL,
    received_at INTEGER NOT NULL
);

CREATE TABLE bus_cursors (
    subscriber TEXT    PRIMARY KEY,
    position   INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    last_error TEXT
);

CREATE TABLE bus_dead_letters (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    subscriber TEXT    NOT NULL,
    seq        INTEGER NOT NULL,
    event_id   TEXT    NOT NULL,
    type       TEXT    NOT NULL,
    payload    TEXT    NOT NULL,
    attempts   INTEGER NOT NULL,
    last_error TEXT    NOT NULL,
    dead_at    INTEGER NOT NULL,
    state      TEXT    NOT NULL DEFAULT 'dead'
);
CREATE INDEX bus_dead_letters_by_subscriber ON bus_dead_letters (subscriber, state, id);
