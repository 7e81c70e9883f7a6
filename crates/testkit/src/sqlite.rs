//! SQLite's own counters for a connection's prepared statements.
//!
//! A statement whose query plan depends on a bound value (SQLite 3.47 and later read a
//! `LIMIT $n`'s value while planning) is marked expired each time that parameter is bound,
//! and the next step parses and plans it again: the statement cache then saves nothing.
//! Tests run the SQL that a hot path runs, twice or more, and ask how often each statement
//! was prepared again.

use std::ffi::CStr;

use libsqlite3_sys::{SQLITE_STMTSTATUS_REPREPARE, sqlite3_next_stmt, sqlite3_sql, sqlite3_stmt_status};
use sqlx::SqliteConnection;

/// Each statement `conn` holds prepared (sqlx's cache), with its SQL and how many times
/// SQLite prepared it again since it was first prepared.
pub async fn reprepares(conn: &mut SqliteConnection) -> Vec<(String, i32)> {
    let mut handle = conn.lock_handle().await.expect("lock the connection's handle");
    let db = handle.as_raw_handle().as_ptr();
    let mut out = vec![];
    // SAFETY: the handle is locked for this scope, so no other thread uses the connection;
    // sqlite3_next_stmt walks the statements it owns, none of which is finalized meanwhile,
    // and sqlite3_sql returns a NUL-terminated string owned by the statement.
    unsafe {
        let mut stmt = sqlite3_next_stmt(db, std::ptr::null_mut());
        while !stmt.is_null() {
            let sql = sqlite3_sql(stmt);
            let sql = if sql.is_null() { String::new() } else { CStr::from_ptr(sql).to_string_lossy().into_owned() };
            out.push((sql, sqlite3_stmt_status(stmt, SQLITE_STMTSTATUS_REPREPARE, 0)));
            stmt = sqlite3_next_stmt(db, stmt);
        }
    }
    out
}

/// A fresh in-memory SQLite database with `migrator`'s schema.
pub async fn memory(migrator: &sqlx::migrate::Migrator) -> SqliteConnection {
    use sqlx::Connection;
    let mut conn = SqliteConnection::connect("sqlite::memory:").await.expect("open an in-memory SQLite database");
    migrator.run(&mut conn).await.expect("migrate the in-memory database");
    conn
}

/// Fails unless `conn` holds exactly `count` prepared statements whose SQL contains
/// `needle`, none of them prepared again since it was first prepared.
pub async fn assert_prepared_once(conn: &mut SqliteConnection, needle: &str, count: usize) {
    let stmts = reprepares(conn).await;
    let found: Vec<_> = stmts.iter().filter(|(sql, _)| sql.contains(needle)).collect();
    assert_eq!(found.len(), count, "statements containing {needle:?} among {stmts:?}");
    assert!(found.iter().all(|(_, n)| *n == 0), "prepared again on every run: {found:?}");
}
