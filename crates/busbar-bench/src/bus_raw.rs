//! Scenario `bus-raw`: the bus alone, driven over HTTP, pushing to in-process
//! subscribers that do nothing but acknowledge. It measures the bus's own ceiling
//! (closed loop) and its latency at a fixed load (open loop), for each subscriber count.

use std::{path::Path, time::Duration};

use anyhow::{Context, bail};

use crate::{
    clock,
    load::{self, Published},
    proc::{self, Bus, BusOpts, TempDir},
    report::{Row, Summary},
    stats,
    subscriber::Subscriber,
};

const SCENARIO: &str = "bus-raw";

/// Every figure comes from one fresh bus per subscriber count: a closed-loop run, then
/// one open-loop run per rate. The program fails (exit 1) only if an acknowledged event
/// did not reach every subscriber; timings are reported, never judged.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// Subscriber counts to measure, comma-separated. Each count gets its own fresh bus
    /// and database; every subscriber receives every event.
    #[arg(long, value_delimiter = ',', default_value = "1,3",
          value_parser = clap::value_parser!(u16).range(1..=100))]
    pub subscribers: Vec<u16>,

    /// Closed loop: concurrent publishers, each sending its next request as soon as the
    /// previous one is acknowledged.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,

    /// Closed loop: events per publish request (a JSON array). Bounded so a request stays
    /// under the bus's default 1 MiB body limit.
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
    /// --rate-duration 1 --rates 200 --subscribers 1 (overrides those options).
    #[arg(long)]
    pub smoke: bool,

    #[command(flatten)]
    pub bus: BusOpts,
}

fn positive_secs(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("`{s}` is not a positive number of seconds")),
    }
}

fn positive_rate(s: &str) -> Result<f64, String> {
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
    let bin = proc::locate_bus(&args.bus)?;
    let client = http_client(args.max_in_flight as usize)?;
    let mut rows = vec![];
    for &n in &args.subscribers {
        rows.extend(with_bus(&args, &bin, &client, n as usize).await?);
    }
    let mut sample = String::new();
    load::event_json(&mut sample, 1, 1_000_000, 10_000_000_000);
    Ok(Summary {
        machine: crate::report::Machine::detect(),
        bus_bin: bin.display().to_string(),
        bus_args: args.bus.bus_args.clone(),
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
        .timeout(Duration::from_secs(30))
        .build()
        .context("cannot build the HTTP client")
}

/// Starts `n` subscribers and a bus routed to them, runs every measurement, and tears
/// everything down (also on error).
async fn with_bus(args: &Args, bin: &Path, client: &reqwest::Client, n: usize) -> anyhow::Result<Vec<Row>> {
    let dir = TempDir::new(SCENARIO)?;
    let mut subs = vec![];
    for _ in 0..n {
        subs.push(Subscriber::start().await?);
    }
    let routes = dir.path().join("routes.yaml");
    let yaml = routes_yaml(&subs.iter().map(|s| s.port).collect::<Vec<_>>());
    busbar::spec::parse_manifest(&yaml).context("the generated routes file is invalid")?;
    std::fs::write(&routes, yaml).with_context(|| format!("cannot write {}", routes.display()))?;
    eprintln!("[{SCENARIO}] {n} subscriber(s): starting the bus");
    let mut bus = Bus::start(bin, &args.bus, dir.path(), &routes, client).await?;
    let result = measurements(args, client, &mut bus, &subs).await;
    let result = match result {
        Err(e) => {
            Err(e.context(format!("with {n} subscriber(s)\n--- last lines of the bus log ---\n{}", bus.log_tail(30))))
        }
        ok => ok,
    };
    bus.stop().await;
    result
}

async fn measurements(
    args: &Args,
    client: &reqwest::Client,
    bus: &mut Bus,
    subs: &[Subscriber],
) -> anyhow::Result<Vec<Row>> {
    let url = bus.url("/events");
    let mut rows = vec![];
    let (k, batch) = (args.concurrency as usize, args.batch as u64);
    eprintln!(
        "[{SCENARIO}] {} subscriber(s): closed loop, {k} publishers x {batch} events, {} s",
        subs.len(),
        args.duration
    );
    let mut phase = 1;
    let publish =
        load::closed_loop(client, &url, phase, k, batch, Duration::from_secs_f64(args.duration), args.max_events);
    rows.push(measure(args, bus, subs, phase, "closed", format!("{k}x{batch}"), None, publish).await?);
    for &rate in &args.rates {
        phase += 1;
        eprintln!("[{SCENARIO}] {} subscriber(s): open loop, {rate} events/s, {} s", subs.len(), args.rate_duration);
        let publish = load::open_loop(
            client,
            &url,
            phase,
            rate,
            Duration::from_secs_f64(args.rate_duration),
            args.max_in_flight as usize,
        );
        rows.push(measure(args, bus, subs, phase, "open", format!("{rate}/s"), Some(rate), publish).await?);
    }
    Ok(rows)
}

/// Runs one publishing phase, waits for delivery and turns what the subscribers saw into
/// a table row.
#[allow(clippy::too_many_arguments)]
async fn measure(
    args: &Args,
    bus: &mut Bus,
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
    let (bus_cpu0, own_cpu0, t0) = (bus.cpu_secs(), own_cpu_secs(), clock::now_ns());
    let mut published = publish.await?;
    bus.check_alive()?;
    if published.accepted_count == 0 {
        bail!("the bus acknowledged no events ({} publish requests failed)", published.errors);
    }
    let missing = drain(subs, &published, Duration::from_secs_f64(args.drain_timeout)).await;
    let t1 = clock::now_ns();
    let wall = clock::secs_between(t0, t1);
    let pct = |a: Option<f64>, b: Option<f64>| Some((b? - a?) / wall * 100.0);
    let bus_cpu_pct = pct(bus_cpu0, bus.cpu_secs());
    let bench_cpu_pct = pct(own_cpu0, own_cpu_secs());

    let mut latencies = vec![];
    let mut delivered_per_s = vec![];
    let mut duplicates = 0;
    for s in subs {
        let mut r = s.lock();
        delivered_per_s.push(r.distinct as f64 / clock::secs_between(published.first_ns, r.last_recv_ns));
        duplicates += r.duplicates;
        if r.malformed > 0 {
            eprintln!("[{SCENARIO}] a subscriber answered 400 to {} malformed pushes", r.malformed);
        }
        latencies.append(&mut r.latencies_ns);
    }
    Ok(Row {
        scenario: SCENARIO,
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
/// taking every BenchEvent. A short backoff so a hiccup costs little time in a run.
fn routes_yaml(ports: &[u16]) -> String {
    let mut s = String::from(
        "apiVersion: busbar.dev/v1alpha1\n\
         kind: ServiceBus\n\
         metadata: {name: busbar-bench}\n\
         spec:\n  \
           delivery: {maxDeliver: 5, backoff: [100ms], ackWait: 5s}\n  \
           services:\n  \
           - name: pub\n    \
             publishes: [BenchEvent]\n",
    );
    for (i, port) in ports.iter().enumerate() {
        s.push_str(&format!("  - name: sub{i}\n    port: {port}\n    subscribes: [{{type: BenchEvent}}]\n"));
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
        assert_eq!(spec.max_deliver(), 5);
        assert_eq!(spec.ack_wait(), Duration::from_secs(5));
    }
}
