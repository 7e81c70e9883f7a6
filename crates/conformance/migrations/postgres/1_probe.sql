-- The probe's own state. PostgreSQL flavour: the application sequence is a BIGSERIAL.

-- What this service emitted (the publisher's truth), written in the emitting transaction.
CREATE TABLE probe_emitted (
    event_id   TEXT PRIMARY KEY,
    type       TEXT NOT NULL,
    aggregate  TEXT NOT NULL,
    version    BIGINT NOT NULL,
    emitted_at BIGINT NOT NULL
);

-- The last version emitted per aggregate: the next emit takes version + 1. The upsert's
-- row lock also serialises replicas emitting for one aggregate.
CREATE TABLE probe_versions (
    aggregate TEXT PRIMARY KEY,
    version   BIGINT NOT NULL
);

-- Every application of a received event, in application order. Deliberately no unique
-- key on event_id: an event applied twice must show up twice. The inbox serialises one
-- aggregate's transactions, so seq follows application order within an aggregate.
CREATE TABLE probe_applied (
    seq        BIGSERIAL PRIMARY KEY,
    event_id   TEXT NOT NULL,
    type       TEXT NOT NULL,
    aggregate  TEXT NOT NULL,
    version    BIGINT,
    applied_at BIGINT NOT NULL
);
