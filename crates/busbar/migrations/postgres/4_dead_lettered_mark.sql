-- Attempts are also counted by a backfill, not only by live delivery on JetStream, and
-- both may give up on the same event. Whichever records the dead letter first marks the
-- row, so the other moves past the event instead of dead-lettering it a second time.
ALTER TABLE busbar_attempts ADD COLUMN dead_lettered BIGINT NOT NULL DEFAULT 0;
