-- Portable SQL: runs on SQLite and PostgreSQL.
CREATE TABLE products (
    id          TEXT   PRIMARY KEY,
    name        TEXT   NOT NULL,
    price_cents BIGINT NOT NULL,
    version     BIGINT NOT NULL
);
