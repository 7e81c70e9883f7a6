-- Portable SQL: runs on SQLite and PostgreSQL. Each post's view, rendered as JSON whenever
-- the post or one of its comments changes, so that `GET /posts` concatenates stored text
-- instead of joining and serialising on every read. Rows from before this migration have
-- NULL here; the service renders them when it starts (store::render_missing).
ALTER TABLE posts ADD COLUMN doc TEXT;
