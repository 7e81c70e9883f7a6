-- Portable SQL: runs on SQLite and PostgreSQL.
CREATE TABLE users (
    id      TEXT   PRIMARY KEY,
    email   TEXT   NOT NULL UNIQUE,
    name    TEXT   NOT NULL,
    version BIGINT NOT NULL
);
