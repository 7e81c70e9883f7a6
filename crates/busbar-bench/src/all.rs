//! `all`: every scenario in turn, and the Markdown that becomes BENCHMARKS.md. The
//! scenarios take their usual defaults except where noted; each records the load average
//! when it ended, because the machine is shared.

use std::{fmt::Write as _, path::PathBuf};

use anyhow::Context;
use clap::Parser;
use serde::Serialize;

use crate::{
    blog::{self, BlogSummary},
    bus_raw,
    proc::{self, BusOpts},
    replay::{self, ReplaySummary},
    report::{Machine, Summary},
    shop::{self, ShopSummary},
    stats::Latency,
};

#[derive(clap::Args, Debug)]
pub struct Args {
    /// Also write the results as Markdown to this file (e.g. BENCHMARKS.md).
    #[arg(long, value_name = "FILE")]
    pub write: Option<PathBuf>,

    /// Every scenario's smoke mode: proves the program works in about a minute, figures
    /// meaningless.
    #[arg(long)]
    pub smoke: bool,

    /// Events in the log for the replay scenario.
    #[arg(long, default_value_t = 1_000_000)]
    pub replay_events: u64,

    /// The NATS server for every jetstream run (see bus-raw).
    #[arg(long, env = "BUSBAR_TEST_NATS_URL", value_name = "URL")]
    pub nats_url: Option<String>,

    /// PostgreSQL admin URL for the blog's and the shop's postgres runs.
    #[arg(long, env = "BUSBAR_TEST_PG_URL", default_value = "postgres://postgres@127.0.0.1:5432/postgres")]
    pub pg_url: String,

    #[command(flatten)]
    pub bus: BusOpts,
}

#[derive(Serialize)]
pub struct AllSummary {
    pub machine: Machine,
    pub command: String,
    pub load_average_start: String,
    pub binaries: Vec<(String, Option<u64>)>,
    pub bus_raw: Summary,
    pub bus_raw_load: String,
    pub blog: BlogSummary,
    pub shop: ShopSummary,
    pub replay: ReplaySummary,
    pub replay_load: String,
}

/// Builds a scenario's arguments the way its command line would, so every default is the
/// scenario's own.
fn parse<T: clap::Args>(args: Vec<String>) -> T {
    #[derive(Parser)]
    struct Wrap<T: clap::Args> {
        #[command(flatten)]
        inner: T,
    }
    Wrap::<T>::parse_from(std::iter::once("busbar-bench".to_owned()).chain(args)).inner
}

pub async fn run(args: Args) -> anyhow::Result<AllSummary> {
    let load_average_start = proc::load_average();
    let mut common = vec![];
    if let Some(url) = &args.nats_url {
        common.push(format!("--nats-url={url}"));
    }
    let mut bus = common.clone();
    if let Some(bin) = &args.bus.bus_bin {
        bus.push(format!("--bus-bin={}", bin.display()));
    }
    bus.extend(args.bus.bus_args.iter().map(|a| format!("--bus-arg={a}")));
    let smoke = if args.smoke { vec!["--smoke".to_owned()] } else { vec![] };

    // Scale: 1 to 8 subscribers; the open-loop rates of the targets.
    let mut raw: Vec<String> =
        ["--subscribers=1,2,4,8", "--rates=500,1000,2000,5000", "--duration=5", "--rate-duration=3"]
            .map(str::to_owned)
            .into();
    raw.extend(bus.clone());
    raw.extend(smoke.clone());
    let bus_raw = bus_raw::run(parse(raw)).await.context("bus-raw")?;
    let bus_raw_load = proc::load_average();

    let mut b = common.clone();
    b.push(format!("--pg-url={}", args.pg_url));
    b.extend(smoke.clone());
    let mut blog = blog::run(parse(b)).await.context("blog")?;
    // What tracing costs: the same blog on SQLite and the built-in bus, every process
    // exporting its spans; its rows sit beside the others in the blog tables.
    let mut traced = common.clone();
    traced.extend(
        [
            "--backends=sqlite",
            "--transports=builtin",
            "--rates=1000",
            "--comment-rates=500",
            "--trace-export",
            "--no-reads",
        ]
        .map(str::to_owned),
    );
    traced.extend(smoke.clone());
    blog.runs.extend(blog::run(parse(traced)).await.context("blog with trace export")?.runs);

    let mut sh = common.clone();
    sh.push(format!("--pg-url={}", args.pg_url));
    sh.extend(smoke.clone());
    let shop = shop::run(parse(sh)).await.context("shop")?;

    let mut r = bus.clone();
    r.push(format!("--events={}", args.replay_events));
    r.extend(smoke);
    let replay = replay::run(parse(r)).await.context("replay")?;
    let replay_load = proc::load_average();

    let mut command = "busbar-bench all".to_owned();
    if args.smoke {
        command.push_str(" --smoke");
    }
    if args.replay_events != 1_000_000 {
        let _ = write!(command, " --replay-events {}", args.replay_events);
    }
    let summary = AllSummary {
        machine: Machine::detect(),
        command,
        load_average_start,
        binaries: binary_sizes(),
        bus_raw,
        bus_raw_load,
        blog,
        shop,
        replay,
        replay_load,
    };
    if let Some(path) = &args.write {
        let before = std::fs::read_to_string(path).ok();
        let text = with_hand_written(markdown(&summary), before.as_deref());
        std::fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))?;
        eprintln!("[all] wrote {}", path.display());
    }
    Ok(summary)
}

/// Where BENCHMARKS.md's hand-written part begins (studies measured separately, with their
/// own dates and commands): `--write` keeps everything from this line on.
pub const HAND_WRITTEN: &str =
    "<!-- Everything below this line is written by hand; `busbar-bench all --write` keeps it as it is. -->";

/// The generated report followed by the hand-written part of what the file held before,
/// if it had one.
fn with_hand_written(generated: String, before: Option<&str>) -> String {
    match before.and_then(|b| b.find(HAND_WRITTEN).map(|at| &b[at..])) {
        Some(kept) => format!(
            "{}

{kept}",
            generated.trim_end()
        ),
        None => generated,
    }
}

/// The programs a deployment ships, from this program's own directory (the profile it
/// was built with); `None` when one is not built there.
fn binary_sizes() -> Vec<(String, Option<u64>)> {
    let dir = std::env::current_exe().ok().and_then(|p| p.parent().map(PathBuf::from));
    ["busbar", "event-bus", "posts", "comments", "moderation", "query", "users", "products", "orders", "user-products"]
        .iter()
        .map(|name| {
            let size = dir.as_ref().and_then(|d| std::fs::metadata(d.join(name)).ok()).map(|m| m.len());
            (name.to_string(), size)
        })
        .collect()
}

fn ms(l: &Option<Latency>, f: fn(&Latency) -> f64) -> String {
    match l {
        Some(l) => {
            let v = f(l);
            if v >= 100.0 { format!("{v:.0}") } else { format!("{v:.1}") }
        }
        None => "-".into(),
    }
}

fn opt(v: Option<f64>, digits: usize) -> String {
    v.map_or("-".into(), |v| format!("{v:.digits$}"))
}

/// Met if every figure is measured and meets its goal; unknown if any is not measured.
fn all_met(each: impl Iterator<Item = Option<bool>>) -> Option<bool> {
    each.collect::<Option<Vec<_>>>().map(|v| v.iter().all(|m| *m))
}

fn rate(v: f64) -> String {
    format!("{v:.0}")
}

/// The whole of BENCHMARKS.md.
pub fn markdown(s: &AllSummary) -> String {
    let m = &s.machine;
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(w, "# Benchmarks\n");
    let _ = writeln!(
        w,
        "Generated by `{}` (regenerate with `cargo xtask bench`, which builds the release binaries and runs \
         `target/release/busbar-bench all --write BENCHMARKS.md`). These are benchmarks, not tests: nothing here is \
         asserted; the program fails only if an event or a write was lost.\n",
        s.command
    );
    let _ = writeln!(w, "- **Date:** {}", m.date);
    let _ = writeln!(w, "- **Machine:** {} CPUs, {}, {}", m.cpus, m.cpu_model, m.os);
    let _ = writeln!(
        w,
        "- **Load average** (1, 5, 15 min): {} at the start; {} after bus-raw; {} after the blog; {} after replay. \
         The machine is a shared, noisy VM (other jobs compile on it), so compare ratios and medians rather than \
         single figures.",
        s.load_average_start,
        s.bus_raw_load,
        s.blog.runs.last().map_or("-", |r| r.load_average.as_str()),
        s.replay_load
    );
    if let Some(n) = &s.blog.nats {
        let own = if n.throwaway { ", started for the run" } else { "" };
        let _ = writeln!(w, "- **NATS:** {} {}{own}", n.url, n.server_version);
    }
    let _ = writeln!(w);
    let _ = writeln!(w, "{}", METHOD);
    let _ = writeln!(w, "{}", COMPARING);
    out.push_str(&targets_markdown(s));
    out.push_str(&blog_markdown(&s.blog));
    out.push_str(&shop::markdown(&s.shop));
    out.push_str(&bus_raw_markdown(&s.bus_raw));
    out.push_str(&replay_markdown(&s.replay));
    let w = &mut out;
    let _ = writeln!(w, "## Release binaries\n\n| program | size |\n|---|---:|");
    for (name, size) in &s.binaries {
        let size = size.map_or("not built".into(), |b| format!("{:.1} MiB", b as f64 / (1 << 20) as f64));
        let _ = writeln!(w, "| {name} | {size} |");
    }
    let _ = writeln!(
        w,
        "\n`busbar` holds the built-in bus (`busbar __serve event-bus`, what `busbar up` and these benchmarks run); \
         each service is a program of its own, as in its container image."
    );
    out
}

/// How to point the blog's load at another stack (`blog --target-url`).
const COMPARING: &str = "## Comparing with another stack

`busbar-bench blog --target-url posts=URL,comments=URL,query=URL` (or a bare `http://HOST` for ports 4000, 4001 and
4002) drives the same blog load at a stack this benchmark did not start, such as the course's Node.js blog, so the
two can be compared like with like on one machine. Start each stack fresh and alone (the posts and comments the
benchmark writes stay in it), for example `busbar up` from the repository, then:

```
target/release/busbar-bench blog --target-url http://127.0.0.1
```

It starts nothing and uses only the blog's HTTP contract (DESIGN.md): `POST /posts`, `POST` and `GET
/posts/:id/comments`, and query's `GET /posts`. Every wait reads query's whole `GET /posts` (before commenting, each
post's `GET /posts/:id/comments` until it answers 2xx), never busbar's `/metrics`. It measures posts visible per
second (closed loop), write to visible at `--full-poll-rates` while a client polls the whole `GET /posts` (the course
client's read), comments reaching `approved` at `--comment-rates` (seen by the same full poll), and full `GET /posts`
reads at `--read-sizes`. The report lists as not measured what needs more than the contract: CPU per post,
start-to-ready and RSS need the stack's processes, whose PIDs the benchmark does not know (measure them yourself over
the closed loop, e.g. with `pidstat`), and the paged `--rates` runs read busbar's `GET /posts?after=&limit=`.
";

const METHOD: &str = "## Method

Everything runs on this one machine over loopback, each run bounded in events and time.

- **blog**: the reference app as separate processes, started from the plan `busbar up` uses (the repository's
  ServiceBus manifest, the bus as `busbar __serve event-bus` and each service as its own program, the same `BUSBAR_*` wiring), on fresh databases (a SQLite
  file per service, or a PostgreSQL database per service on the local server) and a fresh bus (the built-in
  event bus, or a JetStream stream). Clients use the public API only. *Visible* means present in query's
  `GET /posts` (for comments: with status `approved`); the benchmark polls it every 2 ms (one page,
  `?after=<id>&limit=1000`, starting below the oldest write not yet seen), so latencies include up to one poll
  interval plus one read. Closed loop: 32 clients post as fast as they are answered for 5 s; `visible/s` is posts
  divided by the time from the first request until query had applied all of them. Open loop: a fixed rate, each
  write stamped with its scheduled time (queueing in the client counts as latency). The course client's read (the
  whole `GET /posts`, polled every 5 ms and parsed, `--full-poll-rates`) runs first, on the fresh view, and each row
  says how many posts the view held when it began: what the client reads and parses grows with the view. Comments:
  one comment per post on posts comments already knows; the path is comments → bus → moderation → bus → comments →
  bus → query.
- **shop**: the second app, started the same way from `k8s/shop/servicebus.yaml`. 20 users and 100 products are
  created first; then orders (quantity 1) go through `POST /orders`. *Visible* means counted in user-products'
  `GET /users/:id/products` (orders → bus → user-products), polled every 2 ms for each user with an order not yet
  seen. Closed loop: 32 clients for 5 s, `visible/s` up to the moment user-products had applied every order. Open
  loop: a fixed rate, each order on a (user, product) pair with a known count to reach.
- **Footprint**: start-to-ready is spawn to the first `/readyz` 200 on a fresh database, each process started and
  waited for in turn. Idle RSS one second after all are ready; loaded RSS at the end of the closed loop; peak RSS is
  the process's high-water mark (VmHWM) at the end. CPU is user+system time of each process over the closed loop per
  10,000 posts. PostgreSQL's and nats-server's own CPU are not in these figures.
- **bus-raw**: the bus alone with in-process subscribers that only acknowledge: the built-in bus (SQLite, fsync on
  every commit) and JetStream (file storage). 8 publishers x 100-event batches closed loop for 5 s, then fixed
  rates, 1 to 8 subscribers each getting every event.
- **replay**: a log filled with 1,000,000 events, then read back through the SDK's `Transport::replay` in pages of
  10,000, and by a new subscriber catching up from the beginning.
";

fn targets_markdown(s: &AllSummary) -> String {
    let mut out = String::from("## Targets\n\n| target | goal | measured | met |\n|---|---|---|---|\n");
    let w = &mut out;
    let mut row = |what: &str, goal: &str, measured: String, met: Option<bool>| {
        let met = match met {
            Some(true) => "yes",
            Some(false) => "no",
            None => "-",
        };
        let _ = writeln!(w, "| {what} | {goal} | {measured} | {met} |");
    };
    // A target holds on every transport it names, so each row lists them all.
    let runs_of = |backend: &'static str| {
        s.blog.runs.iter().filter(move |r| r.backend == backend && !r.transport.contains("traces"))
    };
    let closed_of = |backend: &'static str| {
        runs_of(backend)
            .flat_map(|r| r.flows.iter().filter(|f| f.mode == "closed").map(move |f| (r.transport, f.visible_per_s)))
            .collect::<Vec<_>>()
    };
    let list = |v: &[(&str, f64)], unit: &str| {
        v.iter().map(|(t, x)| format!("{x:.0} {unit} ({t})")).collect::<Vec<_>>().join(", ")
    };
    for (backend, name, goal) in [("sqlite", "SQLite", 6000.0), ("postgres", "PostgreSQL", 4000.0)] {
        let closed = closed_of(backend);
        if !closed.is_empty() {
            row(
                &format!("blog on {name}, posts visible in query, closed loop"),
                &format!(">= {},000 posts/s on every transport", goal as u64 / 1000),
                list(&closed, "posts/s"),
                Some(closed.iter().all(|(_, v)| *v >= goal)),
            );
        }
    }
    let open_flow = |backend: &'static str, flow: &'static str, rate: f64, full_get: bool| {
        runs_of(backend)
            .filter_map(move |r| {
                r.flows
                    .iter()
                    .find(|f| f.flow == flow && f.target_per_s == Some(rate) && f.full_get == full_get)
                    .map(|f| (r.transport, f))
            })
            .collect::<Vec<_>>()
    };
    let p99s = |v: &[(&str, &blog::FlowRow)]| {
        v.iter()
            .map(|(t, f)| format!("{} ms ({t})", opt(f.latency.map(|l| l.p99_ms), 1)))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let p99_of = |f: &blog::FlowRow| f.latency.map(|l| l.p99_ms);
    let paged = open_flow("sqlite", "posts", 1000.0, false);
    if !paged.is_empty() {
        let goal = |t: &str| if t == "jetstream" { 8.0 } else { 10.0 };
        row(
            "blog on SQLite at 1,000 posts/s, p99 write to visible (paged poll)",
            "<= 10 ms builtin, <= 8 ms JetStream",
            p99s(&paged),
            all_met(paged.iter().map(|(t, f)| p99_of(f).map(|p| p <= goal(t)))),
        );
    }
    let full = open_flow("sqlite", "posts", 1000.0, true);
    if !full.is_empty() {
        let p50_p99 = |f: &blog::FlowRow| f.latency.map(|l| (l.p50_ms, l.p99_ms));
        row(
            "blog on SQLite at 1,000 posts/s, p50 / p99 write to visible (full GET /posts every 5 ms)",
            "<= 5 / 20 ms",
            full.iter()
                .map(|(t, f)| match p50_p99(f) {
                    Some((a, b)) => format!("{a:.1} / {b:.1} ms ({t})"),
                    None => format!("- ({t})"),
                })
                .collect::<Vec<_>>()
                .join(", "),
            all_met(full.iter().map(|(_, f)| p50_p99(f).map(|(a, b)| a <= 5.0 && b <= 20.0))),
        );
    }
    let comments = open_flow("sqlite", "comments", 1000.0, false);
    if !comments.is_empty() {
        row(
            "blog on SQLite, comments approved at 1,000/s offered, p99 write to visible",
            "<= 50 ms",
            p99s(&comments),
            all_met(comments.iter().map(|(_, f)| p99_of(f).map(|p| p <= 50.0))),
        );
    }
    let fastest = runs_of("sqlite")
        .flat_map(|r| r.flows.iter().filter(|f| f.flow == "comments").map(move |f| (r.transport, f)))
        .max_by(|a, b| a.1.target_per_s.partial_cmp(&b.1.target_per_s).unwrap_or(std::cmp::Ordering::Equal));
    if let Some((t, f)) = fastest {
        let offered = f.target_per_s.unwrap_or_default();
        row(
            "blog on SQLite, comments approved, sustained",
            ">= 2,000 comments/s",
            format!("{:.0} comments/s visible at {offered:.0}/s offered ({t})", f.visible_per_s),
            Some(offered >= 2000.0 && f.visible_per_s >= 2000.0 * 0.98),
        );
    }
    let pg_comments = open_flow("postgres", "comments", 500.0, false);
    if !pg_comments.is_empty() {
        row(
            "blog on PostgreSQL, comments approved at 500/s offered, p99 write to visible",
            "<= 100 ms",
            p99s(&pg_comments),
            all_met(pg_comments.iter().map(|(_, f)| p99_of(f).map(|p| p <= 100.0))),
        );
    }
    if let Some(r) = runs_of("sqlite").find(|r| r.transport == "builtin") {
        let per_post: Option<f64> =
            r.procs.iter().map(|p| p.cpu_s_per_10k_posts).sum::<Option<f64>>().map(|s| s * 100.0);
        if let Some(us) = per_post {
            row(
                "CPU per post, all of busbar's processes together (SQLite, builtin, closed loop)",
                "<= 100 µs",
                format!("{us:.0} µs"),
                Some(us <= 100.0),
            );
        }
    }
    let read_of = |posts: u64| {
        s.blog.reads.iter().find(|r| r.backend == "sqlite").and_then(|r| r.rows.iter().find(|v| v.posts >= posts))
    };
    if let Some(v) = read_of(10_000) {
        let p50 = v.latency.map(|l| l.p50_ms);
        row(
            "query `GET /posts` holding 10,000 posts",
            "<= 3 ms",
            format!("{} ms p50 ({} posts, SQLite)", opt(p50, 1), v.posts),
            p50.map(|p| p <= 3.0),
        );
    }
    let hot = s.blog.reads.iter().find(|r| r.backend == "sqlite").map(|r| &r.hot_post);
    if let Some((first, last)) = hot.and_then(|h| h.first().zip(h.last())) {
        let per = |h: &crate::blog::HotPostRow| opt(h.comments_cpu_ms, 2);
        row(
            "comments CPU per comment, one post with thousands of comments",
            "<= 0.2 ms, flat as the post grows",
            format!(
                "{} ms at {} to {} comments, {} ms at {} to {} (SQLite)",
                per(first),
                first.from,
                first.to,
                per(last),
                last.from,
                last.to
            ),
            last.comments_cpu_ms.map(|c| c <= 0.2),
        );
    }
    if let Some(v) = read_of(50_000) {
        row(
            "peak RSS of query serving `GET /posts` of 50k posts",
            "<= 40 MB",
            format!("{} MiB ({} posts)", opt(v.query_peak_rss_mib, 1), v.posts),
            v.query_peak_rss_mib.map(|m| m <= 40.0),
        );
    }
    let closed = |transport: &str| {
        s.bus_raw
            .rows
            .iter()
            .find(|r| r.transport == transport && r.subscribers == 1 && r.mode == "closed")
            .map(|r| r.delivered_per_s.iter().copied().fold(f64::INFINITY, f64::min))
    };
    if let Some(v) = closed("builtin") {
        row("built-in bus, one subscriber", ">= 20,000 events/s", format!("{v:.0} events/s"), Some(v >= 20_000.0));
    }
    if let Some(v) = closed("jetstream") {
        row("JetStream, one subscriber", ">= 60,000 events/s", format!("{v:.0} events/s"), Some(v >= 60_000.0));
    }
    let procs = s.blog.runs.iter().flat_map(|r| r.procs.iter());
    let idle = procs.clone().filter_map(|p| p.idle_rss_mib).fold(0.0, f64::max);
    let loaded = procs.clone().filter_map(|p| p.loaded_rss_mib).fold(0.0, f64::max);
    let peak = procs.clone().filter_map(|p| p.peak_rss_mib).fold(0.0, f64::max);
    let ready = procs.clone().map(|p| p.ready_ms).fold(0.0, f64::max);
    row("RSS per service, idle", "<= 20 MB", format!("{idle:.1} MiB (largest)"), Some(idle <= 20.0));
    row(
        "RSS per service under max throughput",
        "<= 60 MB",
        format!("{loaded:.1} MiB at the end of the closed loop, {peak:.1} MiB high-water mark (largest)"),
        Some(peak <= 60.0),
    );
    row("start to ready, slowest process", "<= 100 ms", format!("{ready:.0} ms (slowest)"), Some(ready <= 100.0));
    for r in &s.replay.rows {
        let v = r.pages_per_s.max(r.catch_up_per_s);
        row(
            &format!("replay, {}", r.transport),
            ">= 100,000 events/s",
            format!("{:.0} (pages), {:.0} (new subscriber) events/s", r.pages_per_s, r.catch_up_per_s),
            Some(v >= 100_000.0),
        );
    }
    out.push('\n');
    out
}

/// The blog's tables.
pub fn blog_markdown(s: &BlogSummary) -> String {
    let mut out = String::from("## Blog pipeline\n\n");
    let w = &mut out;
    if let Some(e) = &s.external {
        let _ = writeln!(
            w,
            "An external stack (`--target-url`), started elsewhere: posts {}, comments {}, query {}. Every wait read \
             only the blog's HTTP contract: query's whole `GET /posts`, and comments' `GET /posts/:id/comments`.\n\n\
             Not measured (external stack):\n",
            e.urls.posts, e.urls.comments, e.urls.query
        );
        for what in &e.not_measured {
            let _ = writeln!(w, "- {what}");
        }
        let _ = writeln!(w);
    }
    let not_measured = "not measured (external stack)";
    let _ = writeln!(
        w,
        "| db | transport | flow | load | written | written/s | visible/s | p50 ms | p90 ms | p99 ms | max ms | 201 p50 | 201 p99 | errors | missing |\n\
         |---|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in &s.runs {
        for f in &r.flows {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {} {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.backend,
                r.transport,
                f.flow,
                f.mode,
                f.load,
                f.written,
                rate(f.written_per_s),
                rate(f.visible_per_s),
                ms(&f.latency, |l| l.p50_ms),
                ms(&f.latency, |l| l.p90_ms),
                ms(&f.latency, |l| l.p99_ms),
                ms(&f.latency, |l| l.max_ms),
                ms(&f.write_latency, |l| l.p50_ms),
                ms(&f.write_latency, |l| l.p99_ms),
                f.errors,
                f.missing
            );
        }
    }
    let _ = writeln!(
        w,
        "\np50..max: write (its scheduled time) to visible in query; 201: write to its answer. Load average after \
         each system: {}.\n",
        s.runs
            .iter()
            .map(|r| format!("{}/{} {}", r.backend, r.transport, r.load_average))
            .collect::<Vec<_>>()
            .join("; ")
    );
    let _ = writeln!(
        w,
        "### Reading the whole view\n\n| db | transport | posts | MB | reads | p50 ms | max ms | query peak RSS MiB |\n\
         |---|---|---:|---:|---:|---:|---:|---:|"
    );
    for r in &s.reads {
        for v in &r.rows {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {:.1} | {} | {} | {} | {} |",
                r.backend,
                r.transport,
                v.posts,
                v.bytes as f64 / 1e6,
                v.reads,
                ms(&v.latency, |l| l.p50_ms),
                ms(&v.latency, |l| l.max_ms),
                match s.external {
                    Some(_) => not_measured.into(),
                    None => opt(v.query_peak_rss_mib, 1),
                }
            );
        }
    }
    let _ = writeln!(
        w,
        "\nFull `GET /posts` one after another, each timed to its last byte, once query holds at least that many \
         posts; query's peak RSS is its high-water mark over those reads.\n"
    );
    if s.reads.iter().any(|r| !r.hot_post.is_empty()) {
        let _ = writeln!(
            w,
            "### One post taking many comments\n\n| db | transport | comments on the post | comments CPU ms per comment | \
             query CPU ms per comment | answer kB | 201 p50 ms | 201 p99 ms |\n|---|---|---|---:|---:|---:|---:|---:|"
        );
        // A process's CPU needs its PID, which an external stack does not give.
        let cpu = |ms: Option<f64>| if s.external.is_some() { not_measured.to_owned() } else { opt(ms, 2) };
        for r in &s.reads {
            for h in &r.hot_post {
                let _ = writeln!(
                    w,
                    "| {} | {} | {} to {} | {} | {} | {:.0} | {} | {} |",
                    r.backend,
                    r.transport,
                    h.from,
                    h.to,
                    cpu(h.comments_cpu_ms),
                    cpu(h.query_cpu_ms),
                    h.answer_bytes as f64 / 1e3,
                    ms(&h.latency, |l| l.p50_ms),
                    ms(&h.latency, |l| l.p99_ms),
                );
            }
        }
        let _ = writeln!(
            w,
            "\nOne new post, then comments on it one after another, each answered with the post's whole array (the \
             contract's answer, so its size grows with the post); CPU is the comments process's over each step, the \
             moderation decisions it applies included, and the query process's, which applies each comment's creation \
             and moderation to the post's document.\n"
        );
    }
    let _ = writeln!(
        w,
        "### Footprint\n\n| db | transport | process | start to ready ms | idle RSS MiB | loaded RSS MiB | peak RSS MiB | CPU s / 10k posts |\n\
         |---|---|---|---:|---:|---:|---:|---:|"
    );
    for r in &s.runs {
        if s.external.is_some() {
            let _ = writeln!(
                w,
                "| {} | {} | every process | {not_measured} | {not_measured} | {not_measured} | {not_measured} | \
                 {not_measured} |",
                r.backend, r.transport
            );
        }
        for p in &r.procs {
            let _ = writeln!(
                w,
                "| {} | {} | {} | {:.0} | {} | {} | {} | {} |",
                r.backend,
                r.transport,
                p.name,
                p.ready_ms,
                opt(p.idle_rss_mib, 1),
                opt(p.loaded_rss_mib, 1),
                opt(p.peak_rss_mib, 1),
                opt(p.cpu_s_per_10k_posts, 2)
            );
        }
    }
    out.push('\n');
    out
}

fn bus_raw_markdown(s: &Summary) -> String {
    let mut out = String::from(
        "## Bus alone (bus-raw), 1 to 8 subscribers\n\n\
         | transport | subs | load | events | publish/s | deliver/s (slowest) | p50 ms | p90 ms | p99 ms | max ms | bus cpu % | missing |\n\
         |---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let w = &mut out;
    for r in &s.rows {
        let slowest = r.delivered_per_s.iter().copied().fold(f64::INFINITY, f64::min);
        let _ = writeln!(
            w,
            "| {} | {} | {} {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.transport,
            r.subscribers,
            r.mode,
            r.load,
            r.accepted,
            rate(r.published_per_s),
            rate(if slowest.is_finite() { slowest } else { 0.0 }),
            ms(&r.latency, |l| l.p50_ms),
            ms(&r.latency, |l| l.p90_ms),
            ms(&r.latency, |l| l.p99_ms),
            ms(&r.latency, |l| l.max_ms),
            opt(r.bus_cpu_pct, 0),
            r.missing
        );
    }
    let _ = writeln!(
        w,
        "\nEvents of {} bytes. p50..max: publish to receipt by the subscriber. bus cpu: the event-bus process, or \
         nats-server, 100 = one core.\n",
        s.event_bytes
    );
    out
}

pub fn replay_markdown(s: &ReplaySummary) -> String {
    let mut out = String::from(
        "## Replay\n\n| transport | events in the log | fill events/s | read in pages events/s | new subscriber events/s |\n\
         |---|---:|---:|---:|---:|\n",
    );
    let w = &mut out;
    for r in &s.rows {
        let _ = writeln!(
            w,
            "| {} | {} | {} | {} | {} |",
            r.transport,
            r.events,
            rate(r.fill_per_s),
            rate(r.pages_per_s),
            rate(r.catch_up_per_s)
        );
    }
    let _ = writeln!(w, "\nPages of {} events, decoded into CloudEvents as the SDK's backfill does.\n", s.page);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::blog::{External, FlowRow, ReadRow, ReadRun, SystemRun};

    #[test]
    fn an_external_stack_is_reported_with_what_was_not_measured() {
        let urls = crate::target::parse("http://127.0.0.1").unwrap();
        let flow = FlowRow {
            flow: "posts",
            mode: "closed",
            load: "32 clients".into(),
            target_per_s: None,
            full_get: false,
            written: 100,
            errors: 0,
            first_error: None,
            written_per_s: 50.0,
            visible_per_s: 40.0,
            latency: None,
            write_latency: None,
            missing: 0,
        };
        let read = ReadRow { posts: 10, bytes: 1000, reads: 2, latency: None, query_peak_rss_mib: None };
        let s = BlogSummary {
            busbar_bin: None,
            external: Some(External { urls, not_measured: vec!["CPU per post"] }),
            nats: None,
            poll_ms: 2.0,
            runs: vec![SystemRun {
                backend: blog::EXTERNAL,
                transport: "-",
                procs: vec![],
                flows: vec![flow],
                load_average: "0 0 0".into(),
            }],
            reads: vec![ReadRun { backend: blog::EXTERNAL, transport: "-", rows: vec![read], hot_post: vec![] }],
            ok: true,
        };
        let md = blog_markdown(&s);
        assert!(
            md.contains("posts http://127.0.0.1:4000, comments http://127.0.0.1:4001, query http://127.0.0.1:4002")
        );
        assert!(md.contains("Not measured (external stack):\n\n- CPU per post\n"), "{md}");
        assert!(md.contains("| external | - | posts | closed 32 clients | 100 | 50 | 40 |"), "{md}");
        assert!(md.contains("| external | - | 10 | 0.0 | 2 | - | - | not measured (external stack) |"), "{md}");
        assert!(md.contains("| external | - | every process | not measured (external stack) |"), "{md}");
    }

    #[test]
    fn writing_keeps_the_hand_written_part_and_replaces_the_rest() {
        let before = format!("# Benchmarks\n\nold figures\n\n{HAND_WRITTEN}\n\n## A study\n\nkept ✓\n");
        let after = with_hand_written("# Benchmarks\n\nnew figures\n".into(), Some(&before));
        assert_eq!(after, format!("# Benchmarks\n\nnew figures\n\n{HAND_WRITTEN}\n\n## A study\n\nkept ✓\n"));
        // Written twice, the part is there once.
        assert_eq!(with_hand_written("# Benchmarks\n\nnew figures\n".into(), Some(&after)), after);
        // A file without the marker (or no file) is replaced whole.
        assert_eq!(with_hand_written("new\n".into(), Some("old\n")), "new\n");
        assert_eq!(with_hand_written("new\n".into(), None), "new\n");
    }
}
