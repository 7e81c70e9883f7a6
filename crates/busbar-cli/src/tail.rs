//! `busbar tail`: follows the bus's events as they are published, one readable line each
//! (or one CloudEvent per line with `--json`), from the built-in bus or JetStream.
//!
//! It reads the bus's history the way a backfill does (replay pages) and, once at the end,
//! asks again every [`POLL`]: the same code for both transports, nothing for the bus to
//! keep per watcher, and a bus that restarts is simply asked again.

use std::time::Duration;

use anyhow::Result;
use busbar::{
    AttributesReader, Backoff,
    envelope::{self, CloudEvent, TRACEPARENT_EXT},
    web::one_line,
};
use clap::Args;
use cloudevents::event::ExtensionValue;

use crate::target::{Connected, Target};

/// How often it asks for new events once it has shown all there were.
const POLL: Duration = Duration::from_millis(200);
/// Events per replay page.
const PAGE: usize = 500;
/// Longest data shown on a line.
const DATA_WIDTH: usize = 120;

/// `busbar tail`'s arguments; its help text is on `Cmd::Tail` in main.rs.
#[derive(Args, Debug)]
pub struct TailArgs {
    /// Only events of this type (repeat for several).
    #[arg(long = "type", short = 't', value_name = "TYPE")]
    types: Vec<String>,
    /// Only events published by this service (their CloudEvents `source`).
    #[arg(long, value_name = "SERVICE")]
    service: Option<String>,
    /// Only events about this aggregate (their CloudEvents `subject`, e.g. a post's id).
    #[arg(long, value_name = "ID")]
    subject: Option<String>,
    /// Start with the oldest event the bus holds instead of the next one published.
    #[arg(long)]
    from_start: bool,
    /// Stop after showing this many events.
    #[arg(long, short = 'n', value_name = "N")]
    count: Option<u64>,
    #[command(flatten)]
    target: Target,
}

/// What a person asked to see, beyond the types the bus filters on.
#[derive(Debug, Default)]
struct Filter {
    service: Option<String>,
    subject: Option<String>,
}

impl Filter {
    fn matches(&self, ev: &CloudEvent) -> bool {
        self.service.as_deref().is_none_or(|s| ev.source().as_str() == s)
            && self.subject.as_deref().is_none_or(|s| ev.subject() == Some(s))
    }
}

pub fn run(args: TailArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        tokio::select! {
            r = follow(&args) => r,
            _ = tokio::signal::ctrl_c() => Ok(()),
        }
    })
}

async fn follow(args: &TailArgs) -> Result<()> {
    let bus = args.target.connect().await?;
    let filter = Filter { service: args.service.clone(), subject: args.subject.clone() };
    let types: Vec<&str> = args.types.iter().map(String::as_str).collect();
    let mut after = if args.from_start { 0 } else { head(&bus).await? };
    eprintln!(
        "busbar tail: following events after sequence {after}{}; Ctrl-C stops",
        if types.is_empty() { String::new() } else { format!(" of type {}", types.join(", ")) }
    );
    let (retry, mut failures, mut shown) = (Backoff::exponential(POLL, Duration::from_secs(5)), 0, 0u64);
    loop {
        let page = match replay(&bus, after, &types).await {
            Ok(p) => p,
            Err(e) => {
                // The bus restarting is no reason to stop watching it.
                failures += 1;
                if failures == 1 {
                    eprintln!("busbar tail: {e}; retrying");
                }
                tokio::time::sleep(retry.delay(failures)).await;
                continue;
            }
        };
        if failures > 0 {
            eprintln!("busbar tail: the bus answers again");
            failures = 0;
        }
        for ev in page.events.iter().filter(|e| filter.matches(e)) {
            if args.target.json {
                println!("{}", serde_json::to_string(ev)?);
            } else {
                println!("{}", line(ev));
            }
            shown += 1;
            if args.count.is_some_and(|n| shown >= n) {
                return Ok(());
            }
        }
        after = page.next;
        if page.done {
            tokio::time::sleep(POLL).await;
        }
    }
}

async fn head(bus: &Connected) -> Result<u64> {
    Ok(match bus {
        Connected::Builtin(b) => b.bus.head().await.map_err(|e| b.explain_transport(e))?,
        Connected::JetStream(js) => js.head().await?,
    })
}

async fn replay(bus: &Connected, after: u64, types: &[&str]) -> Result<busbar_client::ReplayPage> {
    Ok(match bus {
        Connected::Builtin(b) => b.bus.replay(after, PAGE, types).await.map_err(|e| b.explain_transport(e))?,
        Connected::JetStream(js) => js.replay(after, PAGE, types).await?,
    })
}

/// One event as a line: when, type, publisher, aggregate and version, trace, data.
fn line(ev: &CloudEvent) -> String {
    let mut out = ev.time().map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()).unwrap_or_else(|| "-".into());
    out.push_str(&format!("  {}  from {}", ev.ty(), ev.source()));
    if let Some(subject) = ev.subject() {
        out.push_str(&format!("  {subject}"));
        if let Some(v) = envelope::aggregate_version(ev) {
            out.push_str(&format!(" v{v}"));
        }
    }
    if let Some(trace) = trace_id(ev) {
        out.push_str(&format!("  trace {trace}"));
    }
    if let Some(data) = envelope::data_json(ev) {
        out.push_str("  ");
        out.push_str(&one_line(&data.to_string(), DATA_WIDTH));
    }
    out
}

/// The trace id of the event's W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
fn trace_id(ev: &CloudEvent) -> Option<String> {
    let ExtensionValue::String(tp) = ev.extension(TRACEPARENT_EXT)? else { return None };
    let id = tp.split('-').nth(1)?;
    (id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(extra: &str) -> CloudEvent {
        envelope::decode_one(&format!(
            r#"{{"specversion":"1.0","id":"e1","source":"posts","type":"PostCreated","subject":"p-7",
               "time":"2026-11-25T10:00:01.5Z","aggversion":3,"data":{{"title":"hello\nworld"}}{extra}}}"#
        ))
        .unwrap()
    }

    #[test]
    fn a_line_says_when_what_who_which_and_the_data() {
        let ev = event(r#","traceparent":"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01""#);
        assert_eq!(
            line(&ev),
            r#"2026-11-25T10:00:01.500Z  PostCreated  from posts  p-7 v3  trace 4bf92f3577b34da6a3ce929d0e0e4736  {"title":"hello\nworld"}"#
        );
        assert!(!line(&event("")).contains("trace"));
        assert_eq!(trace_id(&event(r#","traceparent":"garbage""#)), None);
    }

    #[test]
    fn filters_by_publisher_and_aggregate() {
        let ev = event("");
        assert!(Filter::default().matches(&ev));
        assert!(Filter { service: Some("posts".into()), subject: Some("p-7".into()) }.matches(&ev));
        assert!(!Filter { service: Some("comments".into()), ..Default::default() }.matches(&ev));
        assert!(!Filter { subject: Some("p-8".into()), ..Default::default() }.matches(&ev));
    }
}
