//! Output: a header with the machine's facts, one table line per measured run, or the
//! same as JSON for scripts.

use serde::Serialize;

use crate::{nats::NatsInfo, stats::Latency};

/// Facts that make figures comparable (or not) across machines.
#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub cpu_model: String,
    pub date: String,
    pub os: String,
}

impl Machine {
    pub fn detect() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = ["model name", "Hardware", "Processor", "cpu model"]
            .iter()
            .find_map(|key| {
                cpuinfo.lines().find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    (k.trim() == *key).then(|| v.trim().to_owned())
                })
            })
            .unwrap_or_else(|| "unknown".into());
        let kernel =
            std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| format!(" {}", s.trim())).unwrap_or_default();
        Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            date: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            os: format!("{}{kernel}", std::env::consts::OS),
        }
    }
}

/// One measured run: a scenario, a transport, a subscriber count and a load mode.
#[derive(Debug, Serialize)]
pub struct Row {
    pub scenario: &'static str,
    /// `builtin` (the event-bus process) or `jetstream` (NATS JetStream).
    pub transport: &'static str,
    pub subscribers: usize,
    /// `closed` (as fast as it goes) or `open` (fixed offered rate).
    pub mode: &'static str,
    /// Human description of the load, e.g. `8x100` or `2000/s`.
    pub load: String,
    /// Events the bus acknowledged (HTTP 200; JetStream: a publish ack for each).
    pub accepted: u64,
    /// Publish requests that failed (5xx, publish-ack error or transport error); their
    /// events are not counted.
    pub publish_errors: u64,
    /// Offered rate for open-loop runs.
    pub target_per_s: Option<f64>,
    /// Accepted events per second, first publish to last acknowledgement.
    pub published_per_s: f64,
    /// Per subscriber: accepted events per second, first publish to last delivery.
    pub delivered_per_s: Vec<f64>,
    /// Publish stamp to receipt, over every first delivery to every subscriber.
    pub latency: Option<Latency>,
    /// Publish stamp to the bus's acknowledgement (durably stored), per request.
    pub ack_latency: Option<Latency>,
    /// Bus CPU time over the run's wall time (100% = one core): the event-bus process, or
    /// nats-server for JetStream when its process could be found.
    pub bus_cpu_pct: Option<f64>,
    /// This program's CPU time over the run's wall time: it shares the machine.
    pub bench_cpu_pct: Option<f64>,
    /// Accepted events some subscriber never received within the drain bound.
    pub missing: u64,
    /// Redeliveries of events a subscriber already had.
    pub duplicates: u64,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub machine: Machine,
    pub transports: Vec<&'static str>,
    /// The event-bus binary, when the built-in bus was measured.
    pub bus_bin: Option<String>,
    pub bus_args: Vec<String>,
    /// The NATS server, when JetStream was measured.
    pub nats: Option<NatsInfo>,
    /// Size of one benchmark event as published, in bytes.
    pub event_bytes: usize,
    pub rows: Vec<Row>,
    /// True when every accepted event reached every subscriber.
    pub ok: bool,
}

pub fn print_table(s: &Summary) {
    let m = &s.machine;
    println!("# busbar-bench  {}  |  {} CPUs, {}  |  {}", m.date, m.cpus, m.cpu_model, m.os);
    println!("# event {} B", s.event_bytes);
    if let Some(bin) = &s.bus_bin {
        let bus_args = if s.bus_args.is_empty() { "(bus defaults)".to_owned() } else { s.bus_args.join(" ") };
        println!("# builtin: {bin} {bus_args}");
    }
    if let Some(n) = &s.nats {
        let pid = n.pid.map_or("pid not found: no bus cpu%".to_owned(), |p| format!("pid {p}"));
        let own = if n.throwaway { ", throwaway" } else { "" };
        println!(
            "# jetstream: {} (nats-server {}, {pid}{own})  |  file stream per subscriber count, durable pull consumers, explicit ack",
            n.url, n.server_version
        );
    }
    println!(
        "{:<8} {:<9} {:>4} {:<6} {:>8} {:>9} {:>10} {:>10} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7} {:>5}",
        "scenario",
        "transport",
        "subs",
        "mode",
        "load",
        "events",
        "publish/s",
        "deliver/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "ack p50",
        "ack p99",
        "bus cpu%",
        "own cpu%",
        "errors",
        "missing",
        "dups",
    );
    for r in &s.rows {
        // The slowest subscriber is what the bus sustains for all of them.
        let slowest = r.delivered_per_s.iter().copied().fold(f64::INFINITY, f64::min);
        let lat = |l: &Option<Latency>, f: fn(&Latency) -> f64| l.as_ref().map_or("-".into(), |l| ms(f(l)));
        let pct = |p: Option<f64>| p.map_or("-".into(), |p| format!("{p:.0}"));
        println!(
            "{:<8} {:<9} {:>4} {:<6} {:>8} {:>9} {:>10.0} {:>10.0} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>8} {:>6} {:>7} {:>5}",
            r.scenario,
            r.transport,
            r.subscribers,
            r.mode,
            r.load,
            r.accepted,
            r.published_per_s,
            if slowest.is_finite() { slowest } else { 0.0 },
            lat(&r.latency, |l| l.p50_ms),
            lat(&r.latency, |l| l.p90_ms),
            lat(&r.latency, |l| l.p99_ms),
            lat(&r.latency, |l| l.max_ms),
            lat(&r.ack_latency, |l| l.p50_ms),
            lat(&r.ack_latency, |l| l.p99_ms),
            pct(r.bus_cpu_pct),
            pct(r.bench_cpu_pct),
            r.publish_errors,
            r.missing,
            r.duplicates,
        );
    }
    println!(
        "# p50..max: publish -> subscriber receipt; ack: publish -> acknowledged by the bus (stored). \
         deliver/s: the slowest subscriber's (--json has each). cpu%: 100 = one core; \
         bus cpu% is event-bus, or nats-server for jetstream."
    );
}

fn ms(v: f64) -> String {
    if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.2}") }
}
