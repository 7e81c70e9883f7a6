//! Scenario `blog`: the reference app end to end, as a client sees it. The whole system
//! runs as separate processes (see [`crate::system`]); the benchmark writes through the
//! public API (`POST /posts`, `POST /posts/:id/comments`) and reads query's
//! `GET /posts` to see the writes arrive:
//!
//! - posts, closed loop: the most posts/s the pipeline makes visible in query;
//! - posts, open loop at fixed rates: write-to-visible latency percentiles;
//! - comments, open loop: `POST` a comment to seeing it `approved` in query (comments,
//!   the bus, moderation, the bus, comments, the bus, query);
//! - footprint of every process: start-to-ready, idle and peak RSS, CPU per 10k posts.
//!
//! Each (database, transport) pair gets a fresh system.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, bail};
use busbar::spec::TransportKind;
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinSet;

use crate::{
    clock, load, nats,
    stats::{self, Latency},
    system::{BLOG, System, SystemOpts, Systems, kind, on_fresh_system, transport_name},
    watch::{self, Read, Want, Watcher},
};

const SCENARIO: &str = "blog";

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub systems: Systems,

    /// Closed loop: concurrent clients, each posting as soon as its previous post was
    /// answered.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,

    /// Closed loop: seconds to post for.
    #[arg(long, default_value_t = 5.0, value_parser = crate::bus_raw::positive_secs)]
    pub duration: f64,

    /// Closed loop: stop after this many posts even if time remains.
    #[arg(long, default_value_t = 200_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_posts: u64,

    /// Open loop: offered post rates (posts/s), comma-separated; one run per rate.
    #[arg(long, value_delimiter = ',', default_value = "500,1000,2000,5000", value_parser = crate::bus_raw::positive_rate)]
    pub rates: Vec<f64>,

    /// Open loop: offered comment rates (comments/s), comma-separated; one run per rate.
    #[arg(long, value_delimiter = ',', default_value = "500,1000", value_parser = crate::bus_raw::positive_rate)]
    pub comment_rates: Vec<f64>,

    /// Open loop: seconds to offer each rate for.
    #[arg(long, default_value_t = 4.0, value_parser = crate::bus_raw::positive_secs)]
    pub rate_duration: f64,

    /// Open loop: most requests outstanding (the generator waits beyond, which shows as
    /// latency).
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_in_flight: u32,

    /// Milliseconds between polls of query's view while writes are awaited: the
    /// resolution of the write-to-visible latencies.
    #[arg(long, default_value_t = 2.0, value_parser = crate::bus_raw::positive_secs)]
    pub poll_ms: f64,

    /// Open loop of posts while a client polls the whole `GET /posts` every
    /// --full-poll-ms, as the course's React client does (the paged runs above read one
    /// page at a time): offered rates, comma-separated; one run per rate.
    #[arg(long, value_delimiter = ',', default_value = "200,1000", value_parser = crate::bus_raw::positive_rate)]
    pub full_poll_rates: Vec<f64>,

    /// Milliseconds between full `GET /posts` polls in the --full-poll-rates runs (a poll
    /// starts only after the previous one's answer is read).
    #[arg(long, default_value_t = 5.0, value_parser = crate::bus_raw::positive_secs)]
    pub full_poll_ms: f64,

    /// Reading the whole view: once query holds this many posts (the benchmark posts more
    /// until it does), time --reads full `GET /posts` one after another and note query's
    /// peak RSS while serving them; comma-separated, one measurement per size.
    #[arg(long, value_delimiter = ',', default_value = "10000,50000", value_parser = clap::value_parser!(u64).range(1..))]
    pub read_sizes: Vec<u64>,

    /// Skips reading the whole view (--read-sizes).
    #[arg(long)]
    pub no_reads: bool,

    /// Full `GET /posts` requests timed per --read-sizes size.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub reads: u32,

    /// Seconds to wait, after writing stops, for every write to be visible. Any still
    /// missing then is a failure (exit status 1).
    #[arg(long, default_value_t = 120.0, value_parser = crate::bus_raw::positive_secs)]
    pub drain_timeout: f64,

    /// Every process exports its traces over OTLP/HTTP to a collector stand-in inside the
    /// benchmark (which only counts them): what tracing costs. Rows say `traces exported`.
    #[arg(long)]
    pub trace_export: bool,

    /// Tiny bounds so CI can prove the scenario works in seconds: --duration 1, one rate
    /// of 100/s, one comment rate of 50/s, --rate-duration 1 (every backend and transport
    /// in the lists still runs).
    #[arg(long)]
    pub smoke: bool,
}

/// One process's footprint in one system.
#[derive(Debug, Serialize)]
pub struct ProcFigures {
    pub name: String,
    /// Spawn to the first `/readyz` 200, on a fresh database.
    pub ready_ms: f64,
    /// Resident memory a second after every process was ready.
    pub idle_rss_mib: Option<f64>,
    /// Resident memory at the end of the closed-loop (max throughput) run.
    pub loaded_rss_mib: Option<f64>,
    /// Highest resident memory over the process's life (VmHWM), at the end.
    pub peak_rss_mib: Option<f64>,
    /// CPU seconds over the closed-loop run, per 10,000 posts made visible.
    pub cpu_s_per_10k_posts: Option<f64>,
}

/// One measured flow in one system.
#[derive(Debug, Serialize)]
pub struct FlowRow {
    /// `posts` or `comments`.
    pub flow: &'static str,
    /// `closed` (as fast as it goes) or `open` (fixed offered rate).
    pub mode: &'static str,
    pub load: String,
    pub target_per_s: Option<f64>,
    /// Open loop: seen by polling the whole `GET /posts` (the course client's read) rather
    /// than one page.
    pub full_get: bool,
    /// Writes answered 201.
    pub written: u64,
    /// Writes that failed (not counted, not awaited).
    pub errors: u64,
    pub first_error: Option<String>,
    /// Writes answered per second, first request to last answer.
    pub written_per_s: f64,
    /// Writes made visible in query per second, first request to the last one visible.
    pub visible_per_s: f64,
    /// Write (its scheduled time) to visible in query; open loop only.
    pub latency: Option<Latency>,
    /// Write to its 201.
    pub write_latency: Option<Latency>,
    /// Written but not visible within the drain bound.
    pub missing: u64,
}

/// Reading the whole view of one size.
#[derive(Debug, Serialize)]
pub struct ReadRow {
    /// Posts in the view (at least the size asked for).
    pub posts: u64,
    /// Size of one answer.
    pub bytes: u64,
    pub reads: u32,
    /// Request to the last byte of the answer, one request at a time.
    pub latency: Option<Latency>,
    /// query's resident-memory high-water mark over the reads (reset just before them).
    pub query_peak_rss_mib: Option<f64>,
}

#[derive(Debug, Serialize)]
pub struct SystemRun {
    pub backend: &'static str,
    pub transport: &'static str,
    pub procs: Vec<ProcFigures>,
    pub flows: Vec<FlowRow>,
    pub load_average: String,
}

/// Reading the whole view, on a fresh system of its own (the read path is query and its
/// database; the transport only fills it).
#[derive(Debug, Serialize)]
pub struct ReadRun {
    pub backend: &'static str,
    pub transport: &'static str,
    pub rows: Vec<ReadRow>,
}

#[derive(Debug, Serialize)]
pub struct BlogSummary {
    pub busbar_bin: String,
    pub nats: Option<nats::NatsInfo>,
    pub poll_ms: f64,
    pub runs: Vec<SystemRun>,
    pub reads: Vec<ReadRun>,
    pub ok: bool,
}

pub async fn run(mut args: Args) -> anyhow::Result<BlogSummary> {
    if args.smoke {
        args.duration = 1.0;
        args.rates = vec![100.0];
        args.comment_rates = vec![50.0];
        args.full_poll_rates = vec![100.0];
        args.read_sizes = vec![args.read_sizes.iter().copied().min().unwrap_or(1).min(500)];
        args.reads = args.reads.min(3);
        args.rate_duration = 1.0;
        args.drain_timeout = args.drain_timeout.min(60.0);
    }
    let prepared = args.systems.prepare().await?;
    let nats = prepared.nats.as_ref();
    let client = client(args.max_in_flight as usize)?;
    let sink = match args.trace_export {
        true => Some(crate::otlp_sink::OtlpSink::start().await?),
        false => None,
    };
    let mut runs = vec![];
    let mut reads = vec![];
    let mut result = Ok(());
    'all: for &backend in &args.systems.backends {
        for (i, &transport) in args.systems.transports.iter().enumerate() {
            let run_id = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
            let opts = SystemOpts {
                otlp_endpoint: sink.as_ref().map(|s| s.url.as_str()),
                ..prepared.opts(&BLOG, &args.systems, backend, transport, &run_id)
            };
            let transport = kind(transport);
            let what = format!("{} on {}", backend.name(), transport_name(transport));
            eprintln!("[{SCENARIO}] {}, {}: starting the blog", backend.name(), transport_name(transport));
            let measured =
                on_fresh_system(&opts, &client, nats, async |s| measure_system(&args, &opts, &client, s).await);
            match measured.await {
                Ok(r) => runs.push(r),
                Err(e) => {
                    result = Err(e.context(what));
                    break 'all;
                }
            }
            // The whole view's reads, once per database, on a fresh system.
            if i == 0 && !args.no_reads {
                let opts = SystemOpts { run_id: &format!("{run_id}r"), ..opts };
                eprintln!("[{SCENARIO}] {}, {}: starting the blog to read", backend.name(), transport_name(transport));
                match on_fresh_system(&opts, &client, nats, async |s| read_views(&args, &opts, &client, s).await).await
                {
                    Ok(rows) => {
                        reads.push(ReadRun { backend: backend.name(), transport: transport_name(transport), rows })
                    }
                    Err(e) => {
                        result = Err(e.context(format!("reading the view, {what}")));
                        break 'all;
                    }
                }
            }
        }
    }
    if let Some(sink) = &sink {
        let (requests, bytes) = sink.received();
        eprintln!(
            "[{SCENARIO}] the collector stand-in received {requests} exports, {:.1} MB of spans",
            bytes as f64 / 1e6
        );
    }
    let nats_info = nats.map(|n| n.info.clone());
    if let Some(n) = prepared.nats {
        n.stop().await;
    }
    result?;
    let ok = runs.iter().flat_map(|r| &r.flows).all(|f| f.missing == 0);
    Ok(BlogSummary {
        busbar_bin: prepared.bin.display().to_string(),
        nats: nats_info,
        poll_ms: args.poll_ms,
        runs,
        reads,
        ok,
    })
}

pub fn client(max_in_flight: usize) -> anyhow::Result<reqwest::Client> {
    reqwest::Client::builder()
        .no_proxy()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(max_in_flight)
        .timeout(load::PUBLISH_TIMEOUT)
        .build()
        .context("cannot build the HTTP client")
}

/// Fills query's view to each of --read-sizes in turn and times full reads of it.
async fn read_views(
    args: &Args,
    opts: &SystemOpts<'_>,
    client: &reqwest::Client,
    system: &mut System,
) -> anyhow::Result<Vec<ReadRow>> {
    let who = format!("[{SCENARIO}] {}, {}", opts.backend.name(), transport_name(opts.transport));
    let posts_url = system.get("posts").url("/posts");
    let query = system.get("query").url("");
    let mut sizes = args.read_sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let mut rows = vec![];
    for size in sizes {
        eprintln!("{who}: reading the whole view of {size} posts, {} times", args.reads);
        let row = read_view(args, client, &posts_url, &query, system, size).await?;
        eprintln!(
            "{who}: whole view of {} posts ({:.1} MB): p50 {} max {} ms, query peak RSS {} MiB",
            row.posts,
            row.bytes as f64 / 1e6,
            row.latency.as_ref().map_or("-".into(), |l| format!("{:.1}", l.p50_ms)),
            row.latency.as_ref().map_or("-".into(), |l| format!("{:.1}", l.max_ms)),
            row.query_peak_rss_mib.map_or("-".into(), |m| format!("{m:.1}")),
        );
        rows.push(row);
        system.check_alive()?;
    }
    Ok(rows)
}

async fn measure_system(
    args: &Args,
    opts: &SystemOpts<'_>,
    client: &reqwest::Client,
    system: &mut System,
) -> anyhow::Result<SystemRun> {
    let who = format!("[{SCENARIO}] {}, {}", opts.backend.name(), transport_name(opts.transport));
    let mut procs: Vec<ProcFigures> = system
        .procs
        .iter()
        .map(|p| ProcFigures {
            name: p.name.clone(),
            ready_ms: p.ready_ms,
            idle_rss_mib: None,
            loaded_rss_mib: None,
            peak_rss_mib: None,
            cpu_s_per_10k_posts: None,
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(1)).await;
    for (f, p) in procs.iter_mut().zip(&system.procs) {
        f.idle_rss_mib = p.rss_mib().map(|r| r.0);
    }
    let posts_url = system.get("posts").url("/posts");
    let query = system.get("query").url("");
    let mut flows = vec![];

    // Closed loop: as many posts as the pipeline takes.
    let k = args.concurrency as usize;
    eprintln!("{who}: posts, closed loop, {k} clients, {} s", args.duration);
    let applied0 = applied(client, &query).await?;
    let cpu0 = system.cpu_secs();
    let written = closed_posts(client, &posts_url, k, Duration::from_secs_f64(args.duration), args.max_posts).await;
    let visible_at = wait_applied(client, &query, applied0 + written.ids.len() as u64, args.drain_timeout).await?;
    let cpu1 = system.cpu_secs();
    let missing = verify_visible(client, &query, &written).await?;
    let n = written.ids.len() as f64;
    for (f, (a, b)) in procs.iter_mut().zip(cpu0.iter().zip(&cpu1)) {
        f.cpu_s_per_10k_posts = match (a, b) {
            (Some(a), Some(b)) if n > 0.0 => Some((b - a) / n * 1e4),
            _ => None,
        };
    }
    for (f, p) in procs.iter_mut().zip(&system.procs) {
        f.loaded_rss_mib = p.rss_mib().map(|r| r.0);
    }
    let mut ack = written.ack_ns.clone();
    flows.push(FlowRow {
        flow: "posts",
        mode: "closed",
        load: format!("{k} clients"),
        target_per_s: None,
        full_get: false,
        written: written.ids.len() as u64,
        errors: written.errors,
        first_error: written.first_error.clone(),
        written_per_s: n / clock::secs_between(written.first_ns, written.last_ack_ns),
        visible_per_s: visible_at.map_or(0.0, |t| n / clock::secs_between(written.first_ns, t)),
        latency: None,
        write_latency: stats::latency(&mut ack),
        missing,
    });
    progress(&who, flows.last());
    system.check_alive()?;

    let watcher =
        Watcher::start(client.clone(), query.clone(), Duration::from_secs_f64(args.poll_ms / 1e3), Read::Paged);
    for &rate in &args.rates {
        eprintln!("{who}: posts, open loop, {rate}/s, {} s", args.rate_duration);
        flows.push(open_posts(args, client, &posts_url, &watcher, rate).await?);
        progress(&who, flows.last());
        system.check_alive()?;
    }
    if !args.full_poll_rates.is_empty() {
        let every = Duration::from_secs_f64(args.full_poll_ms / 1e3);
        let full = Watcher::start(client.clone(), query.clone(), every, Read::Full);
        for &rate in &args.full_poll_rates {
            eprintln!("{who}: posts, open loop, {rate}/s, {} s, full GET /posts every {every:?}", args.rate_duration);
            let mut row = open_posts(args, client, &posts_url, &full, rate).await?;
            row.load = format!("{rate}/s, full GET /posts every {} ms", args.full_poll_ms);
            row.full_get = true;
            flows.push(row);
            progress(&who, flows.last());
            system.check_alive()?;
        }
    }

    if !args.comment_rates.is_empty() {
        let comments = system.get("comments").url("");
        let needed: u64 = args.comment_rates.iter().map(|r| (r * args.rate_duration).round().max(1.0) as u64).sum();
        eprintln!("{who}: comments: creating {needed} posts to comment on");
        let known0 = applied(client, &comments).await?;
        let posts = closed_posts(client, &posts_url, k, Duration::from_secs(3600), needed).await;
        if posts.errors > 0 {
            bail!("creating posts to comment on failed: {}", posts.first_error.unwrap_or_default());
        }
        wait_applied(client, &comments, known0 + needed, args.drain_timeout)
            .await?
            .context("comments did not learn of the posts in time")?;
        let mut ids = posts.ids.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
        ids.sort();
        let mut ids = ids.into_iter();
        for &rate in &args.comment_rates {
            eprintln!("{who}: comments, open loop, {rate}/s, {} s", args.rate_duration);
            let n = (rate * args.rate_duration).round().max(1.0) as usize;
            let targets: Vec<String> = ids.by_ref().take(n).collect();
            flows.push(open_comments(args, client, &comments, &watcher, rate, targets).await?);
            progress(&who, flows.last());
            system.check_alive()?;
        }
    }
    for (f, p) in procs.iter_mut().zip(&system.procs) {
        f.peak_rss_mib = p.rss_mib().map(|r| r.1);
    }
    Ok(SystemRun {
        backend: opts.backend.name(),
        transport: match (opts.transport, opts.otlp_endpoint.is_some()) {
            (TransportKind::Builtin, false) => "builtin",
            (TransportKind::Builtin, true) => "builtin, traces exported",
            (TransportKind::JetStream, false) => "jetstream",
            (TransportKind::JetStream, true) => "jetstream, traces exported",
        },
        procs,
        flows,
        load_average: crate::proc::load_average(),
    })
}

/// One line per measured flow on stderr, so a long run shows its figures as it goes.
fn progress(who: &str, row: Option<&FlowRow>) {
    let Some(r) = row else { return };
    let p = |f: fn(&Latency) -> f64| r.latency.as_ref().map_or("-".into(), |l| format!("{:.1}", f(l)));
    eprintln!(
        "{who}: {} {} {}: {} written ({:.0}/s), {:.0} visible/s, p50 {} p99 {} max {} ms, {} errors, {} missing",
        r.flow,
        r.mode,
        r.load,
        r.written,
        r.written_per_s,
        r.visible_per_s,
        p(|l| l.p50_ms),
        p(|l| l.p99_ms),
        p(|l| l.max_ms),
        r.errors,
        r.missing
    );
}

/// What a closed loop of posts got answered.
#[derive(Default)]
struct Written {
    first_ns: u64,
    last_ack_ns: u64,
    /// Created post ids with their request's wall-clock ms.
    ids: Vec<(String, u64)>,
    ack_ns: Vec<u64>,
    errors: u64,
    first_error: Option<String>,
}

/// Creates one post; its id, or why not.
async fn create_post(client: &reqwest::Client, url: &str, title: &str) -> Result<String, String> {
    let r = client.post(url).json(&json!({ "title": title })).send().await.map_err(|e| e.to_string())?;
    let status = r.status();
    let body = r.bytes().await.map_err(|e| e.to_string())?;
    if status.as_u16() != 201 {
        return Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)));
    }
    let v: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
    v["id"].as_str().map(str::to_owned).ok_or_else(|| format!("201 without an id: {v}"))
}

/// `clients` tasks post one after another until `duration` has passed or `max` posts
/// were started.
async fn closed_posts(client: &reqwest::Client, url: &str, clients: usize, duration: Duration, max: u64) -> Written {
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let deadline = tokio::time::Instant::now() + duration;
    let mut out = Written { first_ns: clock::now_ns(), ..Written::default() };
    let mut tasks = JoinSet::new();
    for _ in 0..clients {
        let (client, url, next) = (client.clone(), url.to_owned(), next.clone());
        tasks.spawn(async move {
            let mut mine = Written::default();
            while tokio::time::Instant::now() < deadline {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= max {
                    break;
                }
                let (sent, ms) = (clock::now_ns(), watch::wall_ms());
                match create_post(&client, &url, &format!("post {i}")).await {
                    Ok(id) => {
                        let now = clock::now_ns();
                        mine.ack_ns.push(now - sent);
                        mine.last_ack_ns = now;
                        mine.ids.push((id, ms));
                    }
                    Err(e) => {
                        mine.errors += 1;
                        mine.first_error.get_or_insert(e);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            mine
        });
    }
    while let Some(r) = tasks.join_next().await {
        let Ok(mine) = r else { continue };
        out.last_ack_ns = out.last_ack_ns.max(mine.last_ack_ns);
        out.ids.extend(mine.ids);
        out.ack_ns.extend(mine.ack_ns);
        out.errors += mine.errors;
        out.first_error = out.first_error.or(mine.first_error);
    }
    out
}

/// Events a service has applied so far, from its `/metrics`.
pub(crate) async fn applied(client: &reqwest::Client, base: &str) -> anyhow::Result<u64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .with_context(|| format!("GET {base}/metrics"))?
        .text()
        .await?;
    Ok(metric(&text, "busbar_events_applied_total").unwrap_or(0.0) as u64)
}

/// The value of an unlabelled metric in Prometheus text.
fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits until the service at `base` has applied `target` events; when (`clock`), or
/// `None` on timeout.
pub(crate) async fn wait_applied(
    client: &reqwest::Client,
    base: &str,
    target: u64,
    timeout: f64,
) -> anyhow::Result<Option<u64>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(timeout);
    loop {
        if applied(client, base).await? >= target {
            return Ok(Some(clock::now_ns()));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Posts until query's view holds at least `size`, then times `args.reads` full
/// `GET /posts`, one at a time, each to its last byte.
async fn read_view(
    args: &Args,
    client: &reqwest::Client,
    posts_url: &str,
    query: &str,
    system: &System,
    size: u64,
) -> anyhow::Result<ReadRow> {
    let url = format!("{query}/posts");
    let count = |body: &[u8]| -> anyhow::Result<u64> {
        let view: std::collections::HashMap<String, serde::de::IgnoredAny> =
            serde_json::from_slice(body).with_context(|| format!("GET {url}: not a JSON object"))?;
        Ok(view.len() as u64)
    };
    let have = count(&client.get(&url).send().await?.error_for_status()?.bytes().await?)?;
    if have < size {
        let applied0 = applied(client, query).await?;
        let more =
            closed_posts(client, posts_url, args.concurrency as usize, Duration::from_secs(3600), size - have).await;
        if more.errors > 0 {
            bail!("posting up to {size} posts failed: {}", more.first_error.unwrap_or_default());
        }
        wait_applied(client, query, applied0 + more.ids.len() as u64, args.drain_timeout)
            .await?
            .context("query did not apply the posts in time")?;
    }
    let query_pid = system.get("query").pid;
    let peak_reset = crate::proc::reset_peak_rss(query_pid);
    let (mut took, mut bytes, mut posts) = (vec![], 0, 0);
    for i in 0..args.reads {
        let start = clock::now_ns();
        let body = client.get(&url).send().await?.error_for_status()?.bytes().await?;
        took.push(clock::now_ns() - start);
        if i == 0 {
            (bytes, posts) = (body.len() as u64, count(&body)?);
        }
    }
    let peak = crate::proc::rss_mib(query_pid).map(|r| r.1).filter(|_| peak_reset);
    Ok(ReadRow { posts, bytes, reads: args.reads, latency: stats::latency(&mut took), query_peak_rss_mib: peak })
}

/// Counts written posts that query's view does not show, reading the view from just
/// below the first write's id floor, page by page.
async fn verify_visible(client: &reqwest::Client, query: &str, written: &Written) -> anyhow::Result<u64> {
    let Some(first_ms) = written.ids.iter().map(|(_, ms)| *ms).min() else { return Ok(0) };
    let mut want: std::collections::HashSet<&str> = written.ids.iter().map(|(id, _)| id.as_str()).collect();
    let mut after = watch::uuid_v7_floor(first_ms.saturating_sub(1));
    let page = 10_000;
    loop {
        let url = format!("{query}/posts?after={after}&limit={page}");
        let view: std::collections::BTreeMap<String, serde_json::Value> =
            client.get(&url).send().await.with_context(|| format!("GET {url}"))?.json().await?;
        for id in view.keys() {
            want.remove(id.as_str());
        }
        match view.keys().next_back() {
            Some(last) if view.len() == page => after = last.clone(),
            _ => break,
        }
    }
    Ok(want.len() as u64)
}

/// Open loop of posts at `rate`, each awaited in query's view.
async fn open_posts(
    args: &Args,
    client: &reqwest::Client,
    url: &str,
    watcher: &Watcher,
    rate: f64,
) -> anyhow::Result<FlowRow> {
    watcher.lock().reset();
    let state = watcher.shared();
    let paced =
        load::paced(rate, Duration::from_secs_f64(args.rate_duration), args.max_in_flight as usize, |i, due_ns| {
            let (client, url, state) = (client.clone(), url.to_owned(), state.clone());
            async move {
                let ms = watch::wall_ms();
                state.lock().expect("watch lock poisoned").sending(ms);
                let r = create_post(&client, &url, &format!("open {i}")).await;
                let ack = clock::now_ns();
                state.lock().expect("watch lock poisoned").answered(ms, r.as_ref().ok().cloned(), due_ns);
                (r.map(|_| ()), due_ns, ack)
            }
        })
        .await?;
    finish_open("posts", args, watcher, rate, paced).await
}

/// Open loop of comments at `rate`, one on each of `posts` (which comments already
/// knows), each awaited as `approved` in query's view.
async fn open_comments(
    args: &Args,
    client: &reqwest::Client,
    comments: &str,
    watcher: &Watcher,
    rate: f64,
    posts: Vec<String>,
) -> anyhow::Result<FlowRow> {
    watcher.lock().reset();
    let state = watcher.shared();
    let posts = Arc::new(posts);
    let n = posts.len() as f64;
    let paced = load::paced(rate, Duration::from_secs_f64(n / rate), args.max_in_flight as usize, |i, due_ns| {
        let (client, state, posts) = (client.clone(), state.clone(), posts.clone());
        let comments = comments.to_owned();
        async move {
            // The schedule's length is rounded from a float: never index past the posts.
            let Some(post) = posts.get(i as usize) else {
                return (Err(format!("no post left for comment {i}")), due_ns, clock::now_ns());
            };
            let url = format!("{comments}/posts/{post}/comments");
            let content = format!("comment {i}");
            state.lock().expect("watch lock poisoned").expect(
                post.clone(),
                Want::Comment { content: content.clone(), status: "approved" },
                due_ns,
            );
            let r = async {
                let r =
                    client.post(&url).json(&json!({ "content": content })).send().await.map_err(|e| e.to_string())?;
                let status = r.status();
                let body = r.text().await.map_err(|e| e.to_string())?;
                if status.as_u16() != 201 {
                    return Err(format!("HTTP {status}: {body}"));
                }
                Ok(())
            }
            .await;
            if r.is_err() {
                state.lock().expect("watch lock poisoned").forget(post);
            }
            (r, due_ns, clock::now_ns())
        }
    })
    .await?;
    finish_open("comments", args, watcher, rate, paced).await
}

/// Waits for every write of an open-loop run to become visible and makes its row.
async fn finish_open(
    flow: &'static str,
    args: &Args,
    watcher: &Watcher,
    rate: f64,
    paced: load::Paced<(Result<(), String>, u64, u64)>,
) -> anyhow::Result<FlowRow> {
    let missing = watcher.drain(Duration::from_secs_f64(args.drain_timeout)).await;
    let mut ack = vec![];
    let (mut errors, mut first_error, mut last_ack) = (0, None, 0);
    for (r, due, ack_ns) in &paced.results {
        match r {
            Ok(()) => {
                ack.push(ack_ns.saturating_sub(*due));
                last_ack = last_ack.max(*ack_ns);
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e.clone());
            }
        }
    }
    let written = ack.len() as u64;
    let mut w = watcher.lock();
    if w.poll_errors > 0 {
        eprintln!(
            "[{SCENARIO}] {} polls of query failed; first: {}",
            w.poll_errors,
            w.first_error.as_deref().unwrap_or("-")
        );
    }
    let seen = w.latencies_ns.len() as f64;
    let last_seen = w.last_seen_ns;
    let row = FlowRow {
        flow,
        mode: "open",
        load: format!("{rate}/s"),
        target_per_s: Some(rate),
        full_get: false,
        written,
        errors,
        first_error,
        written_per_s: written as f64 / clock::secs_between(paced.start_ns, last_ack.max(paced.scheduled_end_ns)),
        visible_per_s: seen / clock::secs_between(paced.start_ns, last_seen.max(paced.scheduled_end_ns)),
        latency: stats::latency(&mut w.latencies_ns),
        write_latency: stats::latency(&mut ack),
        missing: missing as u64,
    };
    w.reset();
    Ok(row)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_unlabelled_counters() {
        let text = "# HELP busbar_events_applied Events applied\n# TYPE busbar_events_applied counter\nbusbar_events_applied_total 42\nbusbar_events_applied_total_x 1\n";
        assert_eq!(metric(text, "busbar_events_applied_total"), Some(42.0));
        assert_eq!(metric(text, "busbar_events_failed_total"), None);
    }
}
