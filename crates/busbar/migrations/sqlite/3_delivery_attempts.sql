-- Attempts at handling an event that was delivered again (JetStream): recorded before each
-- attempt, so that a crash while handling it still counts, and only against the event
-- that was being handled, not against the others that were in flight with it.
CREATE TABLE IF NOT EXISTS busbar_attempts (
    event_id   TEXT   PRIMARY KEY,
    attempts   INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
