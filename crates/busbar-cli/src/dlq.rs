//! `busbar dlq`: list and redrive dead letters, on the built-in bus (its HTTP API) or on
//! JetStream (the SDK's [`busbar::transport::jetstream::dlq`]).

use anyhow::{Result, bail};
use busbar::{
    bus_api::DeadLetter,
    transport::jetstream::{JetStream, dlq::DeadLetterError},
    web::one_line,
};
use busbar_client::bus::BusError;
use clap::{Args, Subcommand};

use crate::{
    table,
    target::{Builtin, Connected, Target},
};
/// Most dead letters one listing shows.
const MAX_LIST: usize = 10_000;

/// `busbar dlq`'s arguments; its help text is on `Cmd::Dlq` in main.rs.
#[derive(Args, Debug)]
pub struct DlqArgs {
    #[command(subcommand)]
    cmd: DlqCmd,
    #[command(flatten)]
    target: Target,
}

#[derive(Subcommand, Debug)]
enum DlqCmd {
    /// List dead letters, oldest first: id, subscriber, event, attempts, when, error.
    List {
        /// Only this subscriber's.
        #[arg(long, short)]
        subscriber: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..=MAX_LIST as u64))]
        limit: u64,
    },
    /// Deliver dead letters again, to the subscriber that gave up on them.
    #[command(group = clap::ArgGroup::new("which").required(true).args(["all", "ids"]))]
    Redrive {
        /// Every dead letter (of --subscriber, if given).
        #[arg(long)]
        all: bool,
        /// The ids to redrive, as `busbar dlq list` shows them.
        #[arg(value_name = "ID")]
        ids: Vec<u64>,
        /// Only this subscriber's; with ids, each must be this subscriber's.
        #[arg(long, short)]
        subscriber: Option<String>,
    },
}

pub fn run(args: DlqArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        match args.target.connect().await? {
            Connected::JetStream(js) => jetstream(&js, args.cmd, args.target.json).await,
            Connected::Builtin(bus) => builtin(&bus, args.cmd, args.target.json).await,
        }
    })
}

async fn jetstream(js: &JetStream, cmd: DlqCmd, json: bool) -> Result<()> {
    match cmd {
        DlqCmd::List { subscriber, limit } => {
            let list = js.list_dead_letters(subscriber.as_deref(), 0, limit as usize).await?;
            print_list(&list, json);
        }
        DlqCmd::Redrive { all: true, subscriber, .. } => {
            let done = js.redrive_all(subscriber.as_deref()).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&done)?);
            } else {
                for d in &done {
                    println!("redriven {} ({}) to {}", d.id, d.event_id.as_deref().unwrap_or("-"), d.subscriber);
                }
                match done.len() {
                    0 => println!("no dead letters to redrive"),
                    n => println!("{n} dead letter(s) redriven"),
                }
            }
        }
        DlqCmd::Redrive { ids, subscriber, .. } => {
            let (mut done, mut failed) = (vec![], vec![]);
            for id in ids {
                match js.redrive(id, subscriber.as_deref()).await {
                    Ok(d) => {
                        if !json {
                            println!(
                                "redriven {} ({}) to {}",
                                d.id,
                                d.event_id.as_deref().unwrap_or("-"),
                                d.subscriber
                            );
                        }
                        done.push(d);
                    }
                    // Unknown ids do not stop the others.
                    Err(e @ DeadLetterError::NotFound { .. }) => failed.push(e.to_string()),
                    Err(e) => return Err(e.into()),
                }
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&done)?);
            }
            finish(failed)?;
        }
    }
    Ok(())
}

fn finish(failed: Vec<String>) -> Result<()> {
    match failed.len() {
        0 => Ok(()),
        1 => bail!("{}", failed[0]),
        _ => bail!("{}", failed.join("\n  ")),
    }
}

async fn builtin(bus: &Builtin, cmd: DlqCmd, json: bool) -> Result<()> {
    match cmd {
        DlqCmd::List { subscriber, limit } => {
            let list = bus.dead_letters(subscriber.as_deref(), limit).await?;
            print_list(&list, json);
        }
        DlqCmd::Redrive { all: true, subscriber, .. } => {
            let done = bus.bus.redrive_all(subscriber.as_deref()).await.map_err(|e| bus.explain(e))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&done)?);
            } else {
                match done.redriving {
                    0 => println!("no dead letters to redrive"),
                    n => println!("{n} dead letter(s) handed back to the bus for redelivery{}", redelivery_note()),
                }
            }
        }
        DlqCmd::Redrive { ids, subscriber, .. } => {
            // The bus redrives by id alone; with --subscriber, check each id is theirs.
            let theirs: Option<Vec<u64>> = match &subscriber {
                Some(s) => Some(bus.dead_letters(Some(s), MAX_LIST as u64).await?.iter().map(|d| d.id).collect()),
                None => None,
            };
            let (mut done, mut failed) = (vec![], vec![]);
            for id in ids {
                if let (Some(theirs), Some(s)) = (&theirs, &subscriber)
                    && !theirs.contains(&id)
                {
                    failed.push(format!("no dead letter {id} for subscriber {s}; `busbar dlq list` shows the ids"));
                    continue;
                }
                match bus.bus.redrive(id).await {
                    Ok(_) => {
                        if !json {
                            println!("dead letter {id} handed back to the bus for redelivery");
                        }
                        done.push(id);
                    }
                    Err(BusError::NotFound { .. }) => {
                        failed.push(format!("no dead letter {id} waiting for redrive; `busbar dlq list` shows the ids"))
                    }
                    Err(e) => return Err(bus.explain(e)),
                }
            }
            if json {
                println!("{}", serde_json::json!({ "redriving": done }));
            } else if !done.is_empty() {
                println!("{}", redelivery_note().trim_start_matches("; "));
            }
            finish(failed)?;
        }
    }
    Ok(())
}

fn redelivery_note() -> &'static str {
    "; the bus delivers them now, and one that fails again returns to `busbar dlq list`"
}

fn print_list(list: &[DeadLetter], json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(list).expect("serializes"));
        return;
    }
    if list.is_empty() {
        println!("no dead letters");
        return;
    }
    let header = ["ID", "SUBSCRIBER", "EVENT", "TYPE", "ATTEMPTS", "DEAD AT", "STATE", "ERROR"];
    let cells: Vec<Vec<String>> = list
        .iter()
        .map(|d| {
            [
                d.id.to_string(),
                d.subscriber.clone(),
                d.event_id.clone().unwrap_or_else(|| "-".into()),
                d.ty.clone().unwrap_or_else(|| "-".into()),
                d.attempts.to_string(),
                time_text(d.dead_at),
                d.state.to_string(),
                one_line(&d.last_error, 100),
            ]
            .into()
        })
        .collect();
    table::print(&header, &cells);
    println!("{} dead letter(s); `busbar dlq list --json` shows the events and full errors", list.len());
}

/// Milliseconds since the epoch as UTC `YYYY-MM-DDTHH:MM:SSZ`.
fn time_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_show_as_utc() {
        assert_eq!(time_text(0), "1970-01-01T00:00:00Z");
        assert_eq!(time_text(i64::MAX), "-");
    }
}
