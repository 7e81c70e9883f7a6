-- The probe's own state. SQLite flavour: the application sequence is a rowid alias.

-- What this service emitted (the publisher's truth), written in the emitting transaction.
CREATE TABLE probe_emitted (
    event_id   TEXT PRIMARY KEY,
    type       TEXT NOT NULL,
    aggregate  TEXT NOT NULL,
    version    INTEGER NOT NULL,
    emitted_at INTEGER NOT NULL
);

-- The last version emitted per aggregate: the next emit takes version + 1.
CREATE TABLE probe_versions (
    aggregate TEXT PRIMARY KEY,
    version   INTEGER NOT NULL
);

-- Every application of a received event, in application order. Deliberately no unique
-- key on event_id: an event applied twice must show up twice.
CREATE TABLE probe_applied (
    seq        INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id   TEXT NOT NULL,
    type       TEXT NOT NULL,
    aggregate  TEXT NOT NULL,
    version    INTEGER,
    applied_at INTEGER NOT NULL
);
