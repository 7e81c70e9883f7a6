//! `busbar dlq`: list and redrive dead letters, on the built-in bus (its HTTP API) or on
//! JetStream (the SDK's [`busbar::transport::jetstream::dlq`]).

use std::path::PathBuf;

use anyhow::{Result, anyhow, bail};
use busbar::{
    bus_api::DeadLetter,
    credentials::ADMIN,
    transport::jetstream::{JetStream, dlq::DeadLetterError},
    web::one_line,
};
use busbar_client::bus::{BusClient, BusError};
use clap::{Args, Subcommand};

pub const DEFAULT_BUS_URL: &str = "http://127.0.0.1:4005";
/// Most dead letters one listing shows.
const MAX_LIST: usize = 10_000;

/// Which bus, and how to talk to it. Given before or after the subcommand.
#[derive(Args, Debug)]
pub struct Target {
    /// The built-in bus.
    #[arg(long, value_name = "URL", global = true, default_value = DEFAULT_BUS_URL, env = "BUSBAR_BUS_URL")]
    bus_url: String,
    /// Use JetStream instead: the NATS server (with --bus).
    #[arg(long, value_name = "URL", global = true, requires = "bus")]
    nats_url: Option<String>,
    /// The ServiceBus's name (metadata.name), for --nats-url.
    #[arg(long, value_name = "NAME", global = true)]
    bus: Option<String>,
    /// Admin token for the built-in bus, sent as `Authorization: Bearer`. Default: the
    /// contents of <data-dir>/admin.token, when that file exists.
    #[arg(long, env = "BUSBAR_TOKEN", global = true, hide_env_values = true)]
    token: Option<String>,
    /// Where `busbar up` keeps its data (and admin.token).
    #[arg(long, value_name = "DIR", default_value = ".busbar", global = true)]
    data_dir: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

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
        match &args.target.nats_url {
            Some(url) => {
                let bus = args.target.bus.as_deref().expect("clap requires --bus with --nats-url");
                // With the admin token (a NATS server configured by `busbar nats-auth`
                // admits the admin user with it; one without authorization ignores it).
                let js = match admin_token(&args.target)?.0 {
                    Some(token) => JetStream::connect_now_as(url, bus, ADMIN, &token).await,
                    None => JetStream::connect_now(url, bus).await,
                };
                let js = js.map_err(|e| anyhow!("{e}; is NATS running there? Pass its address with --nats-url"))?;
                jetstream(&js, args.cmd, args.target.json).await
            }
            None => {
                let bus = Builtin::new(&args.target)?;
                builtin(&bus, args.cmd, args.target.json).await
            }
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

/// The admin token from --token (or BUSBAR_TOKEN), else `<data-dir>/admin.token` if it
/// exists, with where it came from.
fn admin_token(t: &Target) -> Result<(Option<String>, String)> {
    let file = t.data_dir.join("admin.token");
    let (token, source) = match &t.token {
        Some(tok) => (Some(tok.trim().to_owned()), "--token".to_owned()),
        None => match std::fs::read_to_string(&file) {
            Ok(s) => (Some(s.trim().to_owned()), file.display().to_string()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (None, String::new()),
            Err(e) => return Err(anyhow!("cannot read the admin token {}: {e}", file.display())),
        },
    };
    Ok((token.filter(|t| !t.is_empty()), source))
}

/// The built-in bus's admin API, with the admin token and where it came from.
struct Builtin {
    bus: BusClient,
    has_token: bool,
    /// Where the token came from, for error messages.
    token_source: String,
}

impl Builtin {
    fn new(t: &Target) -> Result<Builtin> {
        let (token, token_source) = admin_token(t)?;
        Ok(Builtin { has_token: token.is_some(), bus: BusClient::new(&t.bus_url, token), token_source })
    }

    /// `e` as the user should read it: what went wrong and what to do.
    fn explain(&self, e: BusError) -> anyhow::Error {
        match e {
            BusError::Unreachable { .. } => anyhow!("{e} (is `busbar up` running? pass --bus-url)"),
            BusError::Refused { .. } => {
                let hint = if self.has_token {
                    format!("the token from {} is not the bus's admin token", self.token_source)
                } else {
                    "pass the admin token with --token or BUSBAR_TOKEN, or --data-dir where `busbar up` wrote admin.token"
                        .to_owned()
                };
                anyhow!("{e}; {hint}")
            }
            other => anyhow!("{other}"),
        }
    }

    async fn list(&self, subscriber: Option<&str>, limit: u64) -> Result<Vec<DeadLetter>> {
        self.bus.dead_letters(subscriber, limit).await.map_err(|e| self.explain(e))
    }
}

async fn builtin(bus: &Builtin, cmd: DlqCmd, json: bool) -> Result<()> {
    match cmd {
        DlqCmd::List { subscriber, limit } => {
            let list = bus.list(subscriber.as_deref(), limit).await?;
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
                Some(s) => Some(bus.list(Some(s), MAX_LIST as u64).await?.iter().map(|d| d.id).collect()),
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
    let cells: Vec<[String; 8]> = list
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
        })
        .collect();
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for c in &cells {
        for (w, cell) in widths.iter_mut().zip(c) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let line = |cols: Vec<&str>| {
        let mut s = String::new();
        for (i, (c, w)) in cols.iter().zip(&widths).enumerate() {
            if i + 1 == cols.len() {
                s.push_str(c);
            } else {
                s.push_str(&format!("{c:<w$}  "));
            }
        }
        println!("{}", s.trim_end());
    };
    line(header.to_vec());
    for c in &cells {
        line(c.iter().map(String::as_str).collect());
    }
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
