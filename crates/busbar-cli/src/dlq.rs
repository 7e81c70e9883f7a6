//! `busbar dlq`: list and redrive dead letters, on the built-in bus (its HTTP API) or on
//! JetStream (the SDK's [`busbar::transport::jetstream::dlq`]).

use std::{path::PathBuf, time::Duration};

use anyhow::{Result, anyhow, bail};
use busbar::{
    credentials::ADMIN,
    transport::jetstream::{JetStreamTransport, dlq::DeadLetterError},
};
use clap::{Args, Subcommand};
use serde_json::Value;

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

/// One dead letter as both transports describe it.
struct Row {
    id: u64,
    subscriber: String,
    event_id: String,
    ty: String,
    attempts: u64,
    dead_at: i64,
    state: String,
    error: String,
}

impl Row {
    fn from_json(v: &Value) -> Row {
        let s = |k: &str| v.get(k).and_then(Value::as_str).unwrap_or("-").to_owned();
        Row {
            id: v["id"].as_u64().unwrap_or(0),
            subscriber: s("subscriber"),
            event_id: s("event_id"),
            ty: s("type"),
            attempts: v["attempts"].as_u64().unwrap_or(0),
            dead_at: v["dead_at"].as_i64().unwrap_or(0),
            state: v.get("state").and_then(Value::as_str).unwrap_or("dead").to_owned(),
            error: s("last_error"),
        }
    }
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
                    Some(token) => JetStreamTransport::connect_now_as(url, bus, ADMIN, &token).await,
                    None => JetStreamTransport::connect_now(url, bus).await,
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

async fn jetstream(js: &JetStreamTransport, cmd: DlqCmd, json: bool) -> Result<()> {
    match cmd {
        DlqCmd::List { subscriber, limit } => {
            let list = js.list_dead_letters(subscriber.as_deref(), 0, limit as usize).await?;
            let values: Vec<Value> = list.iter().map(|d| serde_json::to_value(d).expect("serializes")).collect();
            print_list(&values, json);
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

/// The built-in bus's admin API.
struct Builtin {
    client: reqwest::Client,
    url: String,
    token: Option<String>,
    /// Where the token came from, for error messages.
    token_source: String,
}

impl Builtin {
    fn new(t: &Target) -> Result<Builtin> {
        let (token, token_source) = admin_token(t)?;
        Ok(Builtin {
            client: reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?,
            url: t.bus_url.trim_end_matches('/').to_owned(),
            token,
            token_source,
        })
    }

    async fn call(&self, method: reqwest::Method, path: &str, query: &[(&str, String)]) -> Result<(u16, Value)> {
        let mut req = self.client.request(method, format!("{}{path}", self.url)).query(query);
        if let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.map_err(|e| {
            anyhow!(
                "cannot reach the bus at {}: {} (is `busbar up` running? pass --bus-url)",
                self.url,
                busbar::web::error_chain(&e)
            )
        })?;
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
        if status == 401 || status == 403 {
            let hint = if self.token.is_some() {
                format!("the token from {} is not the bus's admin token", self.token_source)
            } else {
                "pass the admin token with --token or BUSBAR_TOKEN, or --data-dir where `busbar up` wrote admin.token"
                    .to_owned()
            };
            bail!("the bus refused ({status}): {}; {hint}", error_text(&body));
        }
        Ok((status, body))
    }

    async fn list(&self, subscriber: Option<&str>, limit: u64) -> Result<Vec<Value>> {
        let mut q = vec![("limit", limit.to_string())];
        if let Some(s) = subscriber {
            q.push(("subscriber", s.to_owned()));
        }
        match self.call(reqwest::Method::GET, "/deadletters", &q).await? {
            (200, Value::Array(list)) => Ok(list),
            (status, body) => bail!("the bus at {} answered {status}: {}", self.url, error_text(&body)),
        }
    }
}

async fn builtin(bus: &Builtin, cmd: DlqCmd, json: bool) -> Result<()> {
    match cmd {
        DlqCmd::List { subscriber, limit } => {
            let list = bus.list(subscriber.as_deref(), limit).await?;
            print_list(&list, json);
        }
        DlqCmd::Redrive { all: true, subscriber, .. } => {
            let q: Vec<(&str, String)> = subscriber.iter().map(|s| ("subscriber", s.clone())).collect();
            let (status, body) = bus.call(reqwest::Method::POST, "/deadletters/redrive", &q).await?;
            if status != 200 {
                bail!("the bus at {} answered {status}: {}", bus.url, error_text(&body));
            }
            if json {
                println!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                match body["redriving"].as_u64().unwrap_or(0) {
                    0 => println!("no dead letters to redrive"),
                    n => println!("{n} dead letter(s) handed back to the bus for redelivery{}", redelivery_note()),
                }
            }
        }
        DlqCmd::Redrive { ids, subscriber, .. } => {
            // The bus redrives by id alone; with --subscriber, check each id is theirs.
            let theirs: Option<Vec<u64>> = match &subscriber {
                Some(s) => {
                    Some(bus.list(Some(s), MAX_LIST as u64).await?.iter().filter_map(|d| d["id"].as_u64()).collect())
                }
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
                match bus.call(reqwest::Method::POST, &format!("/deadletters/{id}/redrive"), &[]).await? {
                    (200, _) => {
                        if !json {
                            println!("dead letter {id} handed back to the bus for redelivery");
                        }
                        done.push(id);
                    }
                    (404, _) => {
                        failed.push(format!("no dead letter {id} waiting for redrive; `busbar dlq list` shows the ids"))
                    }
                    (status, body) => bail!("the bus at {} answered {status}: {}", bus.url, error_text(&body)),
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

fn print_list(list: &[Value], json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(list).expect("serializes"));
        return;
    }
    if list.is_empty() {
        println!("no dead letters");
        return;
    }
    let rows: Vec<Row> = list.iter().map(Row::from_json).collect();
    let header = ["ID", "SUBSCRIBER", "EVENT", "TYPE", "ATTEMPTS", "DEAD AT", "STATE", "ERROR"];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                r.id.to_string(),
                r.subscriber.clone(),
                r.event_id.clone(),
                r.ty.clone(),
                r.attempts.to_string(),
                time_text(r.dead_at),
                r.state.clone(),
                one_line(&r.error, 100),
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
    println!("{} dead letter(s); `busbar dlq list --json` shows the events and full errors", rows.len());
}

/// Milliseconds since the epoch as UTC `YYYY-MM-DDTHH:MM:SSZ`.
fn time_text(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_else(|| "-".into())
}

fn one_line(s: &str, max: usize) -> String {
    let flat: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if flat.chars().count() <= max { flat } else { format!("{}…", flat.chars().take(max - 1).collect::<String>()) }
}

fn error_text(body: &Value) -> String {
    match body.get("error").and_then(Value::as_str) {
        Some(e) => e.to_owned(),
        None => one_line(&body.to_string(), 300),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_and_cells_read_both_transports() {
        let v = serde_json::json!({"id": 7, "subscriber": "query", "event_id": "e1", "type": "A", "attempts": 3,
            "last_error": "boom\nline two", "dead_at": 0, "event": {}});
        let r = Row::from_json(&v);
        assert_eq!((r.id, r.state.as_str(), r.attempts), (7, "dead", 3));
        assert_eq!(one_line(&r.error, 100), "boom line two");
        assert_eq!(one_line("abcdef", 4), "abc…");
        assert_eq!(time_text(0), "1970-01-01T00:00:00Z");
        let missing = Row::from_json(&serde_json::json!({"id": 1, "event_id": null}));
        assert_eq!(missing.event_id, "-");
    }
}
