//! A whole app (the blog or the shop) as separate processes, started from the plan
//! `busbar up` uses ([`busbar_cli::plan`]): the repository's ServiceBus manifest, the bus as
//! `busbar __serve event-bus` and each service as its own program, wired by the same
//! `BUSBAR_*` variables. Only what a benchmark
//! must own differs: free loopback ports, a throwaway data directory, uniquely named
//! PostgreSQL databases or JetStream streams, and timing each process from spawn to ready.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context, bail};
use busbar::spec::TransportKind;
use busbar_cli::plan::{self, Options, Program};
use sqlx::{Connection, Executor, PgConnection};
use tokio::process::{Child, Command};

use crate::{
    bus_raw::TransportKind as Transport,
    clock,
    nats::{self, Nats},
    proc::{self, TempDir},
};

/// An app the benchmark runs: its manifest as the repository has it.
pub struct App {
    /// The ServiceBus's name in the manifest (replaced by a unique one per run).
    pub name: &'static str,
    pub manifest: &'static str,
    /// The ports the manifest gives each service, replaced by free ones.
    pub ports: &'static [(&'static str, u16)],
}

/// The blog, as `busbar up` runs it by default.
pub const BLOG: App = App {
    name: "blog",
    manifest: include_str!("../../../k8s/base/servicebus.yaml"),
    ports: &[("posts", 4000), ("comments", 4001), ("query", 4002), ("moderation", 4003)],
};

/// The shop (`busbar up -f k8s/shop/servicebus.yaml`).
pub const SHOP: App = App {
    name: "shop",
    manifest: include_str!("../../../k8s/shop/servicebus.yaml"),
    ports: &[("users", 4100), ("products", 4101), ("orders", 4102), ("user-products", 4103)],
};
/// Longest a process may take from spawn to `/readyz` 200.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Which systems an app scenario starts, shared by `blog` and `shop`: one per database and
/// transport.
#[derive(clap::Args, Debug)]
pub struct Systems {
    /// Databases to measure, comma-separated: `sqlite` (a file per service) and
    /// `postgres` (a database per service on --pg-url).
    #[arg(long, value_delimiter = ',', default_value = "sqlite,postgres")]
    pub backends: Vec<Backend>,

    /// Transports to measure, comma-separated: `builtin` (the event bus) and `jetstream`.
    #[arg(long, value_delimiter = ',', default_value = "builtin,jetstream")]
    pub transports: Vec<Transport>,

    /// The NATS server (JetStream enabled) for the jetstream runs; as for bus-raw.
    #[arg(long, env = "BUSBAR_TEST_NATS_URL", value_name = "URL")]
    pub nats_url: Option<String>,

    /// PostgreSQL admin URL for the postgres runs; each run creates its own databases
    /// and drops them at the end.
    #[arg(long, env = "BUSBAR_TEST_PG_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub pg_url: String,

    /// The `busbar` binary, which runs the bus (`busbar __serve event-bus`); the app's
    /// programs are found next to it. Default: `busbar` next to this program (`cargo build
    /// --release --workspace --bins`).
    #[arg(long, value_name = "PATH")]
    pub busbar_bin: Option<PathBuf>,
}

/// What every system of a scenario shares: the busbar binary and, for JetStream, NATS.
pub struct Prepared {
    pub bin: PathBuf,
    pub nats: Option<Nats>,
}

impl Systems {
    /// Drops repeated choices, finds busbar, and prepares NATS when a JetStream run is asked.
    pub async fn prepare(&mut self) -> anyhow::Result<Prepared> {
        self.backends.dedup();
        self.transports.dedup();
        let bin = locate_busbar(self.busbar_bin.as_ref())?;
        let nats = match self.transports.contains(&Transport::Jetstream) {
            true => Some(Nats::prepare(self.nats_url.as_deref()).await?),
            false => None,
        };
        Ok(Prepared { bin, nats })
    }
}

impl Prepared {
    /// The options of one system of `app`.
    pub fn opts<'a>(
        &'a self,
        app: &'a App,
        systems: &'a Systems,
        backend: Backend,
        transport: Transport,
        run_id: &'a str,
    ) -> SystemOpts<'a> {
        SystemOpts {
            app,
            busbar_bin: &self.bin,
            backend,
            transport: kind(transport),
            nats_url: self.nats.as_ref().map(|n| n.info.url.as_str()),
            pg_url: &systems.pg_url,
            run_id,
            otlp_endpoint: None,
        }
    }
}

/// The SDK's transport kind of a command-line transport.
pub fn kind(t: Transport) -> TransportKind {
    match t {
        Transport::Builtin => TransportKind::Builtin,
        Transport::Jetstream => TransportKind::JetStream,
    }
}

pub fn transport_name(t: TransportKind) -> &'static str {
    match t {
        TransportKind::Builtin => "builtin",
        TransportKind::JetStream => "jetstream",
    }
}

/// Starts one system, runs `measure` on it, and stops it (also on error), deleting its
/// JetStream streams; a process that died meanwhile is named in the error.
pub async fn on_fresh_system<T>(
    opts: &SystemOpts<'_>,
    client: &reqwest::Client,
    nats: Option<&Nats>,
    measure: impl AsyncFnOnce(&mut System) -> anyhow::Result<T>,
) -> anyhow::Result<T> {
    let mut system = System::start(opts, client).await?;
    let streams = match opts.transport {
        TransportKind::JetStream => jetstream_cleanup(&system, nats).await,
        TransportKind::Builtin => None,
    };
    let result = measure(&mut system).await;
    let result = match (result, system.check_alive()) {
        (Ok(r), Ok(())) => Ok(r),
        (Err(e), Err(dead)) => Err(e.context(format!("{dead:#}"))),
        (Err(e), Ok(())) => Err(e),
        (Ok(_), Err(dead)) => Err(dead),
    };
    system.stop().await;
    if let Some((js, names)) = streams {
        nats::delete_streams(&js, &names).await;
    }
    result
}

/// The streams the services create for this system's bus, noted for deletion whatever
/// happens (a server we started is thrown away anyway).
async fn jetstream_cleanup(
    system: &System,
    nats: Option<&Nats>,
) -> Option<(async_nats::jetstream::Context, Vec<String>)> {
    let nats = nats?;
    let names = vec![busbar::names::stream_name(&system.bus), busbar::names::dead_letter_stream_name(&system.bus)];
    match nats::connect(&nats.info.url, "busbar-bench cleanup").await {
        Ok(c) => {
            let js = async_nats::jetstream::new(c);
            if !nats.info.throwaway {
                nats::register(&js, &names);
            }
            Some((js, names))
        }
        Err(e) => {
            eprintln!("[busbar-bench] cannot connect to NATS to clean up later ({e:#}); delete {names:?} by hand");
            None
        }
    }
}

fn locate_busbar(explicit: Option<&PathBuf>) -> anyhow::Result<PathBuf> {
    let path = match explicit {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("cannot find this program's own path to look for busbar beside it")?
            .with_file_name("busbar"),
    };
    if !path.is_file() {
        bail!(
            "busbar binary not found at {}: run `cargo build --release -p busbar-cli` and the app's services \
             (they land next to busbar-bench), or pass --busbar-bin PATH",
            path.display()
        );
    }
    Ok(path)
}

/// Which database every process of the blog uses.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// One SQLite file per process in a temp dir (the embedded default).
    Sqlite,
    /// One database per process on the PostgreSQL server at --pg-url.
    Postgres,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Sqlite => "sqlite",
            Backend::Postgres => "postgres",
        }
    }
}

pub struct SystemOpts<'a> {
    pub app: &'a App,
    pub busbar_bin: &'a Path,
    pub backend: Backend,
    pub transport: TransportKind,
    /// NATS for the jetstream transport.
    pub nats_url: Option<&'a str>,
    /// PostgreSQL admin URL (a database the bench may connect to in order to create others).
    pub pg_url: &'a str,
    /// Unique per run: names databases and the bus (hence the JetStream stream).
    pub run_id: &'a str,
    /// Where every process exports its traces (OTLP/HTTP), if anywhere.
    pub otlp_endpoint: Option<&'a str>,
}

/// One running process of the blog.
pub struct Running {
    pub name: String,
    pub port: u16,
    pub pid: u32,
    child: Child,
    log: PathBuf,
    /// Spawn to the first `/readyz` 200, in ms.
    pub ready_ms: f64,
}

impl Running {
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn cpu_secs(&self) -> Option<f64> {
        proc::cpu_secs(&format!("/proc/{}/stat", self.pid))
    }

    /// (now, peak) resident memory in MiB.
    pub fn rss_mib(&self) -> Option<(f64, f64)> {
        proc::rss_mib(self.pid)
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

pub struct System {
    pub app: &'static str,
    /// In start order: the bus first (on the built-in transport), then the services.
    pub procs: Vec<Running>,
    /// The ServiceBus's name (on JetStream, it names the stream).
    pub bus: String,
    /// PostgreSQL databases to drop at the end.
    pg_dbs: Vec<String>,
    pg_url: String,
    dir: TempDir,
}

impl System {
    /// Starts every process of the blog in plan order, each waited for until ready (so
    /// each start-to-ready time is its own, not its neighbours').
    pub async fn start(opts: &SystemOpts<'_>, client: &reqwest::Client) -> anyhow::Result<System> {
        let app = opts.app;
        let dir = TempDir::new(app.name)?;
        let bus_name = format!("bench-{}", opts.run_id);
        let mut manifest = app
            .manifest
            .replace(&format!("metadata:\n  name: {}\n", app.name), &format!("metadata:\n  name: {bus_name}\n"));
        for (_, port) in app.ports {
            manifest = manifest.replace(&format!("port: {port}\n"), &format!("port: {}\n", proc::free_port()?));
        }
        let bus =
            busbar::spec::parse_manifest(&manifest).map_err(|e| anyhow::anyhow!("the {} manifest: {e}", app.name))?;
        if bus.name != bus_name {
            bail!("the {0} manifest no longer names its bus `{0}`; update the benchmark", app.name);
        }
        let spec_path = dir.path().join("servicebus.yaml");
        std::fs::write(&spec_path, &manifest).with_context(|| format!("cannot write {}", spec_path.display()))?;
        let db_prefix = format!("bench_{}_", opts.run_id);
        let options = Options {
            spec_path,
            data_dir: dir.path().to_owned(),
            bus_port: proc::free_port()?,
            database_url_template: (opts.backend == Backend::Postgres)
                .then(|| format!("{}/{db_prefix}{{name}}", server_url(opts.pg_url))),
            transport: Some(opts.transport),
            nats_url: opts.nats_url.map(str::to_owned),
            // As `busbar up` runs it: every request carries and is checked for a token.
            auth: Some(busbar_cli::credentials::ensure(dir.path())?),
            worker_threads: plan::worker_threads(),
        };
        // The app's programs are built next to busbar, where `busbar up` finds them too.
        let bin_dir = opts.busbar_bin.parent().map(Path::to_path_buf).unwrap_or_default();
        let find = |name: &str| Some(bin_dir.join(name)).filter(|p| p.is_file());
        let procs = plan::plan(&bus, &options, &busbar_cli::local::LocalRun::default(), find)
            .map_err(|problems| anyhow::anyhow!("cannot plan the {}: {}", app.name, problems.join("; ")))?;
        let mut system =
            System { app: app.name, procs: vec![], bus: bus_name, pg_dbs: vec![], pg_url: opts.pg_url.to_owned(), dir };
        if opts.backend == Backend::Postgres {
            let mut conn = PgConnection::connect(opts.pg_url)
                .await
                .with_context(|| format!("PostgreSQL is not reachable at {} (set --pg-url)", opts.pg_url))?;
            for p in &procs {
                let name = format!("{db_prefix}{}", p.name.replace('-', "_"));
                conn.execute(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .await
                    .with_context(|| format!("cannot create database {name}"))?;
                system.pg_dbs.push(name);
            }
            let _ = conn.close().await;
        }
        for p in &procs {
            let log = system.dir.path().join(format!("{}.log", p.name));
            let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
            let mut cmd = match &p.program {
                Program::Builtin(name) => {
                    let mut c = Command::new(opts.busbar_bin);
                    c.args(["__serve", name]);
                    c
                }
                Program::External(path) => Command::new(path),
            };
            cmd.args(&p.args)
                .envs(p.env.iter().cloned())
                // Loopback pushes and publishes must never go through a proxy.
                .env("NO_PROXY", "*")
                .env_remove("HTTP_PROXY")
                .env_remove("http_proxy")
                .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
                .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
                .stdin(Stdio::null())
                .stdout(out.try_clone()?)
                .stderr(out)
                .kill_on_drop(true);
            if let Some(endpoint) = opts.otlp_endpoint {
                cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint);
            }
            let t0 = clock::now_ns();
            let child = cmd.spawn().with_context(|| format!("cannot start {}", p.name))?;
            let pid = child.id().context("a process exited at once")?;
            let mut running = Running { name: p.name.clone(), port: p.port, pid, child, log, ready_ms: 0.0 };
            let ready = wait_ready(&mut running, client).await;
            running.ready_ms = clock::secs_between(t0, clock::now_ns()) * 1e3;
            let tail = running.log_tail(30);
            system.procs.push(running);
            if let Err(e) = ready {
                system.stop().await;
                bail!("{e:#}\n--- last lines of its log ---\n{tail}");
            }
        }
        Ok(system)
    }

    pub fn get(&self, name: &str) -> &Running {
        self.procs.iter().find(|p| p.name == name).unwrap_or_else(|| panic!("the {} has no process {name}", self.app))
    }

    /// Fails, with the log's tail, if any process has exited.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        for p in &mut self.procs {
            if let Some(status) = p.child.try_wait()? {
                bail!("{} exited unexpectedly ({status})\n--- last lines of its log ---\n{}", p.name, p.log_tail(30));
            }
        }
        Ok(())
    }

    /// Each process's CPU seconds so far, in `procs` order.
    pub fn cpu_secs(&self) -> Vec<Option<f64>> {
        self.procs.iter().map(Running::cpu_secs).collect()
    }

    /// Stops the services (newest first), then the bus, as `busbar up` does; drops the
    /// databases.
    pub async fn stop(&mut self) {
        for p in self.procs.iter_mut().rev() {
            let what = p.name.clone();
            proc::stop_child(&mut p.child, p.pid, &what).await;
        }
        if self.pg_dbs.is_empty() {
            return;
        }
        match PgConnection::connect(&self.pg_url).await {
            Ok(mut conn) => {
                for name in self.pg_dbs.drain(..) {
                    let sql = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
                    if let Err(e) = conn.execute(sqlx::AssertSqlSafe(sql)).await {
                        eprintln!("[{}] could not drop database {name} ({e}); drop it by hand", self.app);
                    }
                }
                let _ = conn.close().await;
            }
            Err(e) => eprintln!("[{}] could not drop databases {:?} ({e}); drop them by hand", self.app, self.pg_dbs),
        }
    }
}

async fn wait_ready(p: &mut Running, client: &reqwest::Client) -> anyhow::Result<()> {
    let url = p.url("/readyz");
    let deadline = tokio::time::Instant::now() + READY_TIMEOUT;
    loop {
        if let Some(status) = p.child.try_wait()? {
            bail!("{} exited during startup ({status})", p.name);
        }
        let ok = client.get(&url).timeout(Duration::from_secs(1)).send().await.is_ok_and(|r| r.status().is_success());
        if ok {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("{} did not answer 200 on {url} within {READY_TIMEOUT:?}", p.name);
        }
        // Short: start-to-ready is measured with this resolution.
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// `postgres://user@host:port` from an admin URL naming a database.
fn server_url(admin: &str) -> String {
    let (scheme, rest) = admin.split_once("://").unwrap_or(("postgres", admin));
    let authority = rest.split('/').next().unwrap_or(rest);
    format!("{scheme}://{authority}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_urls_keep_the_server_and_drop_the_database() {
        assert_eq!(server_url("postgres://postgres@127.0.0.1:5432/postgres"), "postgres://postgres@127.0.0.1:5432");
        assert_eq!(server_url("postgres://u:p@h/db?sslmode=disable"), "postgres://u:p@h");
    }

    #[test]
    fn the_manifests_still_have_the_ports_and_names_the_bench_replaces() {
        for app in [BLOG, SHOP] {
            assert!(app.manifest.contains(&format!("metadata:\n  name: {}\n", app.name)), "{}", app.name);
            for (service, port) in app.ports {
                assert!(app.manifest.contains(&format!("port: {port}\n")), "{} port {port}", app.name);
                assert!(app.manifest.contains(&format!("name: {service}\n")), "{} service {service}", app.name);
            }
        }
    }
}
