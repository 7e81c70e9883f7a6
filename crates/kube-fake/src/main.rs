//! `kube-fake serve`: the fake API server as a program, so real clients (kubectl, helm, the
//! operator's own binary) can talk to it. Try the operator without a cluster.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use anyhow::Context as _;
use clap::{Parser, Subcommand};

/// A dev Kubernetes API server in one process, for trying busbar without a cluster: kubectl,
/// helm and the operator talk to it as to a real one (discovery, OpenAPI, server-side apply,
/// watch, RBAC with ServiceAccount tokens, CRD validation with CEL, Table output).
///
/// It is not a cluster: there is no kubelet, no scheduler and no controller manager, so no
/// pod ever runs. Deployments and StatefulSets are reported ready after a short delay by a
/// simulation (turn it off with --no-readiness); Services get an IP that routes nowhere.
#[derive(Parser, Debug)]
#[command(name = "kube-fake", version)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve the API over HTTPS until SIGTERM or Ctrl-C, and write a kubeconfig for it.
    Serve(Serve),
}

#[derive(clap::Args, Debug)]
struct Serve {
    /// Address to listen on (HTTPS with a certificate made at start; keep it on loopback).
    /// Port 0 picks a free port.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Where to write the kubeconfig: the admin user (`kubernetes-admin`, group
    /// `system:masters`) with its bearer token, current context `kube-fake`. ServiceAccounts
    /// get their tokens as on a real cluster: `kubectl create token NAME -n NAMESPACE`.
    #[arg(long)]
    kubeconfig: PathBuf,
    /// Do not simulate readiness: Deployments and StatefulSets then never report ready
    /// replicas (nothing runs them), and `helm --wait` or `kubectl rollout status` wait forever.
    #[arg(long)]
    no_readiness: bool,
    /// How long a Deployment or StatefulSet takes to report ready after a change (simulation).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    ready_after: Duration,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.find(|c: char| !c.is_ascii_digit()).map(|i| s.split_at(i)).unwrap_or((s, "s"));
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 500ms, 2s or 1m"))?;
    match unit {
        "ms" => Ok(Duration::from_millis(n)),
        "s" => Ok(Duration::from_secs(n)),
        "m" => Ok(Duration::from_secs(n * 60)),
        _ => Err(format!("{s:?} is not a duration like 500ms, 2s or 1m")),
    }
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let result = match cli.command {
        Command::Serve(args) => serve(args).await,
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("kube-fake: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(args: Serve) -> anyhow::Result<()> {
    if !args.listen.ip().is_loopback() {
        tracing::warn!(listen = %args.listen, "serving beyond loopback: anyone who can reach it and holds a token acts as the admin or the ServiceAccount it names");
    }
    let mut builder =
        kube_fake::FakeApiServer::builder().listen(args.listen).tls().require_authentication().require_namespaces();
    if !args.no_readiness {
        builder = builder.simulate_readiness(args.ready_after);
    }
    let api = builder
        .try_start()
        .await
        .with_context(|| format!("cannot listen on {} (--listen; is another server using the port?)", args.listen))?;
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        api.create(serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}}))
            .with_context(|| format!("creating the namespace {ns}"))?;
    }
    if let Some(dir) = args.kubeconfig.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    write_private(&args.kubeconfig, &api.kubeconfig())
        .with_context(|| format!("cannot write the kubeconfig to {} (--kubeconfig)", args.kubeconfig.display()))?;
    tracing::info!(
        url = %api.url(),
        kubeconfig = %args.kubeconfig.display(),
        readiness = if args.no_readiness { "off".to_string() } else { format!("simulated after {:?}", args.ready_after) },
        "kube-fake API server ready (no kubelet, no scheduler: pods never run)"
    );
    println!("serving {} (kubeconfig: {})", api.url(), args.kubeconfig.display());
    shutdown_signal().await;
    tracing::info!("shutting down");
    api.shutdown().await;
    Ok(())
}

/// The kubeconfig holds the admin token: readable by its owner only.
fn write_private(path: &std::path::Path, text: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    f.write_all(text.as_bytes())
}

async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
