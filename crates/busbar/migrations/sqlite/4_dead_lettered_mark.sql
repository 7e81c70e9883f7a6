-- Attempts are also counted by a backfill, not only by live delivery on JetStream, and
-- both may give up on the same event at once. Recording the dead letter is claimed first
-- (dead_lettered = 1, at claimed_at) so that exactly one of them records it, then marked
-- done (2); the other moves past the event instead of dead-lettering it a second time. A
-- claim whose holder died is taken over once it is old.
ALTER TABLE busbar_attempts ADD COLUMN dead_lettered INTEGER NOT NULL DEFAULT 0;
ALTER TABLE busbar_attempts ADD COLUMN claimed_at INTEGER;
