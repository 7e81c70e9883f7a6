//! busbar-bench: a benchmark program (not a test suite). It runs a scenario, prints
//! throughput and latency figures, and fails only when events were lost — never on timing.
//!
//! Each scenario is a module with its own clap `Args`; add one by adding a variant to
//! `Scenario`.

mod bus_raw;
mod clock;
mod load;
mod nats;
mod proc;
mod report;
mod stats;
mod subscriber;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Benchmarks for busbar. Prints figures; judges only correctness.
///
/// Build in release mode first, or the figures describe the debug build:
/// `cargo build --release -p event-bus -p busbar-bench`, then
/// `target/release/busbar-bench bus-raw`.
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
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    clock::now_ns(); // fixes the clock's origin before anything is stamped
    let run = async {
        match cli.scenario {
            Scenario::BusRaw(args) => bus_raw::run(args).await,
        }
    };
    // On Ctrl-C, dropping the run stops the bus (kill_on_drop) and removes the temp dir;
    // dying to the signal instead would leave both behind. JetStream streams on a server
    // we do not own are deleted here.
    let summary = tokio::select! {
        s = run => s,
        _ = tokio::signal::ctrl_c() => Err(anyhow::anyhow!("interrupted")),
    };
    nats::delete_leftovers().await;
    let summary = match summary {
        Ok(s) => s,
        Err(e) => {
            eprintln!("busbar-bench: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    if cli.json {
        println!("{}", serde_json::to_string_pretty(&summary).expect("the summary serializes"));
    } else {
        report::print_table(&summary);
    }
    if !summary.ok {
        let lost: u64 = summary.rows.iter().map(|r| r.missing).sum();
        eprintln!(
            "busbar-bench: FAILED: {lost} acknowledged event deliveries never reached their subscriber \
             (see the `missing` column)"
        );
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
