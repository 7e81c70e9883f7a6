-- Portable SQL: runs on SQLite and PostgreSQL.
-- This service's own copy of which posts exist, built from PostCreated.
CREATE TABLE known_posts (
    id TEXT PRIMARY KEY
);

CREATE TABLE comments (
    id      TEXT   PRIMARY KEY,
    post_id TEXT   NOT NULL,
    content TEXT   NOT NULL,
    status  TEXT   NOT NULL,
    version BIGINT NOT NULL
);
CREATE INDEX comments_by_post ON comments (post_id, id);
