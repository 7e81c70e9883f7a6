-- Portable SQL: runs on SQLite and PostgreSQL.
-- Orders' own copies, built from events: which users exist, and each product's price.
CREATE TABLE known_users (
    id TEXT PRIMARY KEY
);

CREATE TABLE known_products (
    id          TEXT   PRIMARY KEY,
    price_cents BIGINT NOT NULL
);

CREATE TABLE orders (
    id               TEXT   PRIMARY KEY,
    user_id          TEXT   NOT NULL,
    product_id       TEXT   NOT NULL,
    quantity         BIGINT NOT NULL,
    unit_price_cents BIGINT NOT NULL,
    status           TEXT   NOT NULL,
    version          BIGINT NOT NULL
);
