//! One writer where order is made. Several processes on one database each run the same
//! code, but only one of them does a given job at a time (`role`): the outbox relay of a
//! service's replicas, or the built-in bus's log. The one doing it holds a lock; the
//! others stand by and try to take it every [`RETRY`]. When the holder dies, the lock goes
//! with it and a standby takes over.
//!
//! - PostgreSQL: a session-level advisory lock, on a connection of its own. A dead
//!   process's connection closes, and the server releases the lock.
//! - SQLite: an exclusive lock on a file beside the database (`<file>.<role>.lock`).
//!   The operating system releases it when the process dies, however it dies.
//!
//! Why a lock and not "everyone publishes, the bus drops duplicates": duplicates are only
//! dropped within the transport's window (two minutes on JetStream), every replica would
//! multiply the load, and per-aggregate order in the log would depend on who won each race.

use std::time::Duration;

use sqlx::{AnyConnection, Connection, Row};
use tokio_util::sync::CancellationToken;

use crate::db::{Backend, Db, DbError};

/// How often a standby tries to take the lead.
const RETRY: Duration = Duration::from_millis(250);

/// Proof of leadership: the connection or the file that holds the lock.
pub struct Lead {
    conn: Option<AnyConnection>,
    _file: Option<std::fs::File>,
}

impl Lead {
    /// Whether the lock is still held: its connection still answers. A leader checks this
    /// before each publish, so it stops within one batch of losing the lock.
    pub async fn holds(&mut self) -> bool {
        match &mut self.conn {
            None => true,
            Some(c) => sqlx::query("SELECT 1").execute(&mut *c).await.is_ok(),
        }
    }

    /// The connection that holds the lock, on PostgreSQL (`None`: a file lock, held for as
    /// long as this process lives). A statement that succeeds on it proves the lock was
    /// held when it ran, as [`Self::holds`] does, so a leader can read through it what it
    /// is about to publish instead of checking separately: one round trip per batch fewer.
    pub fn connection(&mut self) -> Option<&mut AnyConnection> {
        self.conn.as_mut()
    }
}

/// The advisory lock key for `role` of `service`, computed by the server so every replica
/// agrees on it.
fn lock_sql() -> &'static str {
    "SELECT pg_try_advisory_lock(hashtextextended($1, 0))"
}

/// Waits until this process leads `role` (e.g. `relay`) for `db`'s service, or `stop`.
/// Logs when it starts standing by and when it takes the lead.
pub async fn acquire(db: &Db, role: &str, stop: &CancellationToken) -> Option<Lead> {
    if db.backend() == Backend::Sqlite {
        return acquire_file(db, role, stop).await;
    }
    let key = format!("busbar:{}:{}", role.replace(' ', "-"), db.service());
    let mut said_standby = false;
    // One connection for all the tries; a new one only after it fails.
    let mut conn: Option<AnyConnection> = None;
    loop {
        match try_lock(db, &key, &mut conn).await {
            Ok(true) => {
                tracing::info!(role, "{role} leading: this process holds its lock");
                return Some(Lead { conn, _file: None });
            }
            Ok(false) if !said_standby => {
                tracing::info!(role, "{role} standing by: another process holds its lock");
                said_standby = true;
            }
            Ok(false) => {}
            Err(e) => {
                conn = None;
                tracing::warn!(role, error = %e, "cannot try the {role} lock; will retry");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop.cancelled() => return None,
        }
    }
}

async fn acquire_file(db: &Db, role: &str, stop: &CancellationToken) -> Option<Lead> {
    let Some(path) = sqlite_file(db.url()) else {
        // An in-memory database belongs to this process alone.
        return Some(Lead { conn: None, _file: None });
    };
    let lock_path = format!("{path}.{}.lock", role.replace(' ', "-"));
    let mut said_standby = false;
    loop {
        match std::fs::File::options().create(true).truncate(false).write(true).open(&lock_path) {
            Ok(file) => match file.try_lock() {
                Ok(()) => {
                    tracing::info!(role, lock = %lock_path, "{role} leading: this process holds its lock");
                    return Some(Lead { conn: None, _file: Some(file) });
                }
                Err(std::fs::TryLockError::WouldBlock) if !said_standby => {
                    tracing::info!(role, lock = %lock_path, "{role} standing by: another process holds its lock");
                    said_standby = true;
                }
                Err(std::fs::TryLockError::WouldBlock) => {}
                Err(std::fs::TryLockError::Error(e)) => {
                    tracing::warn!(role, lock = %lock_path, error = %e, "cannot lock; will retry")
                }
            },
            Err(e) => tracing::warn!(role, lock = %lock_path, error = %e, "cannot open the lock file; will retry"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = stop.cancelled() => return None,
        }
    }
}

/// The file of a `sqlite://` URL, `None` for an in-memory database.
fn sqlite_file(url: &str) -> Option<&str> {
    let rest = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:"))?;
    let path = rest.split('?').next().unwrap_or(rest);
    (!path.is_empty() && path != ":memory:" && !url.contains("mode=memory")).then_some(path)
}

async fn try_lock(db: &Db, key: &str, conn: &mut Option<AnyConnection>) -> Result<bool, DbError> {
    if conn.is_none() {
        *conn = Some(AnyConnection::connect(db.url()).await?);
    }
    let c = conn.as_mut().expect("connected above");
    Ok(sqlx::query(lock_sql()).bind(key).fetch_one(c).await?.try_get(0)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::DbOptions;

    #[test]
    fn the_lock_file_sits_beside_the_database() {
        assert_eq!(sqlite_file("sqlite:///tmp/x.db?mode=rwc"), Some("/tmp/x.db"));
        assert_eq!(sqlite_file("sqlite://data/x.db"), Some("data/x.db"));
        assert_eq!(sqlite_file("sqlite::memory:"), None);
        assert_eq!(sqlite_file("postgres://h/db"), None);
    }

    #[tokio::test]
    async fn on_sqlite_one_process_leads_and_the_next_takes_over_when_it_lets_go() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("s.db").display());
        let db = Db::connect("s", &url, DbOptions { sdk_tables: false, ..DbOptions::default() }).await.unwrap();
        let stop = CancellationToken::new();
        let first = acquire(&db, "outbox relay", &stop).await.expect("the first leads");
        // A second contender stands by while the first holds the lock.
        let second = tokio::spawn({
            let (db, stop) = (db.clone(), stop.clone());
            async move { acquire(&db, "outbox relay", &stop).await.is_some() }
        });
        tokio::time::sleep(RETRY * 3).await;
        assert!(!second.is_finished(), "the second must stand by while the first leads");
        drop(first);
        assert!(tokio::time::timeout(Duration::from_secs(5), second).await.unwrap().unwrap());
    }
}
