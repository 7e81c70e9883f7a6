-- Portable SQL: runs on SQLite and PostgreSQL.
-- The view's own copies, built only from events.
CREATE TABLE users (
    id   TEXT PRIMARY KEY,
    name TEXT NOT NULL
);

CREATE TABLE products (
    id   TEXT PRIMARY KEY,
    name TEXT NOT NULL
);

CREATE TABLE orders (
    id         TEXT   PRIMARY KEY,
    user_id    TEXT   NOT NULL,
    product_id TEXT   NOT NULL,
    quantity   BIGINT NOT NULL,
    cancelled  BIGINT NOT NULL
);
CREATE INDEX orders_by_user ON orders (user_id, product_id);
