//! A service's own database: one sqlx pool over SQLite (the embedded default) or
//! PostgreSQL, chosen by URL, with the SDK's tables migrated in.
//!
//! Transactions opened here know how to append to the outbox and wake the relay on
//! commit, which is what makes "state change + event" one atomic step.

use std::{collections::BTreeMap, path::Path, str::FromStr, sync::Arc, time::Duration};

use sqlx::{
    Any, AnyConnection, AnyPool, Executor, Row,
    any::{AnyConnectOptions, AnyPoolOptions},
    migrate::Migrator,
};
use tokio::sync::Notify;

use cloudevents::AttributesReader;

use crate::envelope::{self, CloudEvent, Event};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    Sqlite,
    Postgres,
}

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("unsupported database URL `{0}`: use sqlite://path/to/file.db or postgres://user@host/db")]
    UnsupportedUrl(String),
    #[error("cannot create the directory for SQLite file {path}: {source}")]
    CreateDir { path: String, source: std::io::Error },
    #[error("cannot connect to {url}: {source}")]
    Connect { url: String, source: sqlx::Error },
    #[error("migrating {what} failed: {source}")]
    Migrate { what: &'static str, source: sqlx::migrate::MigrateError },
    #[error(transparent)]
    Sql(#[from] sqlx::Error),
    /// An emit of a type the service did not declare (see `crate::contract`).
    #[error("{0}")]
    Undeclared(String),
}

impl DbError {
    /// Whether a UNIQUE constraint refused the write (on SQLite and PostgreSQL alike), e.g.
    /// a second row with a value that must be unique: a 409 for the caller, not a failure.
    pub fn is_unique_violation(&self) -> bool {
        matches!(self, DbError::Sql(sqlx::Error::Database(e)) if e.is_unique_violation())
    }
}

/// How durable a SQLite commit is. Both survive SIGKILL of the process (the WAL is in the
/// OS page cache at commit); only `Full` also survives power loss, at an fsync per commit.
///
/// Set per process with `BUSBAR_SQLITE_SYNC=normal|full` (services default to `normal`, the
/// built-in bus to `full`: the bus holds every service's events, so a power loss there costs
/// more than a service's last writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SqliteSync {
    Normal,
    Full,
}

impl std::str::FromStr for SqliteSync {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "normal" => Ok(SqliteSync::Normal),
            "full" => Ok(SqliteSync::Full),
            other => Err(format!(
                "`{other}` is not a SQLite sync mode: use `full` (fsync every commit: survives power loss) or \
                 `normal` (survives a killed process; a power loss may cost the last commits)"
            )),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DbOptions {
    pub max_connections: u32,
    pub sqlite_sync: SqliteSync,
    /// Create the SDK's outbox/inbox tables. Services want them; the bus does not.
    pub sdk_tables: bool,
}

impl Default for DbOptions {
    fn default() -> Self {
        Self { max_connections: 8, sqlite_sync: SqliteSync::Normal, sdk_tables: true }
    }
}

/// A pool over the service's database plus the outbox wake-up signal.
#[derive(Clone, Debug)]
pub struct Db {
    pool: AnyPool,
    /// Where transactions run: on SQLite a pool of one connection, on PostgreSQL `pool`.
    writer: AnyPool,
    backend: Backend,
    service: Arc<str>,
    /// For connections of its own outside the pools (e.g. the relay's leader lock).
    url: Arc<str>,
    relay_wake: Arc<Notify>,
    /// SQLite allows one writer at a time. Queueing writers here, in the process, wakes
    /// the next one the moment the lock is free; left to SQLite, a waiting writer polls
    /// with sleeps of up to 100 ms (its busy handler), which dominates latency under load.
    write_lock: Arc<tokio::sync::Mutex<()>>,
    /// What the service declared it publishes, when the service runtime opened it: emits
    /// are checked against it and stamped with their `dataschema`.
    declared: Option<Arc<crate::contract::Declared>>,
    /// The task that groups [`Db::write`]s, started by the first one.
    group: Arc<std::sync::OnceLock<crate::group_commit::Writer>>,
}

impl Db {
    /// Opens `url` for `service` (the CloudEvents `source` of what it emits) and applies
    /// the SDK's own migrations. SQLite files and their directories are created if missing.
    pub async fn connect(service: &str, url: &str, opts: DbOptions) -> Result<Db, DbError> {
        sqlx::any::install_default_drivers();
        let (backend, url) = normalize_url(url)?;
        let connect_opts =
            AnyConnectOptions::from_str(&url).map_err(|source| DbError::Connect { url: url.clone(), source })?;
        let sync = opts.sqlite_sync;
        let base = AnyPoolOptions::new()
            .max_connections(match backend {
                // SQLite has one writer at a time; more connections only add lock contention.
                Backend::Sqlite => opts.max_connections.min(4),
                Backend::Postgres => opts.max_connections,
            })
            .acquire_timeout(Duration::from_secs(30));
        let (pool_opts, writer_opts) = match backend {
            Backend::Sqlite => (
                sqlite_pool(base.clone(), sync, Some(READER_CACHE_KIB)),
                sqlite_pool(base.max_connections(1), sync, None),
            ),
            Backend::Postgres => (base.clone(), base),
        };
        let pool = pool_opts
            .connect_with(connect_opts.clone())
            .await
            .map_err(|source| DbError::Connect { url: redact(&url), source })?;
        let writer = match backend {
            // Every write on one connection. SQLite empties a connection's page cache
            // whenever another connection has written since its last transaction, so writes
            // taking turns over the pool's connections would each start by re-reading their
            // pages.
            Backend::Sqlite => writer_opts
                .connect_with(connect_opts)
                .await
                .map_err(|source| DbError::Connect { url: redact(&url), source })?,
            Backend::Postgres => pool.clone(),
        };
        let db = Db {
            pool,
            writer,
            backend,
            service: service.into(),
            url: url.as_str().into(),
            relay_wake: Arc::new(Notify::new()),
            write_lock: Default::default(),
            declared: None,
            group: Arc::default(),
        };
        if !opts.sdk_tables {
            return Ok(db);
        }
        let mut sdk = match backend {
            Backend::Sqlite => sqlx::migrate!("./migrations/sqlite"),
            Backend::Postgres => sqlx::migrate!("./migrations/postgres"),
        };
        sdk.dangerous_set_table_name("_busbar_migrations");
        sdk.run(&db.pool).await.map_err(|source| DbError::Migrate { what: "the busbar SDK tables", source })?;
        Ok(db)
    }

    /// Applies the service's own migrations, picking the set written for this backend.
    /// Services whose SQL is portable pass the same migrator twice.
    pub async fn migrate(&self, sqlite: &Migrator, postgres: &Migrator) -> Result<(), DbError> {
        let m = match self.backend {
            Backend::Sqlite => sqlite,
            Backend::Postgres => postgres,
        };
        m.run(&self.pool).await.map_err(|source| DbError::Migrate { what: "the service schema", source })
    }

    pub fn pool(&self) -> &AnyPool {
        &self.pool
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    pub fn service(&self) -> &str {
        &self.service
    }

    /// The database's URL (with its password: keep it out of logs; see [`redact`]).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// Emits through this handle (and its clones) are checked against `declared`.
    pub(crate) fn with_declared(mut self, declared: crate::contract::Declared) -> Db {
        self.declared = Some(Arc::new(declared));
        // A writer started before would check emits against what was declared before.
        self.group = Arc::default();
        self
    }

    pub(crate) fn relay_wake(&self) -> Arc<Notify> {
        self.relay_wake.clone()
    }

    /// Begins a write transaction; every write in this process should go through one.
    /// On SQLite it first queues on the process's write lock, then takes SQLite's lock up
    /// front (`BEGIN IMMEDIATE`): a read-then-write transaction that upgrades later can fail
    /// with SQLITE_BUSY when another writer got in between, which no busy timeout can cure.
    pub async fn begin(&self) -> Result<Tx, DbError> {
        let (inner, guard) = match self.backend {
            Backend::Sqlite => {
                let guard = self.write_lock.clone().lock_owned().await;
                (self.writer.begin_with("BEGIN IMMEDIATE").await?, Some(guard))
            }
            Backend::Postgres => (self.writer.begin().await?, None),
        };
        Ok(Tx { inner, db: self.clone(), emitted: Vec::new(), _write_lock: guard })
    }

    /// Runs `work` in a write transaction and commits it; returns what `work` returned,
    /// once its writes are committed. Writes that arrive while others are running share one
    /// transaction ([`crate::group_commit`]): one `BEGIN` and one `COMMIT` for the lot (and
    /// on SQLite one turn of the write lock). So `work` may run more than once (in a group
    /// that failed for another write's sake, then alone) and must have no effect outside
    /// its transaction; generate ids before calling.
    pub async fn write<T, F>(&self, work: F) -> Result<T, DbError>
    where
        T: Send + 'static,
        F: for<'t> Fn(&'t mut Tx) -> futures::future::BoxFuture<'t, Result<T, DbError>> + Send + Sync + 'static,
    {
        let writer = self.group.get_or_init(|| {
            // The writer's own handle has no writer: it never queues to itself.
            crate::group_commit::Writer::start(Db { group: Arc::default(), ..self.clone() })
        });
        let (job, answered) = crate::group_commit::Job::new(work);
        writer.submit(job, answered).await
    }

    /// Runs one writing statement by itself, outside an explicit transaction: the database
    /// makes it atomic on its own, in one round trip instead of three (begin, statement,
    /// commit). On SQLite it queues on the process's write lock like every write.
    pub async fn execute_write<'q>(
        &self,
        query: sqlx::query::Query<'q, Any, sqlx::any::AnyArguments>,
    ) -> Result<sqlx::any::AnyQueryResult, DbError> {
        let _turn = match self.backend {
            Backend::Sqlite => Some(self.write_lock.lock().await),
            Backend::Postgres => None,
        };
        Ok(query.execute(&self.writer).await?)
    }

    pub async fn close(&self) {
        self.writer.close().await;
        self.pool.close().await;
    }
}

/// A transaction on the service's database that can also emit events.
pub struct Tx {
    inner: sqlx::Transaction<'static, Any>,
    db: Db,
    /// Events emitted in this transaction, in order, not written yet: they go to the
    /// outbox at commit, all in one statement (see [`Tx::emit`]).
    emitted: Vec<Emitted>,
    /// Held until commit, rollback or drop (SQLite only).
    _write_lock: Option<tokio::sync::OwnedMutexGuard<()>>,
}

/// An outbox row to write at commit, and the aggregate head it moves, if any.
struct Emitted {
    event_id: String,
    payload: String,
    /// (subject, type, version): this version becomes the aggregate's last of its type.
    head: Option<(String, String, i64)>,
}

impl Tx {
    /// Appends `event` (version `version` of its aggregate) to the outbox in this
    /// transaction. It is published only if, and after, the transaction commits.
    ///
    /// The event carries the last version of each type emitted before it for its
    /// aggregate, so that subscribers of some types only know which earlier event to wait
    /// for (see [`crate::ordering`]).
    ///
    /// The outbox row is written by [`Tx::commit`], together with every other event of the
    /// transaction: a group of writes, or a batch of handled events, pays one statement for
    /// all its events instead of one each. A savepoint rolled back by the caller does not
    /// take back an event emitted after it; the SDK's consumer, which uses savepoints,
    /// takes back its own ([`Tx::emitted_mark`]).
    pub async fn emit<E: Event>(&mut self, event: &E, version: i64) -> Result<CloudEvent, DbError> {
        let dataschema = match &self.db.declared {
            Some(d) => Some(d.dataschema::<E>(self.db.service()).map_err(DbError::Undeclared)?),
            None => None,
        };
        let mut ev = envelope::build(self.db.service(), event, version);
        if let Some(uri) = dataschema {
            envelope::set_dataschema(&mut ev, uri);
        }
        if let Some(ctx) = crate::trace::current() {
            envelope::set_trace(&mut ev, &ctx);
        }
        let subject = event.aggregate_id();
        if let Some(prev) = self.heads_before(&subject, version).await? {
            envelope::set_predecessors(&mut ev, &prev);
        }
        self.append(&ev, Some((subject, E::TYPE.to_owned(), version)));
        Ok(ev)
    }

    /// The last version of each type emitted before `version` for aggregate `subject`.
    /// `None` for an aggregate with earlier versions this table never saw (emitted before
    /// it existed): the event then carries no map, and subscribers fall back to waiting
    /// for `version - 1`.
    async fn heads_before(&mut self, subject: &str, version: i64) -> Result<Option<BTreeMap<String, i64>>, DbError> {
        // Nothing comes before a first version: no need to look (most events in most apps
        // create their aggregate).
        if version == 1 {
            return Ok(Some(BTreeMap::new()));
        }
        let rows = sqlx::query("SELECT type, version FROM busbar_aggregate_heads WHERE subject = $1")
            .bind(subject)
            .fetch_all(&mut *self.inner)
            .await?;
        let mut heads = BTreeMap::new();
        for r in rows {
            let (t, v): (String, i64) = (r.try_get(0)?, r.try_get(1)?);
            heads.insert(t, v);
        }
        // What this transaction emitted is not in the table yet; it moved the heads since.
        for (s, t, v) in self.emitted.iter().filter_map(|e| e.head.as_ref()) {
            if s == subject {
                heads.insert(t.clone(), *v);
            }
        }
        heads.retain(|_, v| *v < version);
        Ok((!heads.is_empty()).then_some(heads))
    }

    /// Appends an already-built envelope to the outbox, as it is.
    pub async fn emit_envelope(&mut self, ev: &CloudEvent) -> Result<(), DbError> {
        self.append(ev, None);
        Ok(())
    }

    fn append(&mut self, ev: &CloudEvent, head: Option<(String, String, i64)>) {
        let payload = serde_json::to_string(ev).expect("CloudEvents serialize to JSON");
        self.emitted.push(Emitted { event_id: ev.id().to_owned(), payload, head });
    }

    /// How many events this transaction has emitted so far: take it before a savepoint, and
    /// [`Tx::forget_emitted_since`] it when rolling back to that savepoint.
    pub(crate) fn emitted_mark(&self) -> usize {
        self.emitted.len()
    }

    /// Takes back the events emitted since `mark` (their savepoint was rolled back).
    pub(crate) fn forget_emitted_since(&mut self, mark: usize) {
        self.emitted.truncate(mark);
    }

    /// Writes the emitted events to the outbox, in emit order, and moves the aggregate
    /// heads, in one round trip: one statement, or on SQLite one query of two.
    async fn write_emitted(&mut self) -> Result<(), DbError> {
        let now = now_millis();
        if let [one] = self.emitted.as_slice() {
            // One event (a lone request's write): plain arguments, no JSON to build or parse.
            return write_one(&mut self.inner, self.db.backend, one, now).await;
        }
        let rows: Vec<(&str, &str)> = self.emitted.iter().map(|e| (e.event_id.as_str(), e.payload.as_str())).collect();
        // One row per (subject, type), its last version: an upsert may not touch a row twice.
        let mut heads: BTreeMap<(&str, &str), i64> = BTreeMap::new();
        for (s, t, v) in self.emitted.iter().filter_map(|e| e.head.as_ref()) {
            heads.insert((s, t), *v);
        }
        let heads: Vec<(&str, &str, i64)> = heads.into_iter().map(|((s, t), v)| (s, t, v)).collect();
        let sql = match self.db.backend {
            // `ORDER BY key` inserts in array order, so seq follows emit order.
            Backend::Sqlite => {
                "INSERT INTO busbar_outbox (event_id, payload, created_at) \
                 SELECT value ->> 0, value ->> 1, $2 FROM json_each($1) ORDER BY key; \
                 INSERT INTO busbar_aggregate_heads (subject, type, version) \
                 SELECT value ->> 0, value ->> 1, value ->> 2 FROM json_each($3) WHERE true \
                 ON CONFLICT (subject, type) DO UPDATE SET version = excluded.version"
            }
            // A data-modifying CTE runs whether or not the statement reads it.
            Backend::Postgres => {
                "WITH head AS (INSERT INTO busbar_aggregate_heads (subject, type, version) \
                 SELECT h ->> 0, h ->> 1, CAST(h ->> 2 AS BIGINT) FROM json_array_elements(CAST($3 AS json)) AS h \
                 ON CONFLICT (subject, type) DO UPDATE SET version = excluded.version) \
                 INSERT INTO busbar_outbox (event_id, payload, created_at) \
                 SELECT e ->> 0, e ->> 1, $2 FROM json_array_elements(CAST($1 AS json)) WITH ORDINALITY AS r(e, n) \
                 ORDER BY n"
            }
        };
        sqlx::query(sql)
            .bind(serde_json::to_string(&rows).expect("strings serialise"))
            .bind(now)
            .bind(serde_json::to_string(&heads).expect("strings serialise"))
            .execute(&mut *self.inner)
            .await?;
        Ok(())
    }

    pub fn backend(&self) -> Backend {
        self.db.backend
    }

    /// Writes the emitted events to the outbox, commits, then wakes the outbox relay if
    /// anything was emitted.
    pub async fn commit(mut self) -> Result<(), DbError> {
        let emitted = !self.emitted.is_empty();
        if emitted {
            self.write_emitted().await?;
        }
        self.inner.commit().await?;
        if emitted {
            self.db.relay_wake.notify_one();
        }
        Ok(())
    }

    pub async fn rollback(self) -> Result<(), DbError> {
        Ok(self.inner.rollback().await?)
    }
}

/// [`Tx::write_emitted`] for a transaction that emitted one event: plain arguments.
async fn write_one(conn: &mut AnyConnection, backend: Backend, e: &Emitted, now: i64) -> Result<(), DbError> {
    macro_rules! outbox_insert {
        () => {
            "INSERT INTO busbar_outbox (event_id, payload, created_at) VALUES ($1, $2, $3)"
        };
    }
    macro_rules! head_upsert {
        () => {
            "INSERT INTO busbar_aggregate_heads (subject, type, version) VALUES ($4, $5, $6) \
             ON CONFLICT (subject, type) DO UPDATE SET version = excluded.version"
        };
    }
    let query = sqlx::query(match (&e.head, backend) {
        (None, _) => outbox_insert!(),
        // SQLite runs the statements of one query in turn, binding `$N` by number.
        (Some(_), Backend::Sqlite) => concat!(outbox_insert!(), "; ", head_upsert!()),
        // PostgreSQL takes one statement per query with arguments; a data-modifying CTE
        // runs whether or not the statement reads it.
        (Some(_), Backend::Postgres) => concat!("WITH head AS (", head_upsert!(), ") ", outbox_insert!()),
    });
    let mut query = query.bind(e.event_id.as_str()).bind(e.payload.as_str()).bind(now);
    if let Some((subject, ty, version)) = &e.head {
        query = query.bind(subject.as_str()).bind(ty.as_str()).bind(*version);
    }
    query.execute(conn).await?;
    Ok(())
}

impl std::ops::Deref for Tx {
    type Target = AnyConnection;
    fn deref(&self) -> &AnyConnection {
        &self.inner
    }
}

impl std::ops::DerefMut for Tx {
    fn deref_mut(&mut self) -> &mut AnyConnection {
        &mut self.inner
    }
}

/// The page cache of each of a SQLite database's reading connections, in KiB (SQLite's
/// default is about 2 MiB, and the writer keeps it). A connection's cache is emptied
/// whenever another connection has written since its last transaction, so under writes
/// a reader's cache is re-read from the OS's page cache anyway; yet each reader kept up to
/// 2 MiB once a large read had filled it. Measured on query holding 50,000 posts: peak RSS
/// over full reads about 41 -> 35 MiB, and the blog's closed loop and latencies no worse
/// (BENCHMARKS.md, "Memory: a smaller page cache for SQLite's readers").
const READER_CACHE_KIB: u32 = 256;

/// Options for a pool of SQLite connections: each one set up as the SDK needs it, its page
/// cache capped at `cache_kib` when given.
fn sqlite_pool(opts: AnyPoolOptions, sync: SqliteSync, cache_kib: Option<u32>) -> AnyPoolOptions {
    // A connection to a local file does not go stale; pinging it before every use would
    // cost a round trip to its worker thread per transaction.
    opts.test_before_acquire(false).after_connect(move |conn, _meta| {
        Box::pin(async move {
            if let Some(kib) = cache_kib {
                conn.execute(sqlx::AssertSqlSafe(format!("PRAGMA cache_size = -{kib}"))).await?;
            }
            conn.execute("PRAGMA journal_mode = WAL").await?;
            conn.execute("PRAGMA busy_timeout = 10000").await?;
            conn.execute(match sync {
                SqliteSync::Normal => "PRAGMA synchronous = NORMAL",
                SqliteSync::Full => "PRAGMA synchronous = FULL",
            })
            .await?;
            Ok(())
        })
    })
}

/// `$from, $from+1, ...` (`count` of them): for `IN (...)` lists in SQL that must run on
/// both backends. (sqlx's QueryBuilder writes `?` for the Any driver, which PostgreSQL
/// rejects.)
pub fn placeholders(from: usize, count: usize) -> String {
    (from..from + count).map(|i| format!("${i}")).collect::<Vec<_>>().join(", ")
}

/// `($from, ...), (...)`: `rows` tuples of `cols` placeholders, for multi-row INSERTs.
pub fn row_placeholders(from: usize, rows: usize, cols: usize) -> String {
    (0..rows).map(|r| format!("({})", placeholders(from + r * cols, cols))).collect::<Vec<_>>().join(", ")
}

/// Milliseconds since the Unix epoch, as the SDK and services store timestamps.
pub fn now_millis() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// Accepts `sqlite:`/`sqlite://` and `postgres://`/`postgresql://` URLs. SQLite files are
/// opened read-write-create, and their directory is created.
fn normalize_url(url: &str) -> Result<(Backend, String), DbError> {
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok((Backend::Postgres, url.to_owned()));
    }
    let Some(rest) = url.strip_prefix("sqlite://").or_else(|| url.strip_prefix("sqlite:")) else {
        return Err(DbError::UnsupportedUrl(url.to_owned()));
    };
    let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
    if path.is_empty() {
        return Err(DbError::UnsupportedUrl(url.to_owned()));
    }
    if path != ":memory:"
        && let Some(dir) = Path::new(path).parent().filter(|d| !d.as_os_str().is_empty())
    {
        std::fs::create_dir_all(dir).map_err(|source| DbError::CreateDir { path: path.to_owned(), source })?;
    }
    let query = if query.contains("mode=") {
        query.to_owned()
    } else if query.is_empty() {
        "mode=rwc".into()
    } else {
        format!("{query}&mode=rwc")
    };
    Ok((Backend::Sqlite, format!("sqlite://{path}?{query}")))
}

/// Hides a password in a URL before it reaches a log line or an error message.
pub fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let userinfo = &url[scheme_end + 3..at];
            match userinfo.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sqlite_urls_are_opened_read_write_create() {
        let (b, u) = normalize_url("sqlite:data/x.db").unwrap();
        assert_eq!(b, Backend::Sqlite);
        assert_eq!(u, "sqlite://data/x.db?mode=rwc");
        assert_eq!(normalize_url("sqlite:///tmp/x.db?mode=ro").unwrap().1, "sqlite:///tmp/x.db?mode=ro");
    }

    #[test]
    fn unknown_schemes_are_refused_with_a_hint() {
        let err = normalize_url("mysql://x").unwrap_err().to_string();
        assert!(err.contains("use sqlite://"), "{err}");
        assert!(normalize_url("sqlite:").is_err());
    }

    #[test]
    fn placeholders_are_numbered_for_both_backends() {
        assert_eq!(placeholders(3, 2), "$3, $4");
        assert_eq!(row_placeholders(1, 2, 3), "($1, $2, $3), ($4, $5, $6)");
        assert_eq!(placeholders(1, 0), "");
    }

    /// The readers' page cache is capped; the writer, whose cache stays valid from one of
    /// its transactions to the next, keeps SQLite's default. Both are in WAL mode.
    #[tokio::test]
    async fn sqlite_readers_have_a_small_page_cache_and_the_writer_the_default() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("cache.db").display());
        let db = Db::connect("test", &url, DbOptions::default()).await.unwrap();
        // (cache_size, journal_mode) of a connection.
        let pragmas = async |conn: &mut AnyConnection| -> (i64, String) {
            let cache: i64 = sqlx::query("PRAGMA cache_size").fetch_one(&mut *conn).await.unwrap().try_get(0).unwrap();
            let journal: String = sqlx::query("PRAGMA journal_mode").fetch_one(conn).await.unwrap().try_get(0).unwrap();
            (cache, journal)
        };
        // Every reader the pool opens, not only the first.
        let mut readers = vec![];
        for _ in 0..3 {
            readers.push(db.pool().acquire().await.unwrap());
        }
        for r in &mut readers {
            assert_eq!(pragmas(r).await, (-(READER_CACHE_KIB as i64), "wal".into()));
        }
        let mut tx = db.begin().await.unwrap();
        assert_eq!(pragmas(&mut tx).await, (-2000, "wal".into()), "SQLite's default for the writer");
        tx.rollback().await.unwrap();
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgres://u:secret@h/db"), "postgres://u:***@h/db");
        assert_eq!(redact("postgres://u@h/db"), "postgres://u@h/db");
        assert_eq!(redact("sqlite://x.db"), "sqlite://x.db");
    }
}
