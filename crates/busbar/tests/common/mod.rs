//! Shared by the SDK's integration tests: a transport that records what it is asked to
//! publish, a sample event type, and databases on both backends.

#![allow(dead_code)]

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use busbar::{CloudEvent, Db, DbOptions, Transport, TransportError};
use serde::{Deserialize, Serialize};

#[derive(Default)]
pub struct Recording {
    pub published: Mutex<Vec<CloudEvent>>,
    pub failing: Mutex<bool>,
    /// (subscriber, event, attempts, reason) of each dead letter recorded.
    pub dead_letters: Mutex<Vec<(String, CloudEvent, u32, String)>>,
}

#[async_trait]
impl Transport for Recording {
    fn name(&self) -> &'static str {
        "recording"
    }
    async fn publish(&self, events: &[CloudEvent]) -> Result<(), TransportError> {
        if *self.failing.lock().unwrap() {
            return Err(TransportError::Unavailable { transport: "recording", reason: "told to fail".into() });
        }
        self.published.lock().unwrap().extend_from_slice(events);
        Ok(())
    }
    async fn replay(
        &self,
        after: u64,
        limit: usize,
        types: &[&str],
    ) -> Result<busbar::transport::ReplayPage, TransportError> {
        use busbar::AttributesReader;
        // Positions are 1-based indexes into everything published, as a bus's sequences.
        let all = self.published.lock().unwrap();
        let page: Vec<(u64, &CloudEvent)> = (after as usize..all.len())
            .map(|i| (i as u64 + 1, &all[i]))
            .filter(|(_, e)| types.is_empty() || types.contains(&e.ty()))
            .take(limit)
            .collect();
        let done = page.len() < limit;
        let next = if done { all.len() as u64 } else { page.last().map_or(after, |(seq, _)| *seq) };
        let events = page.into_iter().map(|(_, e)| e.clone()).collect();
        Ok(busbar::transport::ReplayPage { done, events, next })
    }
    async fn dead_letter(
        &self,
        subscriber: &str,
        event: &CloudEvent,
        attempts: u32,
        reason: &str,
    ) -> Result<(), TransportError> {
        self.dead_letters.lock().unwrap().push((subscriber.to_owned(), event.clone(), attempts, reason.to_owned()));
        Ok(())
    }
    fn receiving(
        &self,
        _: &busbar::config::BusbarConfig,
        _: &busbar::subscription::Subscription,
    ) -> busbar::transport::Receiving {
        busbar::transport::Receiving::Push
    }
}

impl Recording {
    pub fn new() -> Arc<Self> {
        Arc::new(Self::default())
    }
    pub fn ids(&self) -> Vec<String> {
        use busbar::AttributesReader;
        self.published.lock().unwrap().iter().map(|e| e.id().to_owned()).collect()
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct NoteWritten {
    pub id: String,
    pub text: String,
}

impl busbar::Event for NoteWritten {
    const TYPE: &'static str = "NoteWritten";
    fn aggregate_id(&self) -> String {
        self.id.clone()
    }
}

pub use testkit::database;

/// Connects as service `notes` and creates its one table.
pub async fn notes_db(url: &str) -> Db {
    let db = Db::connect("notes", url, DbOptions::default()).await.unwrap();
    sqlx::query("CREATE TABLE IF NOT EXISTS notes (id TEXT PRIMARY KEY, text TEXT NOT NULL)")
        .execute(db.pool())
        .await
        .unwrap();
    db
}

pub async fn count(db: &Db, sql: &'static str) -> i64 {
    use sqlx::Row;
    sqlx::query(sql).fetch_one(db.pool()).await.unwrap().get(0)
}

/// The value of the sample `series` (name and labels, e.g.
/// `busbar_events_received_total{event_type="A",outcome="applied"}`) among this process's
/// event-handling metrics, as a service's `/metrics` shows them; 0 when absent.
pub fn event_metric(series: &str) -> f64 {
    let mut registry = prometheus_client::registry::Registry::with_prefix("busbar");
    busbar::metrics::register_events(&mut registry);
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    text.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok()).unwrap_or(0.0)
}

/// A test per case and backend: `mod sqlite` and `mod postgres`, each with a `#[tokio::test]`
/// per `case`, calling `case(backend)`. (Allowed unused: not every test binary has cases.)
#[allow(unused_macros)]
macro_rules! on_both_backends {
    ($($case:ident),* $(,)?) => {
        mod sqlite { $( #[tokio::test] async fn $case() { super::$case("sqlite").await } )* }
        mod postgres { $( #[tokio::test] async fn $case() { super::$case("postgres").await } )* }
    };
}
#[allow(unused_imports)]
pub(crate) use on_both_backends;
