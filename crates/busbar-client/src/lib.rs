//! Clients of busbar's two transports that need no database, for everything that talks
//! to a bus without being a service: the SDK's runtime builds on them, and the operator
//! and the `busbar` command use them directly.
//!
//! - [`bus`]: the built-in bus's HTTP API (publish, replay, subscribers, dead letters);
//! - [`jetstream`]: NATS JetStream: the bus's streams, its consumers' settings, publish,
//!   replay and dead letters;
//! - the plumbing every busbar process shares: [`shutdown_signal`], [`init_logging`],
//!   [`error_chain`].

pub mod bus;
pub mod jetstream;
pub mod telemetry;

use busbar_protocol::CloudEvent;

#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// The bus could not be reached or did not answer in time; retrying may help.
    #[error("{transport} bus unreachable: {reason}")]
    Unavailable { transport: &'static str, reason: String },
    /// The bus answered and refused the events; it says why.
    #[error("{transport} bus refused the events ({status}): {reason}")]
    Rejected { transport: &'static str, status: u16, reason: String },
}

/// One page of history.
#[derive(Debug, Clone)]
pub struct ReplayPage {
    pub events: Vec<CloudEvent>,
    /// Position to pass as `after` for the next page.
    pub next: u64,
    /// True when this page reached the end of the history as of the call.
    pub done: bool,
}

/// An error and its sources on one line, e.g. a client error's "error sending request:
/// connection refused", for logs and messages that must say why.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    s
}

/// How a busbar process logs: to stderr (stdout stays for output), filtered by `RUST_LOG`
/// (default `default_filter`), as text or, with `BUSBAR_LOG_FORMAT=json`, one JSON object
/// per line for log collectors. The one switch for every busbar binary.
pub fn init_logging(default_filter: &str) {
    use tracing_subscriber::{EnvFilter, fmt};
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    let json = std::env::var("BUSBAR_LOG_FORMAT").is_ok_and(|v| v.eq_ignore_ascii_case("json"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = fmt().with_env_filter(filter).with_writer(std::io::stderr).with_ansi(ansi && !json);
    let _ = if json { builder.json().try_init() } else { builder.compact().try_init() };
}

/// Resolves on SIGTERM or Ctrl-C (SIGINT): every busbar process stops gracefully on either.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => tracing::info!("received Ctrl-C, shutting down"),
        _ = term => tracing::info!("received SIGTERM, shutting down"),
    }
}

pub use busbar_protocol::text::one_line;

/// The async runtime of a busbar process: tokio's multi-threaded scheduler with
/// `BUSBAR_WORKER_THREADS` worker threads (unset: one per CPU, tokio's default). Fewer
/// workers than CPUs mean fewer hand-offs between threads per request, which pays where
/// several processes share few cores, e.g. a pod limited to one CPU (see BENCHMARKS.md).
pub fn runtime() -> Result<tokio::runtime::Runtime, String> {
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    builder.enable_all();
    if let Some(n) = worker_threads(std::env::var("BUSBAR_WORKER_THREADS").ok().as_deref())? {
        builder.worker_threads(n);
    }
    builder.build().map_err(|e| format!("cannot start the async runtime: {e}"))
}

/// `BUSBAR_WORKER_THREADS`, read: `None` for tokio's default.
fn worker_threads(value: Option<&str>) -> Result<Option<usize>, String> {
    match value.map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => match s.parse::<usize>() {
            Ok(n) if n > 0 => Ok(Some(n)),
            _ => Err(format!(
                "BUSBAR_WORKER_THREADS={s} is not a number of threads (1 or more); unset it for one per CPU"
            )),
        },
    }
}

#[cfg(test)]
mod runtime_tests {
    use super::worker_threads;

    #[test]
    fn worker_threads_default_to_tokios_and_refuse_nonsense() {
        assert_eq!(worker_threads(None), Ok(None));
        assert_eq!(worker_threads(Some(" ")), Ok(None));
        assert_eq!(worker_threads(Some("1")), Ok(Some(1)));
        assert_eq!(worker_threads(Some(" 4 ")), Ok(Some(4)));
        for bad in ["0", "-1", "two"] {
            let err = worker_threads(Some(bad)).unwrap_err();
            assert!(err.contains("BUSBAR_WORKER_THREADS") && err.contains(bad), "{err}");
        }
    }
}
