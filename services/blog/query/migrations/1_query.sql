-- Portable SQL: runs on SQLite and PostgreSQL. The aggregated view, built from events.
CREATE TABLE posts (
    id    TEXT PRIMARY KEY,
    title TEXT NOT NULL
);

-- A comment may arrive before its post; it shows once the post does.
CREATE TABLE comments (
    id      TEXT PRIMARY KEY,
    post_id TEXT NOT NULL,
    content TEXT NOT NULL,
    status  TEXT NOT NULL
);
CREATE INDEX comments_by_post ON comments (post_id, id);
