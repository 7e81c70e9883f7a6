-- Portable SQL: runs on SQLite and PostgreSQL. Each post's comment array as the JSON text
-- the API answers with (see src/doc.rs). NULL until first needed: a post from before this
-- migration gets its array rendered from `comments` on its next use.
ALTER TABLE known_posts ADD COLUMN comments_doc TEXT;
