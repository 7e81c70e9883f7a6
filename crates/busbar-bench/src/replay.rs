//! Scenario `replay`: a log that already holds many events (1M by default), read back
//! the two ways a new subscriber meets history:
//!
//! - pages: `Transport::replay` page after page, what a service on a fresh database
//!   backfills with (built-in bus: `GET /events`; JetStream: an ordered read of the
//!   stream), decoded into CloudEvents as the SDK does;
//! - catch-up: a subscriber added to the spec (JetStream: a new durable consumer)
//!   receiving the whole history by the transport's own delivery.
//!
//! The log is filled first, closed loop in batches, which also measures bulk ingest.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, bail};
use busbar::{HttpTransport, Transport};
use serde::Serialize;

use crate::{
    bus_raw::{self, TransportKind},
    clock,
    load::{self, Target},
    nats::{self, Nats},
    proc::{self, Bus, BusOpts, TempDir},
    subscriber::Subscriber,
};

const SCENARIO: &str = "replay";

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Transports to measure, comma-separated: `builtin` and `jetstream`.
    #[arg(long, value_delimiter = ',', default_value = "builtin,jetstream")]
    pub transports: Vec<TransportKind>,

    /// Events in the log before reading it back.
    #[arg(long, default_value_t = 1_000_000, value_parser = clap::value_parser!(u64).range(1..=20_000_000))]
    pub events: u64,

    /// Filling: concurrent publishers.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=64))]
    pub concurrency: u16,

    /// Filling: events per publish request (concurrency x batch stays within async-nats'
    /// 5,000 publish acks in flight).
    #[arg(long, default_value_t = 500, value_parser = clap::value_parser!(u16).range(1..=2000))]
    pub batch: u16,

    /// Reading: events per replay page (the bus allows up to 10,000).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u16).range(1..=10_000))]
    pub page: u16,

    /// The NATS server (JetStream enabled) for the jetstream rows; as for bus-raw.
    #[arg(long, env = "BUSBAR_TEST_NATS_URL", value_name = "URL")]
    pub nats_url: Option<String>,

    /// Longest any one step (filling, reading, catching up) may take, in seconds.
    #[arg(long, default_value_t = 600.0, value_parser = bus_raw::positive_secs)]
    pub step_timeout: f64,

    /// CI: 5,000 events (overrides --events).
    #[arg(long)]
    pub smoke: bool,

    #[command(flatten)]
    pub bus: BusOpts,
}

#[derive(Debug, Serialize)]
pub struct ReplayRow {
    pub transport: &'static str,
    pub events: u64,
    /// Filling the log: events stored per second.
    pub fill_per_s: f64,
    /// Reading the log back page by page through `Transport::replay`.
    pub pages_per_s: f64,
    /// A new subscriber receiving all of it.
    pub catch_up_per_s: f64,
}

#[derive(Debug, Serialize)]
pub struct ReplaySummary {
    pub page: u16,
    pub rows: Vec<ReplayRow>,
}

pub async fn run(mut args: Args) -> anyhow::Result<ReplaySummary> {
    if args.smoke {
        args.events = 5_000;
    }
    args.transports.dedup();
    let in_flight = args.concurrency as usize * args.batch as usize;
    if args.transports.contains(&TransportKind::Jetstream) && in_flight > nats::MAX_ACK_INFLIGHT {
        bail!(
            "--concurrency x --batch = {in_flight} exceeds the {} publish acks async-nats allows in flight",
            nats::MAX_ACK_INFLIGHT
        );
    }
    let mut rows = vec![];
    for &t in &args.transports {
        let row = match t {
            TransportKind::Builtin => builtin(&args).await,
            TransportKind::Jetstream => on_jetstream(&args).await,
        };
        rows.push(row.with_context(|| format!("replay on {}", t.name()))?);
    }
    Ok(ReplaySummary { page: args.page, rows })
}

async fn builtin(args: &Args) -> anyhow::Result<ReplayRow> {
    let bin = proc::locate_bus(&args.bus)?;
    let client = crate::blog::client(args.concurrency as usize)?;
    let dir = TempDir::new(SCENARIO)?;
    let routes = dir.path().join("routes.yaml");
    std::fs::write(&routes, bus_raw::routes_yaml(&[]))?;
    // Notices the catch-up subscriber quickly, so its time is delivery, not the reload wait.
    let mut opts = args.bus.clone();
    opts.bus_args.push("--reload-interval=20ms".into());
    let mut bus = Bus::start(&bin, &opts, dir.path(), &routes, &client).await?;
    let result = async {
        let target = Target::Http { client: client.clone(), url: bus.url("/events") };
        let fill_per_s = fill(args, &target).await?;
        let transport = HttpTransport::new(&bus.url(""), None);
        let pages_per_s = read_pages(args, &transport).await?;
        let (sub, port) = Subscriber::http().await?;
        sub.begin_phase(1);
        let t0 = clock::now_ns();
        std::fs::write(&routes, bus_raw::routes_yaml(&[port]))?;
        let catch_up_per_s = catch_up(args, &sub, t0).await?;
        bus.check_alive()?;
        Ok(ReplayRow { transport: "builtin", events: args.events, fill_per_s, pages_per_s, catch_up_per_s })
    }
    .await;
    let result = result
        .map_err(|e: anyhow::Error| e.context(format!("--- last lines of the bus log ---\n{}", bus.log_tail(20))));
    bus.stop().await;
    result
}

async fn on_jetstream(args: &Args) -> anyhow::Result<ReplayRow> {
    let nats = Nats::prepare(args.nats_url.as_deref()).await?;
    let url = nats.info.url.clone();
    let bus = format!("bench-replay-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let (t, streams) = nats.bus(&bus).await?;
    let result = async {
        t.ensure_streams().await?;
        let fill_per_s = fill(args, &Target::JetStream(Arc::new(t.clone()))).await?;
        let pages_per_s = read_pages(args, &t).await?;
        let config = bus_raw::subscribe_options("catch-up").consumer_config(&bus, true);
        let t0 = clock::now_ns();
        let sub = Subscriber::jetstream(&url, &streams[0], config).await?;
        sub.begin_phase(1);
        let catch_up_per_s = catch_up(args, &sub, t0).await?;
        Ok(ReplayRow { transport: "jetstream", events: args.events, fill_per_s, pages_per_s, catch_up_per_s })
    }
    .await;
    nats::delete_streams(t.context(), &streams).await;
    nats.stop().await;
    result
}

/// Fills the log with `args.events` events of phase 1; events stored per second.
async fn fill(args: &Args, target: &Target) -> anyhow::Result<f64> {
    eprintln!("[{SCENARIO}] filling the log with {} events", args.events);
    let limit = Duration::from_secs_f64(args.step_timeout);
    let published =
        load::closed_loop(target, 1, args.concurrency as usize, args.batch as u64, limit, args.events).await?;
    if published.accepted_count != args.events {
        bail!(
            "only {} of {} events were stored ({} requests failed; first: {})",
            published.accepted_count,
            args.events,
            published.errors,
            published.first_error.as_deref().unwrap_or("-")
        );
    }
    Ok(args.events as f64 / clock::secs_between(published.first_ns, published.last_ack_ns))
}

/// Reads the whole log through `Transport::replay`; events per second.
async fn read_pages(args: &Args, t: &dyn Transport) -> anyhow::Result<f64> {
    eprintln!("[{SCENARIO}] reading it back in pages of {}", args.page);
    let t0 = clock::now_ns();
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.step_timeout);
    let (mut after, mut read) = (0, 0u64);
    loop {
        let page = t.replay(after, args.page as usize, &[]).await?;
        read += page.events.len() as u64;
        after = page.next;
        if page.done || read >= args.events {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("reading the log took longer than {} s ({read} events read)", args.step_timeout);
        }
    }
    let secs = clock::secs_between(t0, clock::now_ns());
    if read != args.events {
        bail!("replay returned {read} events, the log holds {}", args.events);
    }
    Ok(read as f64 / secs)
}

/// Waits until `sub` has every event of phase 1; events per second since `t0`.
async fn catch_up(args: &Args, sub: &Subscriber, t0: u64) -> anyhow::Result<f64> {
    eprintln!("[{SCENARIO}] a new subscriber catching up");
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.step_timeout);
    loop {
        let (got, last) = {
            let r = sub.lock();
            (r.distinct, r.last_recv_ns)
        };
        if got >= args.events {
            return Ok(got as f64 / clock::secs_between(t0, last));
        }
        if tokio::time::Instant::now() >= deadline {
            bail!("the new subscriber had {got} of {} events after {} s", args.events, args.step_timeout);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
