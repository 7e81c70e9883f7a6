-- Portable SQL: runs on SQLite and PostgreSQL. Change stamps for the copy of the view that
-- `GET /posts` answers from (busbar::view_cache): every write of a post's document takes the
-- next value of view_stamp.n inside its transaction, so a read asks only for the posts past
-- the last stamp it saw. One counter row: PostgreSQL's row lock makes writers take their
-- stamps one transaction at a time, in commit order. Posts from before have stamp 0.
ALTER TABLE posts ADD COLUMN stamp BIGINT NOT NULL DEFAULT 0;
CREATE INDEX posts_by_stamp ON posts (stamp, id);
CREATE TABLE view_stamp (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    n  BIGINT NOT NULL
);
INSERT INTO view_stamp (id, n) VALUES (1, 0);
