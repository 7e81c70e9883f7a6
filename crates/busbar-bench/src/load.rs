//! Load generators that publish benchmark events: to the built-in bus's `POST /events`,
//! or to JetStream through the SDK's own `Transport::publish`.
//!
//! - closed loop: K publishers, each sending its next batch as soon as the previous one
//!   is acknowledged: the most the bus accepts;
//! - open loop: events offered on a fixed schedule whatever the bus does, so queueing in
//!   the bus shows up as latency instead of slowing the publisher down.

use std::{
    fmt::Write,
    ops::Range,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use busbar::transport::jetstream::JetStream;
use reqwest::header::CONTENT_TYPE;
use tokio::{sync::Semaphore, task::JoinSet};

use crate::clock;

/// What a publishing run got acknowledged.
#[derive(Debug, Default)]
pub struct Published {
    /// When publishing started (`clock::now_ns`).
    pub first_ns: u64,
    /// When the last acknowledgement arrived.
    pub last_ack_ns: u64,
    /// Open loop: when the schedule ends. Rates are taken over at least this span, or the
    /// last event (sent at (N-1)/rate) would make the achieved rate exceed the offered one.
    pub scheduled_end_ns: u64,
    /// Event numbers the bus acknowledged; sorted and merged.
    pub accepted: Vec<Range<u64>>,
    pub accepted_count: u64,
    /// Publish requests that failed with 5xx or a transport error.
    pub errors: u64,
    /// Why the first failed request failed.
    pub first_error: Option<String>,
    /// Per acknowledged request: publish stamp to acknowledgement, in ns. Set against the
    /// delivery latency it tells whether time went into storing or into pushing.
    pub ack_ns: Vec<u64>,
}

impl Published {
    fn absorb(&mut self, other: Published) {
        self.last_ack_ns = self.last_ack_ns.max(other.last_ack_ns);
        self.accepted.extend(other.accepted);
        self.accepted_count += other.accepted_count;
        self.errors += other.errors;
        self.first_error = self.first_error.take().or(other.first_error);
        self.ack_ns.extend(other.ack_ns);
    }

    fn fail(&mut self, why: String) {
        self.errors += 1;
        self.first_error.get_or_insert(why);
    }

    /// Records that `events`, stamped `sent_ns`, were acknowledged at `ack_ns`.
    fn accept(&mut self, events: Range<u64>, sent_ns: u64, ack_ns: u64) {
        self.last_ack_ns = self.last_ack_ns.max(ack_ns);
        self.ack_ns.push(ack_ns.saturating_sub(sent_ns));
        self.accepted_count += events.end - events.start;
        self.accepted.push(events);
    }

    /// Sorts and merges the accepted ranges, so checking delivery walks few of them.
    fn normalize(&mut self) {
        self.accepted.sort_by_key(|r| r.start);
        let mut merged: Vec<Range<u64>> = Vec::with_capacity(self.accepted.len());
        for r in self.accepted.drain(..) {
            match merged.last_mut() {
                Some(last) if last.end == r.start => last.end = r.end,
                _ => merged.push(r),
            }
        }
        self.accepted = merged;
    }
}

/// Appends benchmark event `n` of `phase` as CloudEvents JSON. Written by hand rather
/// than through `busbar::envelope::build` because the generator shares the CPU with the
/// bus: the cheaper it is, the more of the machine the figures describe the bus.
pub fn event_json(out: &mut String, phase: u32, n: u64, sent_ns: u64) {
    write!(
        out,
        r#"{{"specversion":"1.0","id":"{}","source":"pub","type":"BenchEvent","datacontenttype":"application/json","data":{{"phase":{phase},"n":{n},"sentNs":{sent_ns}}}}}"#,
        uuid::Uuid::now_v7()
    )
    .expect("writing to a String cannot fail");
}

/// The longest one publish request may take (HTTP or JetStream) before it counts as failed.
pub const PUBLISH_TIMEOUT: Duration = Duration::from_secs(30);

/// Where the events go.
#[derive(Clone)]
pub enum Target {
    /// The built-in bus: `POST` to `url`.
    Http { client: reqwest::Client, url: String },
    /// JetStream, through the SDK's transport (one connection, shared by all publishers).
    JetStream(Arc<JetStream>),
}

/// What one publish request got: `Ok` when acknowledged, `Err(why)` when it failed in a
/// way a real publisher would retry.
type Outcome = Result<(), String>;

impl Target {
    /// Publishes events `events` of `phase`, stamped `sent_ns`: one request, a batch when
    /// `batch` (closed loop) or a single event (open loop). An error when the bus refused
    /// the events themselves, which means this program is wrong and no figure would mean
    /// anything.
    async fn send(&self, phase: u32, events: Range<u64>, sent_ns: u64, batch: bool) -> anyhow::Result<Outcome> {
        match self {
            Target::Http { client, url } => {
                let mut body = String::with_capacity(320 * (events.end - events.start) as usize + 2);
                if batch {
                    body.push('[');
                }
                for n in events.clone() {
                    if n > events.start {
                        body.push(',');
                    }
                    event_json(&mut body, phase, n, sent_ns);
                }
                if batch {
                    body.push(']');
                }
                post(client, url, body, batch).await
            }
            Target::JetStream(t) => {
                let mut json = String::with_capacity(320);
                let mut batch = Vec::with_capacity((events.end - events.start) as usize);
                for n in events {
                    json.clear();
                    event_json(&mut json, phase, n, sent_ns);
                    batch.push(busbar::envelope::decode_one(&json).context("a benchmark event is not a CloudEvent")?);
                }
                // Bounded like the HTTP client's requests: a publish whose acks never come
                // must fail the request, not hang the run.
                match tokio::time::timeout(PUBLISH_TIMEOUT, t.publish(&batch)).await {
                    Ok(r) => Ok(r.map_err(|e| e.to_string())),
                    Err(_) => Ok(Err(format!("not acknowledged within {} s", PUBLISH_TIMEOUT.as_secs()))),
                }
            }
        }
    }
}

/// POSTs one publish request.
async fn post(client: &reqwest::Client, url: &str, body: String, batch: bool) -> anyhow::Result<Outcome> {
    let content_type = if batch { "application/cloudevents-batch+json" } else { "application/cloudevents+json" };
    match client.post(url).header(CONTENT_TYPE, content_type).body(body).send().await {
        Ok(r) if r.status().is_client_error() => {
            let status = r.status();
            bail!("the bus refused a publish with HTTP {status}: {}", r.text().await.unwrap_or_default());
        }
        // Read the answer to the end so the connection goes back to the pool.
        Ok(r) => {
            let status = r.status();
            match r.bytes().await {
                Ok(_) if status.is_success() => Ok(Ok(())),
                Ok(_) => Ok(Err(format!("HTTP {status}"))),
                Err(e) => Ok(Err(e.to_string())),
            }
        }
        Err(e) => Ok(Err(e.to_string())),
    }
}

/// Closed loop: `publishers` tasks send batches of `batch` events until `duration` has
/// passed or `max_events` were handed out.
pub async fn closed_loop(
    target: &Target,
    phase: u32,
    publishers: usize,
    batch: u64,
    duration: Duration,
    max_events: u64,
) -> anyhow::Result<Published> {
    let next = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + duration;
    let mut out = Published { first_ns: clock::now_ns(), ..Published::default() };
    let mut tasks = JoinSet::new();
    for _ in 0..publishers {
        let (target, next) = (target.clone(), next.clone());
        tasks.spawn(async move {
            let mut mine = Published::default();
            while Instant::now() < deadline {
                let first = next.fetch_add(batch, Ordering::Relaxed);
                if first >= max_events {
                    break;
                }
                let events = first..(first + batch).min(max_events);
                let sent_ns = clock::now_ns();
                match target.send(phase, events.clone(), sent_ns, true).await? {
                    Ok(()) => mine.accept(events, sent_ns, clock::now_ns()),
                    Err(why) => {
                        mine.fail(why);
                        // Do not spin against a bus that is failing.
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            anyhow::Ok(mine)
        });
    }
    while let Some(r) = tasks.join_next().await {
        out.absorb(r??);
    }
    out.normalize();
    Ok(out)
}

/// Open loop: `rate` events/s for `duration`, each event its own request, at most
/// `max_in_flight` requests outstanding. Each event is stamped with the time it was
/// *scheduled* for, not when it got sent: if the generator or the bus falls behind, the
/// delay counts as latency rather than being hidden (no coordinated omission).
pub async fn open_loop(
    target: &Target,
    phase: u32,
    rate: f64,
    duration: Duration,
    max_in_flight: usize,
) -> anyhow::Result<Published> {
    let paced = paced(rate, duration, max_in_flight, |n, sent_ns| {
        let target = target.clone();
        async move {
            let outcome = target.send(phase, n..n + 1, sent_ns, false).await?;
            // Read the clock here: the generator collects results only between ticks.
            Ok(Sent { n, sent_ns, ack_ns: clock::now_ns(), outcome })
        }
    })
    .await?;
    let mut out =
        Published { first_ns: paced.start_ns, scheduled_end_ns: paced.scheduled_end_ns, ..Published::default() };
    for r in paced.results {
        absorb(&mut out, r)?;
    }
    out.normalize();
    Ok(out)
}

/// What [`paced`] ran.
pub struct Paced<T> {
    /// When the schedule started (`clock::now_ns`).
    pub start_ns: u64,
    /// When the schedule ends: the time the event after the last would be due.
    pub scheduled_end_ns: u64,
    /// Every operation's result, in completion order.
    pub results: Vec<T>,
}

/// Runs `op(i, due_ns)` for i = 0, 1, ... at `rate` per second for `duration`, each as
/// its own task, at most `max_in_flight` outstanding. `due_ns` is when operation `i` was
/// scheduled (`clock::now_ns`); when the generator has to wait for a free slot the
/// operation starts late but keeps its due time, so the wait shows up as latency.
pub async fn paced<T, F, Fut>(rate: f64, duration: Duration, max_in_flight: usize, op: F) -> anyhow::Result<Paced<T>>
where
    T: Send + 'static,
    F: Fn(u64, u64) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let total = (rate * duration.as_secs_f64()).round().max(1.0) as u64;
    let period_ns = 1e9 / rate;
    let due_at = |start: u64, i: u64| start + (i as f64 * period_ns) as u64;
    let slots = Arc::new(Semaphore::new(max_in_flight));
    let start = clock::now_ns();
    let mut results = Vec::with_capacity(total as usize);
    let mut tasks: JoinSet<T> = JoinSet::new();
    let mut i = 0;
    while i < total {
        let elapsed = clock::now_ns().saturating_sub(start);
        let due = ((elapsed as f64 / period_ns) as u64 + 1).min(total);
        while i < due {
            let slot = slots.clone().acquire_owned().await?;
            let fut = op(i, due_at(start, i));
            tasks.spawn(async move {
                let r = fut.await;
                drop(slot);
                r
            });
            i += 1;
        }
        while let Some(r) = tasks.try_join_next() {
            results.push(r?);
        }
        if i < total {
            tokio::time::sleep_until(clock::instant_at(due_at(start, i)).into()).await;
        }
    }
    while let Some(r) = tasks.join_next().await {
        results.push(r?);
    }
    Ok(Paced { start_ns: start, scheduled_end_ns: due_at(start, total), results })
}

/// One open-loop request's outcome.
struct Sent {
    n: u64,
    sent_ns: u64,
    ack_ns: u64,
    outcome: Outcome,
}

fn absorb(out: &mut Published, r: anyhow::Result<Sent>) -> anyhow::Result<()> {
    let sent = r?;
    match sent.outcome {
        Ok(()) => out.accept(sent.n..sent.n + 1, sent.sent_ns, sent.ack_ns),
        Err(why) => out.fail(why),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_are_valid_cloudevents_with_the_stamp() {
        let mut s = String::new();
        event_json(&mut s, 3, 42, 1234);
        let ev = busbar::envelope::decode_one(&s).unwrap();
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        assert_eq!(v["data"]["n"], 42);
        assert_eq!(v["data"]["sentNs"], 1234);
        assert_eq!(v["data"]["phase"], 3);
        use busbar::AttributesReader;
        assert_eq!(ev.ty(), "BenchEvent");
    }

    #[test]
    fn accepted_ranges_merge() {
        let mut p = Published::default();
        for r in [4..6, 0..2, 2..4, 8..9] {
            p.accept(r, 0, 0);
        }
        p.normalize();
        assert_eq!(p.accepted, vec![0..6, 8..9]);
        assert_eq!(p.accepted_count, 7);
    }
}
