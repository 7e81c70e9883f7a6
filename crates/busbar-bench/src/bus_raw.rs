//! Scenario `bus-raw`: the bus alone, with in-process subscribers that do nothing but
//! acknowledge. It measures the bus's own ceiling (closed loop) and its latency at a fixed
//! load (open loop), for each subscriber count and each transport side by side:
//!
//! - `builtin`: the event-bus binary, driven over HTTP, pushing to HTTP subscribers;
//! - `jetstream`: NATS JetStream, published to through the SDK's `JetStream`,
//!   each subscriber a durable pull consumer.

use std::{path::Path, sync::Arc, time::Duration};

use anyhow::{Context, bail};
use busbar::{spec::StartFrom, transport::jetstream::SubscribeOptions};

use crate::{
    clock,
    load::{self, Published, Target},
    nats::{self, Nats},
    proc::{self, Bus, BusOpts, TempDir},
    report::{Row, Summary},
    stats,
    subscriber::Subscriber,
};

const SCENARIO: &str = "bus-raw";
/// The one event type the benchmark publishes and subscribes to.
const EVENT_TYPE: &str = "BenchEvent";

/// Delivery policy for both transports: the built-in bus reads it from the routes file,
/// JetStream consumers get it through the SDK's `SubscribeOptions`. A short backoff so a
/// hiccup costs little time in a run.
const MAX_DELIVER: u32 = 5;
const BACKOFF: Duration = Duration::from_millis(100);
const ACK_WAIT: Duration = Duration::from_secs(5);

/// Which transport carries the events.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransportKind {
    /// The event-bus binary (a child process, SQLite in a temp dir), over loopback HTTP.
    Builtin,
    /// NATS JetStream at --nats-url, through the SDK's JetStream transport.
    Jetstream,
}

impl TransportKind {
    pub fn name(self) -> &'static str {
        match self {
            TransportKind::Builtin => "builtin",
            TransportKind::Jetstream => "jetstream",
        }
    }
}

/// Every figure comes from one fresh bus (JetStream: a fresh stream) per transport and
/// subscriber count: a closed-loop run, then one open-loop run per rate. The program fails
/// (exit 1) only if an acknowledged event did not reach every subscriber; timings are
/// reported, never judged.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Transports to measure side by side, comma-separated: `builtin` (the event-bus
    /// binary) and `jetstream` (NATS JetStream at --nats-url).
    #[arg(long, value_delimiter = ',', default_value = "builtin,jetstream")]
    pub transports: Vec<TransportKind>,

    /// The NATS server (JetStream enabled) for the jetstream rows; loopback only. Default:
    /// nats://127.0.0.1:4222, or, if nothing answers there and `nats-server` is on the
    /// PATH, a throwaway server started for the run. Each run creates its own uniquely
    /// named streams and deletes them at the end.
    #[arg(long, env = "BUSBAR_TEST_NATS_URL", value_name = "URL")]
    pub nats_url: Option<String>,

    /// Subscriber counts to measure, comma-separated. Each count gets its own fresh bus
    /// and database (JetStream: its own stream); every subscriber receives every event.
    #[arg(long, value_delimiter = ',', default_value = "1,3",
          value_parser = clap::value_parser!(u16).range(1..=100))]
    pub subscribers: Vec<u16>,

    /// Closed loop: concurrent publishers, each sending its next request as soon as the
    /// previous one is acknowledged.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,

    /// Closed loop: events per publish request (a JSON array; JetStream: one
    /// `Transport::publish` call, pipelined). Bounded so a request stays under the bus's
    /// default 1 MiB body limit.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u16).range(1..=2000))]
    pub batch: u16,

    /// Closed loop: seconds to publish for.
    #[arg(long, default_value_t = 10.0, value_parser = positive_secs)]
    pub duration: f64,

    /// Closed loop: stop after this many events even if time remains (bounds the
    /// benchmark's memory and the bus's disk use on fast machines).
    #[arg(long, default_value_t = 2_000_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_events: u64,

    /// Open loop: offered rates in events/s, comma-separated; one run per rate. Each event
    /// is its own publish request.
    #[arg(long, value_delimiter = ',', default_value = "2000", value_parser = positive_rate)]
    pub rates: Vec<f64>,

    /// Open loop: seconds to offer each rate for.
    #[arg(long, default_value_t = 5.0, value_parser = positive_secs)]
    pub rate_duration: f64,

    /// Open loop: most publish requests outstanding. When reached the generator waits,
    /// which shows as an achieved rate below the offered one and as latency (events are
    /// stamped with their scheduled time, not the time they finally went out).
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_in_flight: u32,

    /// Seconds to wait, after publishing stops, for every subscriber to receive every
    /// acknowledged event. Any still missing then is a failure (exit status 1).
    #[arg(long, default_value_t = 60.0, value_parser = positive_secs)]
    pub drain_timeout: f64,

    /// Tiny bounds so CI can prove the program works in seconds: --duration 1
    /// --rate-duration 1 --rates 200 --subscribers 1 (overrides those options; every
    /// transport in --transports still runs).
    #[arg(long)]
    pub smoke: bool,

    #[command(flatten)]
    pub bus: BusOpts,
}

pub fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("`{s}` is not a positive number of seconds")),
    }
}

pub fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("`{s}` is not a positive rate in events/s")),
    }
}

pub async fn run(mut args: Args) -> anyhow::Result<Summary> {
    if args.smoke {
        args.duration = 1.0;
        args.rate_duration = 1.0;
        args.rates = vec![200.0];
        args.subscribers = vec![1];
    }
    let mut transports = vec![];
    for t in std::mem::take(&mut args.transports) {
        if !transports.contains(&t) {
            transports.push(t);
        }
    }
    let in_flight = args.concurrency as usize * args.batch as usize;
    if transports.contains(&TransportKind::Jetstream) && in_flight > nats::MAX_ACK_INFLIGHT {
        bail!(
            "--concurrency x --batch = {in_flight} events in flight exceeds the {} publish acks async-nats \
             allows in flight: JetStream::publish sends a whole batch before awaiting its acks, so \
             concurrent publishers can deadlock; keep the product at or below {}",
            nats::MAX_ACK_INFLIGHT,
            nats::MAX_ACK_INFLIGHT
        );
    }
    let bin = match transports.contains(&TransportKind::Builtin) {
        true => Some(proc::locate_bus(&args.bus)?),
        false => None,
    };
    let mut nats = match transports.contains(&TransportKind::Jetstream) {
        true => Some(Nats::prepare(args.nats_url.as_deref()).await?),
        false => None,
    };
    let client = http_client(args.max_in_flight as usize)?;
    // Stream names carry it, so runs never share (or delete) each other's streams.
    let run_id = uuid::Uuid::now_v7().simple().to_string()[24..].to_owned();
    let mut rows = vec![];
    let mut result = Ok(());
    'all: for &n in &args.subscribers {
        for &t in &transports {
            let measured = match (t, &bin, &mut nats) {
                (TransportKind::Builtin, Some(bin), _) => with_bus(&args, bin, &client, n as usize).await,
                (TransportKind::Jetstream, _, Some(nats)) => with_jetstream(&args, nats, &run_id, n as usize).await,
                _ => unreachable!("the transport's server was prepared above"),
            };
            match measured {
                Ok(r) => rows.extend(r),
                Err(e) => {
                    result = Err(e);
                    break 'all;
                }
            }
        }
    }
    let nats_info = nats.as_ref().map(|n| n.info.clone());
    if let Some(nats) = nats {
        nats.stop().await;
    }
    result?;
    let mut sample = String::new();
    load::event_json(&mut sample, 1, 1_000_000, 10_000_000_000);
    Ok(Summary {
        machine: crate::report::Machine::detect(),
        transports: transports.iter().map(|t| t.name()).collect(),
        bus_bin: bin.map(|b| b.display().to_string()),
        bus_args: args.bus.bus_args.clone(),
        nats: nats_info,
        event_bytes: sample.len(),
        ok: rows.iter().all(|r| r.missing == 0),
        rows,
    })
}

fn http_client(max_in_flight: usize) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        // Loopback only: a proxy from the environment must not sit in the measurement.
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(max_in_flight)
        .timeout(load::PUBLISH_TIMEOUT)
        .build()
        .context("cannot build the HTTP client")
}

/// Starts `n` subscribers and a bus routed to them, runs every measurement, and tears
/// everything down (also on error).
async fn with_bus(args: &Args, bin: &Path, client: &reqwest::Client, n: usize) -> anyhow::Result<Vec<Row>> {
    let dir = TempDir::new(SCENARIO)?;
    let (mut subs, mut ports) = (vec![], vec![]);
    for _ in 0..n {
        let (sub, port) = Subscriber::http().await?;
        subs.push(sub);
        ports.push(port);
    }
    let routes = dir.path().join("routes.yaml");
    let yaml = routes_yaml(&ports);
    busbar::spec::parse_manifest(&yaml).context("the generated routes file is invalid")?;
    std::fs::write(&routes, yaml).with_context(|| format!("cannot write {}", routes.display()))?;
    eprintln!("[{SCENARIO}] builtin, {n} subscriber(s): starting the bus");
    let mut bus = Bus::start(bin, &args.bus, dir.path(), &routes, client).await?;
    let target = Target::Http { client: client.clone(), url: bus.url("/events") };
    let result = measurements(args, &target, &mut Broker::Builtin(&mut bus), &subs).await;
    let result = match result {
        Err(e) => Err(e.context(format!(
            "builtin with {n} subscriber(s)\n--- last lines of the bus log ---\n{}",
            bus.log_tail(30)
        ))),
        ok => ok,
    };
    bus.stop().await;
    result
}

/// Creates a fresh stream (unique bus name) and `n` durable pull consumers on it, runs
/// every measurement, and deletes the streams (also on error).
async fn with_jetstream(args: &Args, nats: &mut Nats, run_id: &str, n: usize) -> anyhow::Result<Vec<Row>> {
    let bus = format!("bench-{run_id}-{n}");
    let url = nats.info.url.clone();
    eprintln!("[{SCENARIO}] jetstream, {n} subscriber(s): creating stream {}", busbar::names::stream_name(&bus));
    let (t, streams) = nats.bus(&bus).await?;
    let result = async {
        tokio::time::timeout(Duration::from_secs(15), t.ensure_streams())
            .await
            .context("creating the streams timed out")??;
        let mut subs = vec![];
        for i in 0..n {
            let config = subscribe_options(&format!("sub{i}")).consumer_config(&bus, true);
            subs.push(Subscriber::jetstream(&url, &streams[0], config).await?);
        }
        measurements(args, &Target::JetStream(Arc::new(t.clone())), &mut Broker::JetStream(nats), &subs).await
    }
    .await;
    nats::delete_streams(t.context(), &streams).await;
    result.map_err(|e| e.context(format!("jetstream with {n} subscriber(s), at {url}")))
}

/// What a subscribing service on JetStream would get from the same manifest as the
/// built-in bus's: one type, from the beginning, the same delivery policy.
pub(crate) fn subscribe_options(durable: &str) -> SubscribeOptions {
    SubscribeOptions {
        durable: durable.to_owned(),
        types: vec![EVENT_TYPE.to_owned()],
        start_from: StartFrom::Beginning,
        max_deliver: MAX_DELIVER,
        ack_wait: ACK_WAIT,
        backoff: vec![BACKOFF],
    }
}

/// The server carrying the events, for its CPU time and liveness.
enum Broker<'a> {
    Builtin(&'a mut Bus),
    JetStream(&'a mut Nats),
}

impl Broker<'_> {
    fn transport(&self) -> &'static str {
        match self {
            Broker::Builtin(_) => TransportKind::Builtin.name(),
            Broker::JetStream(_) => TransportKind::Jetstream.name(),
        }
    }

    fn cpu_secs(&self) -> Option<f64> {
        match self {
            Broker::Builtin(bus) => bus.cpu_secs(),
            Broker::JetStream(nats) => nats.cpu_secs(),
        }
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        match self {
            Broker::Builtin(bus) => bus.check_alive(),
            Broker::JetStream(nats) => nats.check_alive(),
        }
    }
}

async fn measurements(
    args: &Args,
    target: &Target,
    broker: &mut Broker<'_>,
    subs: &[Subscriber],
) -> anyhow::Result<Vec<Row>> {
    let mut rows = vec![];
    let (k, batch) = (args.concurrency as usize, args.batch as u64);
    let who = format!("[{SCENARIO}] {}, {} subscriber(s)", broker.transport(), subs.len());
    eprintln!("{who}: closed loop, {k} publishers x {batch} events, {} s", args.duration);
    let mut phase = 1;
    let publish = load::closed_loop(target, phase, k, batch, Duration::from_secs_f64(args.duration), args.max_events);
    rows.push(measure(args, broker, subs, phase, "closed", format!("{k}x{batch}"), None, publish).await?);
    for &rate in &args.rates {
        phase += 1;
        eprintln!("{who}: open loop, {rate} events/s, {} s", args.rate_duration);
        let publish = load::open_loop(
            target,
            phase,
            rate,
            Duration::from_secs_f64(args.rate_duration),
            args.max_in_flight as usize,
        );
        rows.push(measure(args, broker, subs, phase, "open", format!("{rate}/s"), Some(rate), publish).await?);
    }
    Ok(rows)
}

/// Runs one publishing phase, waits for delivery and turns what the subscribers saw into
/// a table row.
#[allow(clippy::too_many_arguments)]
async fn measure(
    args: &Args,
    broker: &mut Broker<'_>,
    subs: &[Subscriber],
    phase: u32,
    mode: &'static str,
    load: String,
    target: Option<f64>,
    publish: impl Future<Output = anyhow::Result<Published>>,
) -> anyhow::Result<Row> {
    for s in subs {
        s.begin_phase(phase);
    }
    let (bus_cpu0, own_cpu0, t0) = (broker.cpu_secs(), own_cpu_secs(), clock::now_ns());
    let mut published = publish.await?;
    broker.check_alive()?;
    let first_error = published.first_error.as_deref().unwrap_or("-");
    if published.accepted_count == 0 {
        bail!("the bus acknowledged no events ({} publish requests failed; first: {first_error})", published.errors);
    }
    if published.errors > 0 {
        eprintln!(
            "[{SCENARIO}] {}: {} publish requests failed (not counted); first: {first_error}",
            broker.transport(),
            published.errors
        );
    }
    let missing = drain(subs, &published, Duration::from_secs_f64(args.drain_timeout)).await;
    let t1 = clock::now_ns();
    let wall = clock::secs_between(t0, t1);
    let pct = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / wall * 100.0);
    let bus_cpu_pct = pct(bus_cpu0, broker.cpu_secs());
    let bench_cpu_pct = pct(own_cpu0, own_cpu_secs());

    let mut latencies = vec![];
    let mut delivered_per_s = vec![];
    let mut duplicates = 0;
    for s in subs {
        let mut r = s.lock();
        delivered_per_s.push(r.distinct as f64 / clock::secs_between(published.first_ns, r.last_recv_ns));
        duplicates += r.duplicates;
        if r.malformed > 0 {
            eprintln!("[{SCENARIO}] a subscriber got {} malformed pushes (answered 400 or skipped)", r.malformed);
        }
        if r.receive_errors > 0 {
            eprintln!("[{SCENARIO}] a subscriber saw {} receive or ack errors", r.receive_errors);
        }
        latencies.append(&mut r.latencies_ns);
    }
    Ok(Row {
        scenario: SCENARIO,
        transport: broker.transport(),
        subscribers: subs.len(),
        mode,
        load,
        accepted: published.accepted_count,
        publish_errors: published.errors,
        target_per_s: target,
        published_per_s: published.accepted_count as f64
            / clock::secs_between(published.first_ns, published.last_ack_ns.max(published.scheduled_end_ns)),
        delivered_per_s,
        latency: stats::latency(&mut latencies),
        ack_latency: stats::latency(&mut published.ack_ns),
        bus_cpu_pct,
        bench_cpu_pct,
        missing: missing.iter().sum(),
        duplicates,
    })
}

/// Waits until every subscriber has every acknowledged event, or `timeout`. Returns how
/// many acknowledged events each subscriber is still missing.
async fn drain(subs: &[Subscriber], published: &Published, timeout: Duration) -> Vec<u64> {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        // Counting first keeps the exact (bit-by-bit) check to the end of the wait.
        let counted = subs.iter().all(|s| s.lock().distinct >= published.accepted_count);
        let timed_out = tokio::time::Instant::now() >= deadline;
        if counted || timed_out {
            let missing: Vec<u64> = subs.iter().map(|s| missing_in(s, published)).collect();
            if timed_out || missing.iter().all(|&m| m == 0) {
                return missing;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn missing_in(sub: &Subscriber, published: &Published) -> u64 {
    let r = sub.lock();
    published.accepted.iter().flat_map(|range| range.clone()).filter(|&n| !r.has(n)).count() as u64
}

/// The ServiceBus manifest: one publisher, and subscribers `sub0..` on `ports`, each
/// taking every BenchEvent, with the delivery policy above.
pub(crate) fn routes_yaml(ports: &[u16]) -> String {
    let mut s = format!(
        "apiVersion: busbar.dev/v1alpha1\n\
         kind: ServiceBus\n\
         metadata: {{name: busbar-bench}}\n\
         spec:\n  \
           delivery: {{maxDeliver: {MAX_DELIVER}, backoff: [{}ms], ackWait: {}s}}\n  \
           services:\n  \
           - name: pub\n    \
             publishes: [{EVENT_TYPE}]\n",
        BACKOFF.as_millis(),
        ACK_WAIT.as_secs(),
    );
    for (i, port) in ports.iter().enumerate() {
        s.push_str(&format!("  - name: sub{i}\n    port: {port}\n    subscribes: [{{type: {EVENT_TYPE}}}]\n"));
    }
    s
}

fn own_cpu_secs() -> Option<f64> {
    proc::cpu_secs("/proc/self/stat")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_file_is_a_valid_service_bus() {
        let bus = busbar::spec::parse_manifest(&routes_yaml(&[4100, 4101])).unwrap();
        let spec = bus.spec;
        assert_eq!(spec.services.len(), 3);
        assert_eq!(spec.service("sub1").unwrap().port, Some(4101));
        assert_eq!(spec.max_deliver(), MAX_DELIVER);
        assert_eq!(spec.ack_wait(), ACK_WAIT);
        assert_eq!(spec.backoff(), [BACKOFF]);
    }

    #[test]
    fn jetstream_consumers_get_the_same_delivery_policy() {
        let c = subscribe_options("sub1").consumer_config("bench-x-3", true);
        assert_eq!(c.durable_name.as_deref(), Some("sub1"));
        assert_eq!(c.filter_subject, busbar::names::subject("bench-x-3", EVENT_TYPE));
        assert_eq!(c.ack_policy, async_nats::jetstream::consumer::AckPolicy::Explicit);
        // The SDK's subscriber enforces maxDeliver and backoff; the server only redelivers
        // after ack_wait, without limit.
        assert_eq!((c.max_deliver, c.ack_wait, c.backoff.as_slice()), (-1, ACK_WAIT, &[][..]));
    }
}
