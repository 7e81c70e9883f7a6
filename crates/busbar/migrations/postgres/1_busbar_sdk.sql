-- busbar SDK tables, tracked in `_busbar_migrations` so they never clash with the
-- service's own migrations.
CREATE TABLE IF NOT EXISTS busbar_outbox (
    seq          BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    event_id     TEXT   NOT NULL UNIQUE,
    payload      TEXT   NOT NULL,
    created_at   BIGINT NOT NULL,
    published_at BIGINT
);
CREATE INDEX IF NOT EXISTS busbar_outbox_unpublished ON busbar_outbox (seq) WHERE published_at IS NULL;

CREATE TABLE IF NOT EXISTS busbar_inbox (
    event_id   TEXT   PRIMARY KEY,
    handled_at BIGINT NOT NULL
);

CREATE TABLE IF NOT EXISTS busbar_aggregate_versions (
    source  TEXT   NOT NULL,
    subject TEXT   NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (source, subject)
);

CREATE TABLE IF NOT EXISTS busbar_deferred (
    source      TEXT   NOT NULL,
    subject     TEXT   NOT NULL,
    version     BIGINT NOT NULL,
    event_id    TEXT   NOT NULL,
    payload     TEXT   NOT NULL,
    deferred_at BIGINT NOT NULL,
    PRIMARY KEY (source, subject, version)
);
