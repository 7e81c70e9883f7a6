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
//!
//! With `--target-url` the benchmark starts nothing and measures a blog somebody else runs
//! (any stack that speaks the blog's HTTP contract, such as the course's Node.js blog):
//! every wait then reads only the contract's routes, and what needs busbar's `/metrics`,
//! its paged read or the processes themselves (CPU, RSS) is reported as not measured.

use std::{sync::Arc, time::Duration};

use anyhow::{Context, anyhow, bail};
use busbar::spec::TransportKind;
use futures::StreamExt;
use serde::Serialize;
use serde_json::json;
use tokio::task::JoinSet;

use crate::{
    clock, load, nats,
    stats::{self, Latency},
    system::{BLOG, System, SystemOpts, Systems, kind, on_fresh_system, transport_name},
    target::{self, TargetUrls},
    watch::{self, Read, Want, Watcher},
};

const SCENARIO: &str = "blog";

/// The `db` of an external stack's rows (--target-url).
pub const EXTERNAL: &str = "external";

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub systems: Systems,

    /// Measure a blog this benchmark does not start: any stack that speaks the blog's HTTP
    /// contract, such as the course's Node.js blog, so it can be compared like with like.
    /// Either `posts=URL,comments=URL,query=URL` (base URLs, e.g.
    /// `posts=http://127.0.0.1:4000,comments=http://127.0.0.1:4001,query=http://127.0.0.1:4002`)
    /// or a bare `http://HOST` for the course's ports 4000, 4001 and 4002. The benchmark
    /// then starts nothing and uses only `POST /posts`, `POST` and `GET
    /// /posts/:id/comments`, and query's `GET /posts`: posts visible per second (closed
    /// loop), write-to-visible at --full-poll-rates under the full `GET /posts` poll,
    /// comments reaching `approved` at --comment-rates, and full `GET /posts` reads at
    /// --read-sizes. CPU, RSS, start-to-ready and the paged --rates runs need busbar's
    /// processes or routes and are reported as not measured. The posts and comments it
    /// writes stay in that stack.
    #[arg(
        long,
        value_name = "URLS",
        value_parser = target::parse,
        conflicts_with_all = ["backends", "transports", "busbar_bin", "trace_export"],
    )]
    pub target_url: Option<TargetUrls>,

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
    /// 2,000/s is the sustained rate the speed targets ask for.
    #[arg(long, value_delimiter = ',', default_value = "500,1000,2000", value_parser = crate::bus_raw::positive_rate)]
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

    /// One post taking this many comments, one after another, after the reads (0: none):
    /// the comments service's CPU per comment and the answer's size as the post grows,
    /// in steps of --hot-post-step.
    #[arg(long, default_value_t = 3000, value_parser = clap::value_parser!(u64).range(0..=1_000_000))]
    pub hot_post_comments: u64,

    /// Comments per step of the --hot-post-comments run.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    pub hot_post_step: u64,

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

/// One step of a post taking comments one after another (--hot-post-comments).
#[derive(Debug, Serialize)]
pub struct HotPostRow {
    /// Comments on the post when the step began and when it ended.
    pub from: u64,
    pub to: u64,
    /// CPU of the comments process per comment over the step (its moderation decisions,
    /// applied as they come, included); `None` for an external stack.
    pub comments_cpu_ms: Option<f64>,
    /// CPU of the query process per comment over the step: it applies each comment's
    /// creation and its moderation to the post's document. Read when the step's last 201
    /// arrives, so the few events query has not applied yet count in the next step. `None`
    /// for an external stack.
    pub query_cpu_ms: Option<f64>,
    /// The last answer's size: the whole array, as the contract has it.
    pub answer_bytes: u64,
    /// Comment to its 201.
    pub latency: Option<Latency>,
}

/// Reading the whole view, on a fresh system of its own (the read path is query and its
/// database; the transport only fills it); then one post taking many comments.
#[derive(Debug, Serialize)]
pub struct ReadRun {
    pub backend: &'static str,
    pub transport: &'static str,
    pub rows: Vec<ReadRow>,
    pub hot_post: Vec<HotPostRow>,
}

/// A blog measured through --target-url.
#[derive(Debug, Serialize)]
pub struct External {
    pub urls: TargetUrls,
    /// What needs more than the blog's HTTP contract, so was not measured.
    pub not_measured: Vec<&'static str>,
}

/// What an external stack does not let the benchmark measure.
const NOT_MEASURED: [&str; 4] = [
    "CPU per post, per process: the benchmark did not start the stack's processes and does not know their PIDs",
    "start to ready, idle, loaded and peak RSS per process: the same (no PIDs)",
    "query's peak RSS while serving the whole view: the same (no PID)",
    "write to visible under the paged poll (--rates): busbar's `GET /posts?after=&limit=` is not in the course's \
     contract; the full `GET /posts` poll (--full-poll-rates) measures write to visible instead",
];

#[derive(Debug, Serialize)]
pub struct BlogSummary {
    /// The busbar binary that ran the systems; none for an external stack.
    pub busbar_bin: Option<String>,
    /// Set when the blog measured was an external stack (--target-url).
    pub external: Option<External>,
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
        args.hot_post_comments = args.hot_post_comments.min(200);
        args.hot_post_step = args.hot_post_step.min(100);
        args.rate_duration = 1.0;
        args.drain_timeout = args.drain_timeout.min(60.0);
    }
    if let Some(urls) = args.target_url.clone() {
        return run_external(&args, urls).await;
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
            let who = format!("[{SCENARIO}] {}, {}", backend.name(), transport_name(transport));
            let measured = on_fresh_system(&opts, &client, nats, async |s| {
                let (procs, flows) = measure(&args, &who, &client, &mut Stack::started(s)).await?;
                anyhow::Ok(SystemRun {
                    backend: backend.name(),
                    transport: match (transport, opts.otlp_endpoint.is_some()) {
                        (TransportKind::Builtin, false) => "builtin",
                        (TransportKind::Builtin, true) => "builtin, traces exported",
                        (TransportKind::JetStream, false) => "jetstream",
                        (TransportKind::JetStream, true) => "jetstream, traces exported",
                    },
                    procs,
                    flows,
                    load_average: crate::proc::load_average(),
                })
            });
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
                let reading = on_fresh_system(&opts, &client, nats, async |s| {
                    let mut stack = Stack::started(s);
                    let rows = read_views(&args, &who, &client, &mut stack).await?;
                    let hot_post = hot_post(&args, &who, &client, &mut stack).await?;
                    anyhow::Ok((rows, hot_post))
                });
                match reading.await {
                    Ok((rows, hot_post)) => reads.push(ReadRun {
                        backend: backend.name(),
                        transport: transport_name(transport),
                        rows,
                        hot_post,
                    }),
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
        busbar_bin: Some(prepared.bin.display().to_string()),
        external: None,
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

/// Measures a blog somebody else runs (--target-url): one stack, as it is, through the
/// blog's HTTP contract alone.
async fn run_external(args: &Args, urls: TargetUrls) -> anyhow::Result<BlogSummary> {
    let client = client(args.max_in_flight as usize)?;
    let who = format!("[{SCENARIO}] {EXTERNAL}");
    eprintln!(
        "{who}: posts {}, comments {}, query {} (started elsewhere: CPU, RSS and /metrics are not measured)",
        urls.posts, urls.comments, urls.query
    );
    let mut stack = Stack::external(&urls);
    full_view(&client, &stack.query)
        .await
        .with_context(|| format!("query at {} does not serve the blog's GET /posts", stack.query))?;
    let (procs, flows) = measure(args, &who, &client, &mut stack).await?;
    let mut reads = vec![];
    if !args.no_reads {
        let rows = read_views(args, &who, &client, &mut stack).await.context("reading the view")?;
        let hot_post = hot_post(args, &who, &client, &mut stack).await.context("one post taking many comments")?;
        reads.push(ReadRun { backend: EXTERNAL, transport: "-", rows, hot_post });
    }
    let runs =
        vec![SystemRun { backend: EXTERNAL, transport: "-", procs, flows, load_average: crate::proc::load_average() }];
    let ok = runs.iter().flat_map(|r| &r.flows).all(|f| f.missing == 0);
    Ok(BlogSummary {
        busbar_bin: None,
        external: Some(External { urls, not_measured: NOT_MEASURED.to_vec() }),
        nats: None,
        poll_ms: args.poll_ms,
        runs,
        reads,
        ok,
    })
}

/// The blog being measured: its services' base URLs and, when this benchmark started it,
/// its processes. Without them (an external stack) only what the HTTP contract shows is
/// measured: no CPU or memory, no busbar `/metrics`, no paged read of query.
struct Stack<'a> {
    posts: String,
    comments: String,
    query: String,
    system: Option<&'a mut System>,
}

impl<'a> Stack<'a> {
    fn started(system: &'a mut System) -> Stack<'a> {
        let url = |name| system.get(name).url("");
        Stack { posts: url("posts"), comments: url("comments"), query: url("query"), system: Some(system) }
    }

    fn external(urls: &TargetUrls) -> Stack<'static> {
        Stack { posts: urls.posts.clone(), comments: urls.comments.clone(), query: urls.query.clone(), system: None }
    }

    fn check_alive(&mut self) -> anyhow::Result<()> {
        self.system.as_mut().map_or(Ok(()), |s| s.check_alive())
    }

    /// Where a wait for writes to reach the service at `base` starts: its busbar counter of
    /// applied events before them, or `None` when only the contract may be read.
    async fn applied_before(&self, client: &reqwest::Client, base: &str) -> anyhow::Result<Option<u64>> {
        match self.system {
            Some(_) => Ok(Some(applied(client, base).await?)),
            None => Ok(None),
        }
    }

    /// How the watcher reads query where it need not read the whole view: one page from
    /// busbar's query, the whole `GET /posts` from any other, and how often.
    fn light_read(&self, args: &Args) -> (Read, Duration) {
        match self.system {
            Some(_) => (Read::Paged, Duration::from_secs_f64(args.poll_ms / 1e3)),
            None => (Read::Full, Duration::from_secs_f64(args.full_poll_ms / 1e3)),
        }
    }
}

/// Fills query's view to each of --read-sizes in turn and times full reads of it.
async fn read_views(
    args: &Args,
    who: &str,
    client: &reqwest::Client,
    stack: &mut Stack<'_>,
) -> anyhow::Result<Vec<ReadRow>> {
    let mut sizes = args.read_sizes.clone();
    sizes.sort_unstable();
    sizes.dedup();
    let mut rows = vec![];
    for size in sizes {
        eprintln!("{who}: reading the whole view of {size} posts, {} times", args.reads);
        let row = read_view(args, client, stack, size).await?;
        eprintln!(
            "{who}: whole view of {} posts ({:.1} MB): p50 {} max {} ms, query peak RSS {} MiB",
            row.posts,
            row.bytes as f64 / 1e6,
            row.latency.as_ref().map_or("-".into(), |l| format!("{:.1}", l.p50_ms)),
            row.latency.as_ref().map_or("-".into(), |l| format!("{:.1}", l.max_ms)),
            row.query_peak_rss_mib.map_or("-".into(), |m| format!("{m:.1}")),
        );
        rows.push(row);
        stack.check_alive()?;
    }
    Ok(rows)
}

/// One new post takes --hot-post-comments comments, one after another: per step, the
/// comments process's CPU per comment, the last answer's size and the 201 latencies.
async fn hot_post(
    args: &Args,
    who: &str,
    client: &reqwest::Client,
    stack: &mut Stack<'_>,
) -> anyhow::Result<Vec<HotPostRow>> {
    if args.hot_post_comments == 0 {
        return Ok(vec![]);
    }
    let post = create_post(client, &format!("{}/posts", stack.posts), "hot")
        .await
        .map_err(|e| anyhow!("creating the post: {e}"))?;
    let every = stack.light_read(args).1;
    wait_known_to_comments(client, &stack.comments, None, &[post.as_str()], args.drain_timeout, every)
        .await?
        .context("comments did not learn of the post in time")?;
    eprintln!("{who}: one post taking {} comments, one after another", args.hot_post_comments);
    let url = format!("{}/posts/{post}/comments", stack.comments);
    let cpu = |stack: &Stack, name: &str| stack.system.as_ref().and_then(|s| s.get(name).cpu_secs());
    let mut rows = vec![];
    let mut done = 0;
    while done < args.hot_post_comments {
        let step = args.hot_post_step.min(args.hot_post_comments - done);
        let (comments0, query0) = (cpu(stack, "comments"), cpu(stack, "query"));
        let (mut took, mut answer_bytes) = (Vec::with_capacity(step as usize), 0);
        for i in 0..step {
            let start = clock::now_ns();
            let r = client.post(&url).json(&json!({ "content": format!("comment {}", done + i) })).send().await?;
            let status = r.status();
            let body = r.bytes().await?;
            if status.as_u16() != 201 {
                bail!("comment {} on one post: HTTP {status}: {}", done + i, String::from_utf8_lossy(&body));
            }
            took.push(clock::now_ns() - start);
            answer_bytes = body.len() as u64;
        }
        let per = |before: Option<f64>, after: Option<f64>| before.zip(after).map(|(a, b)| (b - a) * 1e3 / step as f64);
        let row = HotPostRow {
            from: done,
            to: done + step,
            comments_cpu_ms: per(comments0, cpu(stack, "comments")),
            query_cpu_ms: per(query0, cpu(stack, "query")),
            answer_bytes,
            latency: stats::latency(&mut took),
        };
        eprintln!(
            "{who}: comments {}..{}: {} ms of comments' CPU and {} ms of query's per comment, answer {:.0} kB, \
             201 p50 {} ms",
            row.from,
            row.to,
            row.comments_cpu_ms.map_or("-".into(), |c| format!("{c:.2}")),
            row.query_cpu_ms.map_or("-".into(), |c| format!("{c:.2}")),
            answer_bytes as f64 / 1e3,
            row.latency.as_ref().map_or("-".into(), |l| format!("{:.2}", l.p50_ms)),
        );
        rows.push(row);
        done += step;
        stack.check_alive()?;
    }
    Ok(rows)
}

/// Every flow on one blog: the open loops of posts under the full-GET poll (first, on the
/// fresh view), the closed loop of posts, the open loops of posts under the paged poll
/// (busbar) and of comments; with the processes' footprint when the benchmark started
/// them.
async fn measure(
    args: &Args,
    who: &str,
    client: &reqwest::Client,
    stack: &mut Stack<'_>,
) -> anyhow::Result<(Vec<ProcFigures>, Vec<FlowRow>)> {
    let mut procs: Vec<ProcFigures> = vec![];
    if let Some(system) = &stack.system {
        procs = system
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
    }
    let posts_url = format!("{}/posts", stack.posts);
    let query = stack.query.clone();
    let (light, light_every) = stack.light_read(args);
    let mut flows = vec![];

    // The course client's read first, while the view is as small as on a fresh stack: how
    // long a write takes to show there depends on how much the client must read and parse
    // to see it, so each row names the view's size when it began.
    if !args.full_poll_rates.is_empty() {
        let every = Duration::from_secs_f64(args.full_poll_ms / 1e3);
        let full = Watcher::start(client.clone(), query.clone(), every, Read::Full);
        for &rate in &args.full_poll_rates {
            let held = full_view(client, &query).await?.1.len();
            eprintln!(
                "{who}: posts, open loop, {rate}/s, {} s, full GET /posts every {every:?} (the view holds {held} posts)",
                args.rate_duration
            );
            let mut row = open_posts(args, client, &posts_url, &full, rate).await?;
            row.load = format!("{rate}/s, full GET /posts every {} ms, from {held} posts", args.full_poll_ms);
            row.full_get = true;
            flows.push(row);
            progress(who, flows.last());
            stack.check_alive()?;
        }
    }

    // Closed loop: as many posts as the pipeline takes.
    let k = args.concurrency as usize;
    eprintln!("{who}: posts, closed loop, {k} clients, {} s", args.duration);
    let applied0 = stack.applied_before(client, &query).await?;
    let cpu_secs = |stack: &Stack| stack.system.as_ref().map_or(vec![], |s| s.cpu_secs());
    let cpu0 = cpu_secs(stack);
    let written = closed_posts(client, &posts_url, k, Duration::from_secs_f64(args.duration), args.max_posts).await;
    let ids: Vec<&str> = written.ids.iter().map(|(id, _)| id.as_str()).collect();
    let visible_at = wait_in_query(client, &query, applied0, &ids, args.drain_timeout, light_every).await?;
    let cpu1 = cpu_secs(stack);
    let missing = verify_visible(client, &query, &written, light).await?;
    let n = written.ids.len() as f64;
    for (f, (a, b)) in procs.iter_mut().zip(cpu0.iter().zip(&cpu1)) {
        f.cpu_s_per_10k_posts = match (a, b) {
            (Some(a), Some(b)) if n > 0.0 => Some((b - a) / n * 1e4),
            _ => None,
        };
    }
    if let Some(system) = &stack.system {
        for (f, p) in procs.iter_mut().zip(&system.procs) {
            f.loaded_rss_mib = p.rss_mib().map(|r| r.0);
        }
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
    progress(who, flows.last());
    stack.check_alive()?;

    let watcher = Watcher::start(client.clone(), query.clone(), light_every, light);
    if light == Read::Paged {
        for &rate in &args.rates {
            eprintln!("{who}: posts, open loop, {rate}/s, {} s", args.rate_duration);
            flows.push(open_posts(args, client, &posts_url, &watcher, rate).await?);
            progress(who, flows.last());
            stack.check_alive()?;
        }
    } else if !args.rates.is_empty() {
        eprintln!(
            "{who}: skipping --rates: the paged poll reads busbar's GET /posts?after=&limit=, which the blog's contract \
             lacks (--full-poll-rates measures write to visible)"
        );
    }
    if !args.comment_rates.is_empty() {
        let comments = stack.comments.clone();
        let needed: u64 = args.comment_rates.iter().map(|r| (r * args.rate_duration).round().max(1.0) as u64).sum();
        eprintln!("{who}: comments: creating {needed} posts to comment on");
        let known0 = stack.applied_before(client, &comments).await?;
        let shown0 = stack.applied_before(client, &query).await?;
        let posts = closed_posts(client, &posts_url, k, Duration::from_secs(3600), needed).await;
        if posts.errors > 0 {
            bail!("creating posts to comment on failed: {}", posts.first_error.unwrap_or_default());
        }
        let mut ids = posts.ids.into_iter().map(|(id, _)| id).collect::<Vec<_>>();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        wait_known_to_comments(client, &comments, known0, &refs, args.drain_timeout, light_every)
            .await?
            .context("comments did not learn of the posts in time")?;
        // And query, so that the comments' runs measure comments, not query still applying
        // these posts (posts are written faster than query applies them).
        wait_in_query(client, &query, shown0, &refs, args.drain_timeout, light_every)
            .await?
            .context("query did not show the posts to comment on in time")?;
        ids.sort();
        let mut ids = ids.into_iter();
        for &rate in &args.comment_rates {
            eprintln!("{who}: comments, open loop, {rate}/s, {} s", args.rate_duration);
            let n = (rate * args.rate_duration).round().max(1.0) as usize;
            let targets: Vec<String> = ids.by_ref().take(n).collect();
            let mut row = open_comments(args, client, &comments, &watcher, rate, targets).await?;
            if light == Read::Full {
                row.load = format!("{rate}/s, full GET /posts every {} ms", args.full_poll_ms);
                row.full_get = true;
            }
            flows.push(row);
            progress(who, flows.last());
            stack.check_alive()?;
        }
    }
    if let Some(system) = &stack.system {
        for (f, p) in procs.iter_mut().zip(&system.procs) {
            f.peak_rss_mib = p.rss_mib().map(|r| r.1);
        }
    }
    Ok((procs, flows))
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
    poll_until(timeout, Duration::from_millis(5), async || Ok(applied(client, base).await? >= target)).await
}

/// Runs `check` every `every` until it says yes; when (`clock`), or `None` once `timeout`
/// seconds have passed.
async fn poll_until(
    timeout: f64,
    every: Duration,
    mut check: impl AsyncFnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<Option<u64>> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(timeout);
    loop {
        if check().await? {
            return Ok(Some(clock::now_ns()));
        }
        if tokio::time::Instant::now() >= deadline {
            return Ok(None);
        }
        tokio::time::sleep(every).await;
    }
}

/// Waits until query's view holds every post of `ids`; when (`clock`), or `None` on
/// timeout. With `applied0` (busbar's counter before the posts) it watches that counter,
/// which costs query nothing; without it (an external stack) it reads the whole
/// `GET /posts`, the contract's read, every `every`.
async fn wait_in_query(
    client: &reqwest::Client,
    query: &str,
    applied0: Option<u64>,
    ids: &[&str],
    timeout: f64,
    every: Duration,
) -> anyhow::Result<Option<u64>> {
    if let Some(n) = applied0 {
        return wait_applied(client, query, n + ids.len() as u64, timeout).await;
    }
    let mut want: std::collections::HashSet<&str> = ids.iter().copied().collect();
    poll_until(timeout, every, async || {
        let (_, view) = full_view(client, query).await?;
        want.retain(|id| !view.contains_key(*id));
        Ok(want.is_empty())
    })
    .await
}

/// Waits until comments knows every post of `ids` (it may refuse comments on posts it
/// has not heard of yet); when (`clock`), or `None` on timeout. With `applied0` it watches
/// busbar's counter; without it, each post's `GET /posts/:id/comments` until it answers
/// 2xx (a comments service that never checks, as the course's, does so at once).
async fn wait_known_to_comments(
    client: &reqwest::Client,
    comments: &str,
    applied0: Option<u64>,
    ids: &[&str],
    timeout: f64,
    every: Duration,
) -> anyhow::Result<Option<u64>> {
    if let Some(n) = applied0 {
        return wait_applied(client, comments, n + ids.len() as u64, timeout).await;
    }
    let mut want: Vec<&str> = ids.to_vec();
    poll_until(timeout, every, async || {
        let known: Vec<bool> = futures::stream::iter(&want)
            .map(|id| async move {
                match client.get(format!("{comments}/posts/{id}/comments")).send().await {
                    Ok(r) if r.status().is_success() => r.bytes().await.is_ok(),
                    _ => false,
                }
            })
            .buffered(32)
            .collect()
            .await;
        let mut known = known.into_iter();
        want.retain(|_| !known.next().unwrap_or(false));
        Ok(want.is_empty())
    })
    .await
}

/// Query's whole `GET /posts`: its size in bytes, and its posts by id.
async fn full_view(
    client: &reqwest::Client,
    query: &str,
) -> anyhow::Result<(u64, std::collections::HashMap<String, serde::de::IgnoredAny>)> {
    let url = format!("{query}/posts");
    let body = client
        .get(&url)
        .send()
        .await
        .with_context(|| format!("GET {url}"))?
        .error_for_status()
        .with_context(|| format!("GET {url}"))?
        .bytes()
        .await
        .with_context(|| format!("GET {url}"))?;
    Ok((body.len() as u64, parse_view(&body, &url)?))
}

/// The posts of a `GET /posts` answer, by id.
fn parse_view(body: &[u8], url: &str) -> anyhow::Result<std::collections::HashMap<String, serde::de::IgnoredAny>> {
    serde_json::from_slice(body).with_context(|| format!("GET {url}: not a JSON object of posts"))
}

/// Posts until query's view holds at least `size`, then times `args.reads` full
/// `GET /posts`, one at a time, each to its last byte.
async fn read_view(args: &Args, client: &reqwest::Client, stack: &Stack<'_>, size: u64) -> anyhow::Result<ReadRow> {
    let query = &stack.query;
    let have = full_view(client, query).await?.1.len() as u64;
    if have < size {
        let applied0 = stack.applied_before(client, query).await?;
        let posts_url = format!("{}/posts", stack.posts);
        let more =
            closed_posts(client, &posts_url, args.concurrency as usize, Duration::from_secs(3600), size - have).await;
        if more.errors > 0 {
            bail!("posting up to {size} posts failed: {}", more.first_error.unwrap_or_default());
        }
        let ids: Vec<&str> = more.ids.iter().map(|(id, _)| id.as_str()).collect();
        let every = stack.light_read(args).1;
        wait_in_query(client, query, applied0, &ids, args.drain_timeout, every)
            .await?
            .context("query did not show the posts in time")?;
    }
    let query_pid = stack.system.as_ref().map(|s| s.get("query").pid);
    let peak_reset = query_pid.is_some_and(crate::proc::reset_peak_rss);
    let url = format!("{query}/posts");
    let (mut took, mut bytes, mut posts) = (vec![], 0, 0);
    for i in 0..args.reads {
        let start = clock::now_ns();
        let body = client.get(&url).send().await?.error_for_status()?.bytes().await?;
        took.push(clock::now_ns() - start);
        if i == 0 {
            (bytes, posts) = (body.len() as u64, parse_view(&body, &url)?.len() as u64);
        }
    }
    let peak = query_pid.and_then(crate::proc::rss_mib).map(|r| r.1).filter(|_| peak_reset);
    Ok(ReadRow { posts, bytes, reads: args.reads, latency: stats::latency(&mut took), query_peak_rss_mib: peak })
}

/// Counts written posts that query's view does not show: paged, reading the view from
/// just below the first write's id floor (busbar's query), or the whole `GET /posts`.
async fn verify_visible(client: &reqwest::Client, query: &str, written: &Written, read: Read) -> anyhow::Result<u64> {
    let Some(first_ms) = written.ids.iter().map(|(_, ms)| *ms).min() else { return Ok(0) };
    let mut want: std::collections::HashSet<&str> = written.ids.iter().map(|(id, _)| id.as_str()).collect();
    if read == Read::Full {
        let (_, view) = full_view(client, query).await?;
        want.retain(|id| !view.contains_key(*id));
        return Ok(want.len() as u64);
    }
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
