-- Portable SQL: runs on SQLite and PostgreSQL.
CREATE TABLE posts (
    id         TEXT   PRIMARY KEY,
    title      TEXT   NOT NULL,
    created_at BIGINT NOT NULL
);
