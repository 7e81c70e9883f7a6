//! Throwaway PostgreSQL databases. The server comes from `BUSBAR_TEST_PG_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); `cargo xtask test` starts one if none
//! is running. A test that needs PostgreSQL fails, rather than skips, when it is absent.

use sqlx::{Connection, Executor, PgConnection};

pub fn admin_url() -> String {
    std::env::var("BUSBAR_TEST_PG_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// The server's URL without a database name, e.g. `postgres://postgres@127.0.0.1:5432`.
pub fn server_url() -> String {
    let admin = admin_url();
    admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or(admin)
}

/// A database created for one test and dropped (with FORCE) when this is dropped.
pub struct TempDb {
    pub name: String,
    pub url: String,
}

impl TempDb {
    pub async fn create() -> TempDb {
        Self::create_named(&format!("busbar_test_{}", uuid::Uuid::now_v7().simple())).await
    }

    /// A database with a chosen name (lower-case letters, digits and `_`).
    pub async fn create_named(name: &str) -> TempDb {
        let admin = admin_url();
        let name = name.to_owned();
        let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!("PostgreSQL is required for this test and is not reachable at {admin}: {e}. Run the suite with `cargo xtask test`, which starts one, or set BUSBAR_TEST_PG_URL.")
        });
        conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}"))).await.expect("create test database");
        let _ = conn.close().await;
        TempDb { url: format!("{}/{name}", server_url()), name }
    }
}

impl Drop for TempDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async context; use a private runtime on a plain thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                if let Ok(mut conn) = PgConnection::connect(&admin_url()).await {
                    let _ =
                        conn.execute(sqlx::AssertSqlSafe(format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))).await;
                    let _ = conn.close().await;
                }
            })
        })
        .join();
    }
}
