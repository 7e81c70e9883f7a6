-- Portable SQL: runs on SQLite and PostgreSQL. Each post's comment array kept in segments of
-- up to 100 comments (src/store.rs), so that creating or moderating a comment rewrites one
-- segment instead of the whole array: `doc` holds the segment's entries (src/doc.rs) joined by
-- commas, and the array is `[`, the segments in order joined by commas, `]`.
CREATE TABLE comment_segments (
    post_id TEXT   NOT NULL,
    seg     BIGINT NOT NULL,
    doc     TEXT   NOT NULL,
    PRIMARY KEY (post_id, seg)
);
-- The segment holding each comment; NULL for a comment from before segments.
ALTER TABLE comments ADD COLUMN seg BIGINT;
-- The post's last segment and how many comments it holds (0, 0 for a post without comments).
-- NULL for a post from before segments: its segments are built from its rows on its next
-- write, which is why the whole-array copy is no longer needed.
ALTER TABLE known_posts ADD COLUMN last_seg BIGINT;
ALTER TABLE known_posts ADD COLUMN last_entries BIGINT;
ALTER TABLE known_posts DROP COLUMN comments_doc;
