-- Ordering per subscription (see the SDK's ordering module).

-- Publisher side: the last version emitted of each event type, per aggregate. Every
-- event carries this map (before it) so subscribers of some types find their predecessor.
CREATE TABLE IF NOT EXISTS busbar_aggregate_heads (
    subject TEXT   NOT NULL,
    type    TEXT   NOT NULL,
    version BIGINT NOT NULL,
    PRIMARY KEY (subject, type)
);

-- Subscriber side: a parked event waits for its predecessor for this subscription
-- (`waiting_for`), which is not always `version - 1`. A parked event whose handler fails
-- when its turn comes stays parked with its own attempts and error.
ALTER TABLE busbar_deferred ADD COLUMN waiting_for BIGINT NOT NULL DEFAULT 0;
ALTER TABLE busbar_deferred ADD COLUMN attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE busbar_deferred ADD COLUMN last_error TEXT;
ALTER TABLE busbar_deferred ADD COLUMN retry_at BIGINT;
UPDATE busbar_deferred SET waiting_for = version - 1;
CREATE INDEX IF NOT EXISTS busbar_deferred_by_age ON busbar_deferred (deferred_at);

-- Backfill progress, so a backfill killed halfway resumes where it was.
CREATE TABLE IF NOT EXISTS busbar_backfill (
    id          BIGINT PRIMARY KEY,
    position    BIGINT NOT NULL,
    done        BIGINT NOT NULL DEFAULT 0,
    started_at  BIGINT NOT NULL,
    finished_at BIGINT
);
