-- Portable SQL: runs on SQLite and PostgreSQL. A post's greatest comment id, read with its
-- tail under the post's row lock: the array is in id order, and a comment whose id sorts
-- before it (created at once with a later one that committed first) has the post's segments
-- rebuilt in id order instead of being appended out of place (src/store.rs). NULL for a
-- post without comments.
ALTER TABLE known_posts ADD COLUMN last_id TEXT;
UPDATE known_posts SET last_id = (SELECT max(c.id) FROM comments c WHERE c.post_id = known_posts.id);
