//! `busbar up`: start the planned processes, wait until each is ready, stream their logs
//! with a prefix, and stop them all cleanly on Ctrl-C or SIGTERM.

use std::{
    io::IsTerminal,
    process::Stdio,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use tokio::{
    io::{AsyncBufReadExt, BufReader},
    process::Command,
    sync::mpsc,
};

use crate::plan::{Proc, Program};

const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How often `busbar up` says who it is still waiting for.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);
const STOP_GRACE: Duration = Duration::from_secs(10);

/// Whether a service that exits is started again, as a cluster restarts a pod.
#[derive(Debug, Clone, Copy)]
pub struct Restart {
    pub enabled: bool,
}

/// Waits before restart `n` in a row: 1 s, 2 s, 4 s, ... up to 30 s, as a kubelet's
/// CrashLoopBackOff grows (it caps at 5 min; a laptop wants its service back sooner).
fn restart_backoff() -> busbar::Backoff {
    busbar::Backoff::exponential(Duration::from_secs(1), Duration::from_secs(30))
}

/// A process that stayed up this long was healthy: its next exit starts the backoff over.
const STABLE_AFTER: Duration = Duration::from_secs(60);

/// How many restarts in a row a process that ran for `uptime` is at after its exit.
fn restarts_in_a_row(before: u32, uptime: Duration) -> u32 {
    if uptime >= STABLE_AFTER { 1 } else { before + 1 }
}

/// An exit status as people read it: "exit code 1", "signal 9".
fn describe(status: &std::process::ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(sig)) => format!("signal {sig}"),
        _ => status.to_string(),
    }
}

struct Running {
    name: String,
    pid: u32,
    /// Not running: exited, and waiting for its restart (or not to be restarted).
    exited: bool,
    started: Instant,
    /// Restarts in a row, for the backoff.
    restarts: u32,
}

/// An exit: which process, and how it ended.
type Exit = (String, String);

/// Starts one planned process with its output prefixed; its exit is sent on `exited`.
fn spawn(p: &Proc, exe: &std::path::Path, prefix: String, exited: &mpsc::UnboundedSender<Exit>) -> Result<u32> {
    let mut cmd = match &p.program {
        Program::Builtin(name) => {
            let mut c = Command::new(exe);
            c.args(["__serve", name]);
            c
        }
        Program::External(path) => Command::new(path),
    };
    cmd.args(&p.args)
        .envs(p.env.iter().cloned())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        // Own process group: Ctrl-C reaches only busbar, which then stops the
        // services first and the bus last.
        .process_group(0);
    let mut child = cmd.spawn().with_context(|| match &p.program {
        Program::External(path) => format!("cannot start {} ({})", p.name, path.display()),
        Program::Builtin(_) => format!("cannot start {}", p.name),
    })?;
    let pid = child.id().unwrap_or(0);
    pump(child.stdout.take().expect("piped"), prefix.clone());
    pump(child.stderr.take().expect("piped"), prefix);
    let tx = exited.clone();
    let name = p.name.clone();
    tokio::spawn(async move {
        let status = child.wait().await.map(|s| describe(&s)).unwrap_or_else(|e| e.to_string());
        let _ = tx.send((name, status));
    });
    eprintln!("busbar: {} started (pid {pid})", p.name);
    Ok(pid)
}

pub async fn run(procs: Vec<Proc>, restart: Restart) -> Result<()> {
    for p in &procs {
        if std::net::TcpListener::bind(("127.0.0.1", p.port)).is_err() {
            bail!(
                "port {} for {} is already in use on 127.0.0.1: stop whatever uses it (perhaps an earlier `busbar up`), or change the port in the spec{}",
                p.port,
                p.name,
                if p.name == "event-bus" { " (for the bus: --bus-port)" } else { "" }
            );
        }
    }
    let exe = std::env::current_exe().context("cannot find the busbar executable")?;
    let color = std::io::stdout().is_terminal();
    let width = procs.iter().map(|p| p.name.len()).max().unwrap_or(8);
    let prefix_of = |i: usize| prefix(&procs[i].name, width, i, color);
    let (exited_tx, mut exited_rx) = mpsc::unbounded_channel::<Exit>();
    let mut running: Vec<Running> = vec![];

    let started = {
        let start_all = async {
            for (i, p) in procs.iter().enumerate() {
                let pid = spawn(p, &exe, prefix_of(i), &exited_tx)?;
                running.push(Running {
                    name: p.name.clone(),
                    pid,
                    exited: false,
                    started: Instant::now(),
                    restarts: 0,
                });
                // The bus first, and ready, so services publish into a running bus.
                if i == 0 {
                    wait_ready(p, &mut exited_rx).await?;
                }
            }
            for p in &procs[1..] {
                wait_ready(p, &mut exited_rx).await?;
            }
            Ok::<_, anyhow::Error>(())
        };
        tokio::pin!(start_all);
        tokio::select! {
            r = &mut start_all => r,
            _ = busbar::web::shutdown_signal() => Err(anyhow::anyhow!("interrupted while starting")),
        }
    };
    if let Err(e) = started {
        stop(&running, &mut exited_rx).await;
        return Err(e);
    }

    print_table(&procs);
    // Restarts that are due: the index of the process, sent after its backoff.
    let (due_tx, mut due_rx) = mpsc::unbounded_channel::<usize>();
    let shutdown = busbar::web::shutdown_signal();
    tokio::pin!(shutdown);
    let outcome = loop {
        tokio::select! {
            _ = &mut shutdown => break Ok(()),
            Some((name, status)) = exited_rx.recv() => {
                let Some(i) = running.iter().position(|r| r.name == name) else { continue };
                let r = &mut running[i];
                r.exited = true;
                if !restart.enabled {
                    break Err(anyhow::anyhow!("{name} exited unexpectedly ({status}); stopping everything (--no-restart)"));
                }
                r.restarts = restarts_in_a_row(r.restarts, r.started.elapsed());
                let delay = restart_backoff().delay(r.restarts);
                eprintln!(
                    "busbar: {name} exited ({status}); restarting in {} (restart {})",
                    human(delay),
                    r.restarts
                );
                let due = due_tx.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = due.send(i);
                });
            }
            Some(i) = due_rx.recv() => {
                let p = &procs[i];
                match spawn(p, &exe, prefix_of(i), &exited_tx) {
                    Ok(pid) => {
                        let r = &mut running[i];
                        (r.pid, r.exited, r.started) = (pid, false, Instant::now());
                        announce_ready(p.clone(), r.restarts);
                    }
                    // E.g. the program was deleted: try again after the next backoff.
                    Err(e) => {
                        let _ = exited_tx.send((p.name.clone(), format!("{e:#}")));
                    }
                }
            }
        }
    };
    if let Err(e) = &outcome {
        eprintln!("busbar: {e}");
    }
    stop(&running, &mut exited_rx).await;
    outcome
}

/// "1s", "30s", "500ms".
fn human(d: Duration) -> String {
    if d.subsec_millis() == 0 { format!("{}s", d.as_secs()) } else { format!("{}ms", d.as_millis()) }
}

/// Says when a restarted process answers /readyz again, so the log shows it came back.
fn announce_ready(p: Proc, restarts: u32) {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let url = format!("{}/readyz", p.url());
        let deadline = Instant::now() + READY_TIMEOUT;
        while Instant::now() < deadline {
            if let Ok(r) = client.get(&url).timeout(Duration::from_millis(500)).send().await
                && r.status().is_success()
            {
                eprintln!("busbar: {} is ready again (restart {restarts})", p.name);
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
}

async fn wait_ready(p: &Proc, exited: &mut mpsc::UnboundedReceiver<Exit>) -> Result<()> {
    wait_ready_at(&p.name, &p.url(), exited, PROGRESS_EVERY, |line| eprintln!("{line}")).await
}

/// Polls `base`'s `/readyz` until it answers 2xx. While it says it is backfilling, `say`
/// is told every `every` that `name` is still catching up, and why.
async fn wait_ready_at(
    name: &str,
    base: &str,
    exited: &mut mpsc::UnboundedReceiver<Exit>,
    every: Duration,
    mut say: impl FnMut(String),
) -> Result<()> {
    let client = reqwest::Client::new();
    let url = format!("{base}/readyz");
    // The timeout runs from the last sign of progress: a service catching up on a long
    // history is slow to be ready, not stuck.
    let (mut since, mut said, mut last_reason) = (Instant::now(), Instant::now(), String::new());
    loop {
        if let Ok(r) = client.get(&url).timeout(Duration::from_millis(500)).send().await {
            if r.status().is_success() {
                return Ok(());
            }
            let reason = r.json::<serde_json::Value>().await.ok().and_then(|v| v["error"].as_str().map(str::to_owned));
            if let Some(reason) = reason.filter(|r| r.starts_with("backfilling")) {
                if reason != last_reason {
                    since = Instant::now();
                }
                if said.elapsed() >= every {
                    say(format!("busbar: {name} is still catching up ({reason})"));
                    said = Instant::now();
                }
                last_reason = reason;
            }
        }
        if let Ok((name, status)) = exited.try_recv() {
            bail!("{name} exited before it was ready ({status}); see its log lines above");
        }
        if since.elapsed() > READY_TIMEOUT {
            bail!("{name} was not ready at {url} after {READY_TIMEOUT:?}; see its log lines above");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM to the services (newest first), then the bus; SIGKILL to any still running
/// after the grace period.
async fn stop(running: &[Running], exited: &mut mpsc::UnboundedReceiver<Exit>) {
    if running.is_empty() {
        return;
    }
    eprintln!("busbar: stopping {} processes", running.len());
    // A process waiting for its restart is not running.
    let mut alive: Vec<&Running> = running.iter().filter(|r| !r.exited).collect();
    // Anything that already reported its exit is gone.
    while let Ok((name, _)) = exited.try_recv() {
        alive.retain(|r| r.name != name);
    }
    for r in alive.iter().rev() {
        signal(r.pid, libc::SIGTERM);
    }
    let deadline = tokio::time::Instant::now() + STOP_GRACE;
    while !alive.is_empty() {
        match tokio::time::timeout_at(deadline, exited.recv()).await {
            Ok(Some((name, _))) => alive.retain(|r| r.name != name),
            _ => break,
        }
    }
    for r in &alive {
        eprintln!("busbar: {} did not stop within {STOP_GRACE:?}; killing it", r.name);
        signal(r.pid, libc::SIGKILL);
    }
    eprintln!("busbar: stopped; data is kept for the next `busbar up`");
}

fn signal(pid: u32, sig: i32) {
    if pid > 0 {
        // SAFETY: sending a signal to a child we started.
        unsafe {
            libc::kill(pid as i32, sig);
        }
    }
}

fn prefix(name: &str, width: usize, i: usize, color: bool) -> String {
    if color {
        const COLORS: [u8; 6] = [36, 33, 32, 35, 34, 31];
        format!("\x1b[{}m{name:>width$} |\x1b[0m ", COLORS[i % COLORS.len()])
    } else {
        format!("{name:>width$} | ")
    }
}

fn pump(stream: impl tokio::io::AsyncRead + Unpin + Send + 'static, prefix: String) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(stream).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            println!("{prefix}{line}");
        }
    });
}

fn print_table(procs: &[Proc]) {
    let w = procs.iter().map(|p| p.name.len()).max().unwrap_or(7).max(7);
    println!();
    println!("{:<w$}  {:<24}  {:<36}  SUBSCRIBES", "SERVICE", "URL", "PUBLISHES");
    for p in procs {
        let publishes = if p.name == "event-bus" { "(the bus)".to_owned() } else { p.publishes.join(",") };
        println!("{:<w$}  {:<24}  {:<36}  {}", p.name, p.url(), publishes, p.subscribes.join(","));
    }
    println!("\nAll ready. Press Ctrl-C to stop.\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn restarts_back_off_and_start_over_after_a_stable_run() {
        let waits: Vec<Duration> = (1..=7).map(|n| restart_backoff().delay(n)).collect();
        let secs: Vec<u64> = waits.iter().map(Duration::as_secs).collect();
        assert_eq!(secs, [1, 2, 4, 8, 16, 30, 30]);
        assert_eq!(restarts_in_a_row(0, Duration::from_millis(10)), 1, "the first exit is restart 1");
        assert_eq!(restarts_in_a_row(3, Duration::from_secs(2)), 4, "a crash loop backs off further");
        assert_eq!(restarts_in_a_row(5, STABLE_AFTER), 1, "a minute up starts over");
    }

    /// A service backfilling a long history: `busbar up` says which one is still catching
    /// up, with its progress, until it is ready.
    #[tokio::test]
    async fn says_which_service_is_still_catching_up() {
        use std::sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        };

        use axum::{http::StatusCode, routing::get};

        // The stand-in is backfilling until `busbar up` has said so, then ready.
        let said = Arc::new(AtomicBool::new(false));
        let flag = said.clone();
        let readyz = move || {
            let flag = flag.clone();
            async move {
                if flag.load(Ordering::SeqCst) {
                    (StatusCode::OK, "ready".to_owned())
                } else {
                    let body = serde_json::json!({"error": "backfilling from history: 1200 events so far"});
                    (StatusCode::SERVICE_UNAVAILABLE, body.to_string())
                }
            }
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(async move { axum::serve(listener, axum::Router::new().route("/readyz", get(readyz))).await });

        let (_tx, mut exited) = mpsc::unbounded_channel::<Exit>();
        let mut lines = vec![];
        let waited = wait_ready_at("query", &base, &mut exited, Duration::from_millis(100), |line| {
            lines.push(line);
            said.store(true, Ordering::SeqCst);
        });
        tokio::time::timeout(Duration::from_secs(20), waited).await.expect("ready within 20 s").unwrap();
        assert_eq!(lines, ["busbar: query is still catching up (backfilling from history: 1200 events so far)"]);
    }

    #[test]
    fn exits_read_as_people_say_them() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(describe(&std::process::ExitStatus::from_raw(9)), "signal 9");
        assert_eq!(describe(&std::process::ExitStatus::from_raw(1 << 8)), "exit code 1");
        assert_eq!(human(Duration::from_secs(2)), "2s");
        assert_eq!(human(Duration::from_millis(250)), "250ms");
    }
}
