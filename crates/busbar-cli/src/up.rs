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
const STOP_GRACE: Duration = Duration::from_secs(10);

struct Running {
    name: String,
    pid: u32,
}

pub async fn run(procs: Vec<Proc>) -> Result<()> {
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
    let (exited_tx, mut exited_rx) = mpsc::unbounded_channel::<(String, String)>();
    let mut running: Vec<Running> = vec![];

    let started = {
        let start_all = async {
            for (i, p) in procs.iter().enumerate() {
                let mut cmd = match &p.program {
                    Program::Builtin(name) => {
                        let mut c = Command::new(&exe);
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
                let mut child = cmd.spawn().with_context(|| format!("cannot start {}", p.name))?;
                let pid = child.id().unwrap_or(0);
                let prefix = prefix(&p.name, width, i, color);
                pump(child.stdout.take().expect("piped"), prefix.clone());
                pump(child.stderr.take().expect("piped"), prefix);
                let tx = exited_tx.clone();
                let name = p.name.clone();
                tokio::spawn(async move {
                    let status = child.wait().await.map(|s| s.to_string()).unwrap_or_else(|e| e.to_string());
                    let _ = tx.send((name, status));
                });
                running.push(Running { name: p.name.clone(), pid });
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
    let outcome = tokio::select! {
        _ = busbar::web::shutdown_signal() => Ok(()),
        Some((name, status)) = exited_rx.recv() => Err(anyhow::anyhow!("{name} exited unexpectedly ({status}); stopping everything")),
    };
    if let Err(e) = &outcome {
        eprintln!("busbar: {e}");
    }
    stop(&running, &mut exited_rx).await;
    outcome
}

async fn wait_ready(p: &Proc, exited: &mut mpsc::UnboundedReceiver<(String, String)>) -> Result<()> {
    let client = reqwest::Client::new();
    let url = format!("{}/readyz", p.url());
    let start = Instant::now();
    loop {
        if let Ok(r) = client.get(&url).timeout(Duration::from_millis(500)).send().await
            && r.status().is_success()
        {
            return Ok(());
        }
        if let Ok((name, status)) = exited.try_recv() {
            bail!("{name} exited before it was ready ({status}); see its log lines above");
        }
        if start.elapsed() > READY_TIMEOUT {
            bail!("{} was not ready at {url} after {READY_TIMEOUT:?}; see its log lines above", p.name);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// SIGTERM to the services (newest first), then the bus; SIGKILL to any still running
/// after the grace period.
async fn stop(running: &[Running], exited: &mut mpsc::UnboundedReceiver<(String, String)>) {
    if running.is_empty() {
        return;
    }
    eprintln!("busbar: stopping {} processes", running.len());
    let mut alive: Vec<&Running> = running.iter().collect();
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
