//! `busbar status`: one row per subscriber, from the built-in bus's `GET /subscribers` or
//! from JetStream's consumers, in the same shape.

use anyhow::Result;
use busbar::{bus_api::SubscriberStatus, web::one_line};
use clap::Args;

use crate::{
    table,
    target::{Connected, Target},
};

/// `busbar status`'s arguments; its help text is on `Cmd::Status` in main.rs.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Only this subscriber.
    #[arg(long, short)]
    subscriber: Option<String>,
    #[command(flatten)]
    target: Target,
}

pub fn run(args: StatusArgs) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut rows = rt.block_on(async {
        match args.target.connect().await? {
            Connected::JetStream(js) => Ok::<_, anyhow::Error>(js.subscriber_status().await?),
            Connected::Builtin(bus) => bus.bus.subscribers().await.map_err(|e| bus.explain(e)),
        }
    })?;
    if let Some(s) = &args.subscriber {
        rows.retain(|r| &r.name == s);
        if rows.is_empty() {
            anyhow::bail!("no subscriber {s} on this bus; `busbar status` lists them all");
        }
    }
    if args.target.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", render(&rows));
    }
    Ok(())
}

const HEADER: [&str; 9] = [
    "SUBSCRIBER",
    "DELIVERED",
    "PENDING",
    "OLDEST PENDING",
    "PARKED",
    "OLDEST PARKED",
    "DEAD",
    "RETRIES",
    "LAST ERROR",
];

/// The table, then a line saying what to look at.
fn render(rows: &[SubscriberStatus]) -> String {
    if rows.is_empty() {
        return "no subscribers on this bus\n".into();
    }
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.name.clone(),
                r.position.to_string(),
                r.pending.to_string(),
                r.oldest_pending_age_ms.map(age).unwrap_or_else(|| "-".into()),
                r.parked.map(|p| p.count.to_string()).unwrap_or_else(|| "-".into()),
                r.parked.filter(|p| p.count > 0).map(|p| age(p.oldest_age_ms)).unwrap_or_else(|| "-".into()),
                r.dead_letters.to_string(),
                r.attempts.to_string(),
                r.last_error.as_deref().map(|e| one_line(e, 80)).unwrap_or_else(|| "-".into()),
            ]
        })
        .collect();
    let mut out = table::render(&HEADER, &cells);
    let dead: i64 = rows.iter().map(|r| r.dead_letters).sum();
    let pending: i64 = rows.iter().map(|r| r.pending).sum();
    out.push_str(&match (pending, dead) {
        (0, 0) => "every subscriber is caught up; no dead letters\n".to_owned(),
        (p, 0) => format!("{p} event(s) pending; no dead letters\n"),
        (p, d) => format!("{p} event(s) pending; {d} dead letter(s): `busbar dlq list` shows them\n"),
    });
    out
}

/// A duration for people: `850ms`, `12.4s`, `3m05s`, `2h10m`.
fn age(ms: u64) -> String {
    match ms {
        0..1_000 => format!("{ms}ms"),
        1_000..60_000 => format!("{:.1}s", ms as f64 / 1000.0),
        60_000..3_600_000 => format!("{}m{:02}s", ms / 60_000, ms % 60_000 / 1000),
        _ => format!("{}h{:02}m", ms / 3_600_000, ms % 3_600_000 / 60_000),
    }
}

#[cfg(test)]
mod tests {
    use busbar::bus_api::Parked;

    use super::*;

    fn row(name: &str, pending: i64, dead: i64) -> SubscriberStatus {
        SubscriberStatus {
            name: name.into(),
            endpoint: String::new(),
            types: vec![],
            position: 41,
            lag: pending,
            pending,
            oldest_pending_age_ms: (pending > 0).then_some(65_000),
            attempts: 0,
            last_error: None,
            dead_letters: dead,
            parked: None,
        }
    }

    #[test]
    fn ages_read_as_people_say_them() {
        assert_eq!(age(850), "850ms");
        assert_eq!(age(12_400), "12.4s");
        assert_eq!(age(185_000), "3m05s");
        assert_eq!(age(7_800_000), "2h10m");
    }

    #[test]
    fn a_table_row_per_subscriber_and_a_summary() {
        let mut q = row("query", 3, 1);
        q.parked = Some(Parked { count: 2, oldest_age_ms: 12_400 });
        q.last_error = Some("HTTP 500:\nboom".into());
        let text = render(&[row("comments", 0, 0), q]);
        let lines: Vec<&str> = text.lines().collect();
        assert!(
            lines[0].starts_with("SUBSCRIBER  DELIVERED  PENDING  OLDEST PENDING  PARKED  OLDEST PARKED"),
            "{text}"
        );
        assert!(lines[1].starts_with("comments") && lines[1].contains(" -  "), "{text}");
        assert!(lines[2].contains("1m05s  ") && lines[2].contains("  2  ") && lines[2].contains("  12.4s  "), "{text}");
        assert!(lines[2].ends_with("HTTP 500: boom"), "{text}");
        assert_eq!(lines[3], "3 event(s) pending; 1 dead letter(s): `busbar dlq list` shows them");
        assert_eq!(render(&[]), "no subscribers on this bus\n");
    }
}
