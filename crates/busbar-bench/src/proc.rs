//! The event bus as a child process: finding its binary, a throwaway directory for its
//! database and log, starting it on a loopback port, waiting until it is ready, and
//! stopping it the way an operator would (SIGTERM, then SIGKILL if it hangs).

use std::{
    fs::File,
    net::{Ipv4Addr, TcpListener},
    path::{Path, PathBuf},
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use tokio::process::{Child, Command};

/// How to run the bus; shared by every scenario that needs one.
#[derive(clap::Args, Debug, Clone)]
pub struct BusOpts {
    /// The `event-bus` binary. Default: `event-bus` next to this program, which is where
    /// `cargo build --release -p event-bus` puts it.
    #[arg(long, value_name = "PATH")]
    pub bus_bin: Option<PathBuf>,

    /// Extra argument for the bus, repeatable, e.g. `--bus-arg=--sqlite-sync=normal` or
    /// `--bus-arg=--push-batch=1000`. The default is the bus's own defaults (fsync on
    /// every commit), which is what the figures describe unless this is given.
    #[arg(long = "bus-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub bus_args: Vec<String>,
}

/// Resolves the bus binary, or explains how to build it.
pub fn locate_bus(opts: &BusOpts) -> anyhow::Result<PathBuf> {
    let path = match &opts.bus_bin {
        Some(p) => p.clone(),
        None => std::env::current_exe()
            .context("cannot find this program's own path to look for event-bus beside it")?
            .parent()
            .context("this program's path has no directory")?
            .join("event-bus"),
    };
    if !path.is_file() {
        bail!(
            "event-bus binary not found at {}: run `cargo build --release -p event-bus` \
             (it lands next to busbar-bench), or pass --bus-bin PATH",
            path.display()
        );
    }
    Ok(path)
}

/// A directory under the system temp dir, removed when dropped (also on error paths).
pub struct TempDir(PathBuf);

impl TempDir {
    pub fn new(label: &str) -> anyhow::Result<TempDir> {
        let path = std::env::temp_dir().join(format!(
            "busbar-bench-{label}-{}-{}",
            std::process::id(),
            uuid::Uuid::now_v7().simple()
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(TempDir(path))
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A loopback port free right now. The bus binds it a moment later; another process
/// taking it in between is unlikely, and would show up as a clear startup error.
pub fn free_port() -> anyhow::Result<u16> {
    let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("cannot find a free port")?;
    Ok(l.local_addr()?.port())
}

pub struct Bus {
    child: Child,
    pid: u32,
    pub port: u16,
    log: PathBuf,
}

impl Bus {
    /// Starts the bus with its database and log in `dir` and waits for `/readyz`.
    pub async fn start(
        bin: &Path,
        opts: &BusOpts,
        dir: &Path,
        routes: &Path,
        client: &reqwest::Client,
    ) -> anyhow::Result<Bus> {
        let port = free_port()?;
        let log = dir.join("bus.log");
        let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = Command::new(bin);
        cmd.arg("--listen")
            .arg(format!("127.0.0.1:{port}"))
            .arg("--database-url")
            .arg(format!("sqlite://{}", dir.join("bus.db").display()))
            .arg("--routes")
            .arg(routes)
            .arg("--endpoint-template")
            .arg("http://127.0.0.1:{port}/events")
            .args(&opts.bus_args)
            // Figures must not depend on the caller's log filter (debug logging per request
            // would dominate), and loopback pushes must never go through a proxy.
            .env("RUST_LOG", "info")
            .env("NO_PROXY", "*")
            .env_remove("HTTP_PROXY")
            .env_remove("http_proxy")
            .env_remove("ALL_PROXY")
            .env_remove("all_proxy")
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            // If the benchmark dies without stopping the bus, do not leave it running.
            .kill_on_drop(true);
        let child = cmd.spawn().with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id().context("the bus exited at once")?;
        let mut bus = Bus { child, pid, port, log };
        if let Err(e) = bus.wait_ready(client).await {
            let tail = bus.log_tail(30);
            bus.stop().await;
            bail!("{e:#}\n--- last lines of the bus log ---\n{tail}");
        }
        Ok(bus)
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    async fn wait_ready(&mut self, client: &reqwest::Client) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let url = self.url("/readyz");
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the bus exited during startup ({status})");
            }
            let ok =
                client.get(&url).timeout(Duration::from_secs(1)).send().await.is_ok_and(|r| r.status().is_success());
            if ok {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!("the bus did not answer 200 on {url} within 10 s");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Fails if the bus is no longer running.
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(status) = self.child.try_wait()? {
            // The caller adds the log's tail to every error from a running bus.
            bail!("the bus exited unexpectedly ({status})");
        }
        Ok(())
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// CPU time (user + system, all threads) the bus has used so far, in seconds.
    pub fn cpu_secs(&self) -> Option<f64> {
        cpu_secs(&format!("/proc/{}/stat", self.pid))
    }

    /// SIGTERM, up to 10 s for a graceful exit, then SIGKILL.
    pub async fn stop(mut self) {
        stop_child(&mut self.child, self.pid, "the bus").await;
    }
}

/// Stops a child the way an operator would: SIGTERM, up to 10 s for a graceful exit,
/// then SIGKILL.
pub async fn stop_child(child: &mut Child, pid: u32, what: &str) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    // The `kill` utility sends SIGTERM without adding a libc dependency for one call.
    let termed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !termed {
        let _ = child.kill().await;
        return;
    }
    if tokio::time::timeout(Duration::from_secs(10), child.wait()).await.is_err() {
        eprintln!("{what} did not stop within 10 s of SIGTERM; killing it");
        let _ = child.kill().await;
    }
}

/// Resident memory of a process from `/proc/<pid>/status`, in MiB: (now, peak). `None`
/// when the process is gone or this is not Linux.
pub fn rss_mib(pid: u32) -> Option<(f64, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kib = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<f64>().ok())
    };
    Some((kib("VmRSS:")? / 1024.0, kib("VmHWM:")? / 1024.0))
}

/// Restarts `pid`'s resident-memory high-water mark (VmHWM) at its current RSS, so that a
/// later [`rss_mib`] shows the peak of what happened since (Linux's `clear_refs` 5).
pub fn reset_peak_rss(pid: u32) -> bool {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5").is_ok()
}

/// The 1, 5 and 15-minute load averages, as `uptime` prints them.
pub fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "unknown".into())
}

/// CPU seconds from a `/proc/<pid>/stat` file (Linux only; `None` elsewhere).
pub fn cpu_secs(stat_path: &str) -> Option<f64> {
    let text = std::fs::read_to_string(stat_path).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &text[text.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    // /proc reports in USER_HZ, which Linux fixes at 100 for user space on every arch.
    Some(ticks as f64 / 100.0)
}
