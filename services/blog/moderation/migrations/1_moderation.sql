-- Portable SQL: runs on SQLite and PostgreSQL.
-- One decision per comment, so a comment is moderated exactly once.
CREATE TABLE decisions (
    comment_id TEXT   PRIMARY KEY,
    status     TEXT   NOT NULL,
    decided_at BIGINT NOT NULL
);
