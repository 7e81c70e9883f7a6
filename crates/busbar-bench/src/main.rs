//! busbar-bench: a benchmark program (not a test suite). It runs a scenario, prints
//! throughput and latency figures, and fails only when events were lost — never on timing.
//!
//! Each scenario is a module with its own clap `Args`; add one by adding a variant to
//! `Scenario`.

mod all;
mod blog;
mod bus_raw;
mod clock;
mod load;
mod nats;
mod otlp_sink;
mod proc;
mod replay;
mod report;
mod shop;
mod stats;
mod subscriber;
mod system;
mod target;
mod watch;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Benchmarks for busbar. Prints figures; judges only correctness.
///
/// Build in release mode first, or the figures describe the debug build:
/// `cargo build --release -p event-bus -p busbar-cli -p busbar-bench`, then
/// `target/release/busbar-bench all` (or one scenario). `cargo xtask bench` does both
/// and rewrites BENCHMARKS.md.
#[derive(Parser, Debug)]
#[command(name = "busbar-bench", version)]
struct Cli {
    /// Print a JSON summary on stdout instead of the table (progress still goes to stderr).
    #[arg(long, global = true)]
    json: bool,

    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand, Debug)]
enum Scenario {
    /// The bus alone, per transport side by side. builtin: publishers POST CloudEvents
    /// over loopback HTTP, the bus (a child process, SQLite in a temp dir) pushes them to
    /// in-process subscribers that only acknowledge. jetstream: publishers use the SDK's
    /// JetStream transport, in-process durable pull consumers only acknowledge. Reports
    /// the most the bus accepts and delivers (closed loop) and publish-to-delivery latency
    /// at fixed offered rates (open loop). Each subscriber count gets a fresh bus (a fresh
    /// stream). Exits 1 only if an acknowledged event did not reach every subscriber;
    /// timings are reported, never judged.
    BusRaw(bus_raw::Args),
    /// The blog end to end, as separate processes started from `busbar up`'s plan, per
    /// database and transport: posts/s visible in query (closed loop), write-to-visible
    /// latency at fixed rates for posts and for comments reaching `approved`, and each
    /// process's start-to-ready time, idle and peak RSS and CPU per 10k posts. Exits 1 only
    /// if a write never became visible.
    Blog(blog::Args),
    /// The shop end to end, as separate processes started from `busbar up`'s plan, per
    /// database and transport: orders/s counted in user-products' view (closed loop),
    /// order-to-visible latency at fixed rates, and each process's CPU per 10k orders.
    /// Exits 1 only if an order never became visible.
    Shop(shop::Args),
    /// A log already holding many events (1M by default), read back page by page through
    /// the SDK's replay and by a new subscriber catching up, per transport.
    Replay(replay::Args),
    /// Every scenario in turn (bus-raw with 1 to 8 subscribers, blog, shop, replay), plus
    /// release binary sizes; with --write, also as the Markdown of BENCHMARKS.md.
    All(all::Args),
}

/// What a scenario measured.
#[derive(serde::Serialize)]
#[serde(untagged)]
enum Output {
    BusRaw(report::Summary),
    Blog(blog::BlogSummary),
    Shop(shop::ShopSummary),
    Replay(replay::ReplaySummary),
    All(Box<all::AllSummary>),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    clock::now_ns(); // fixes the clock's origin before anything is stamped
    let run = async {
        anyhow::Ok(match cli.scenario {
            Scenario::BusRaw(args) => Output::BusRaw(bus_raw::run(args).await?),
            Scenario::Blog(args) => Output::Blog(blog::run(args).await?),
            Scenario::Shop(args) => Output::Shop(shop::run(args).await?),
            Scenario::Replay(args) => Output::Replay(replay::run(args).await?),
            Scenario::All(args) => Output::All(Box::new(all::run(args).await?)),
        })
    };
    // On Ctrl-C, dropping the run stops the bus (kill_on_drop) and removes the temp dir;
    // dying to the signal instead would leave both behind. JetStream streams on a server
    // we do not own are deleted here.
    let output = tokio::select! {
        s = run => s,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    nats::delete_leftovers().await;
    let output = match output {
        Ok(s) => s,
        Err(e) => {
            eprintln!("busbar-bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&output).expect("the summary serializes"));
    } else {
        match &output {
            Output::BusRaw(s) => report::print_table(s),
            Output::Blog(s) => print!("{}", all::blog_markdown(s)),
            Output::Shop(s) => print!("{}", shop::markdown(s)),
            Output::Replay(s) => print!("{}", all::replay_markdown(s)),
            Output::All(s) => print!("{}", all::markdown(s)),
        }
    }
    let lost = match &output {
        Output::BusRaw(s) => lost_bus_raw(s),
        Output::Blog(s) => lost_blog(s),
        Output::Shop(s) => lost_shop(s),
        Output::Replay(_) => 0,
        Output::All(s) => lost_bus_raw(&s.bus_raw) + lost_blog(&s.blog) + lost_shop(&s.shop),
    };
    if lost > 0 {
        eprintln!(
            "busbar-bench: FAILED: {lost} acknowledged events or writes never reached their subscriber or the app's view \
             (see the `missing` column)"
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}

fn lost_bus_raw(s: &report::Summary) -> u64 {
    s.rows.iter().map(|r| r.missing).sum()
}

fn lost_blog(s: &blog::BlogSummary) -> u64 {
    s.runs.iter().flat_map(|r| &r.flows).map(|f| f.missing).sum()
}

fn lost_shop(s: &shop::ShopSummary) -> u64 {
    s.runs.iter().flat_map(|r| &r.rows).map(|r| r.missing).sum()
}
