//! Ordering per subscription, on SQLite and PostgreSQL: events are emitted through a real
//! outbox (so they carry the publisher's map of earlier versions per type) and received by
//! consumers taking some of the types, or starting from now. Then what happens to parked
//! events that fail when their turn comes, or wait too long.

mod common;

use std::{sync::Arc, time::Duration};

use async_trait::async_trait;
use busbar::{
    AttributesReader, Backoff, CloudEvent, Consumer, Db, DbOptions, Handler, HandlerError, Handlers, Outcome, Received,
    Tx,
    backfill::Backfill,
    config::BusbarConfig,
    consumer::Scope,
    envelope,
    ordering::Start,
    parking::{Limits, ParkedGauge, Sweeper},
    subscription::Subscription,
};
use common::{Recording, database, event_metric};
use serde::{Deserialize, Serialize};
use sqlx::Row;

macro_rules! item_event {
    ($t:ident) => {
        #[derive(Debug, Clone, Serialize, Deserialize, schemars::JsonSchema)]
        struct $t {
            id: String,
            note: String,
        }
        impl busbar::Event for $t {
            const TYPE: &'static str = stringify!($t);
            fn aggregate_id(&self) -> String {
                self.id.clone()
            }
        }
    };
}
item_event!(Added);
item_event!(Renamed);
item_event!(Priced);

/// Emits the aggregate's history `types` (version i+1 has type types[i]) through the
/// outbox of a publisher database, and returns the events as they were written.
async fn emit_history(publisher: &Db, agg: &str, types: &[&str], poison: Option<i64>) -> Vec<CloudEvent> {
    let mut out = vec![];
    for (i, t) in types.iter().enumerate() {
        let v = i as i64 + 1;
        let note = if poison == Some(v) { "boom".to_owned() } else { format!("v{v}") };
        let mut tx = publisher.begin().await.unwrap();
        let ev = match *t {
            "Added" => tx.emit(&Added { id: agg.into(), note }, v).await,
            "Renamed" => tx.emit(&Renamed { id: agg.into(), note }, v).await,
            _ => tx.emit(&Priced { id: agg.into(), note }, v).await,
        }
        .unwrap();
        tx.commit().await.unwrap();
        out.push(ev);
    }
    out
}

/// Records each application (no unique key: a double application shows). Refuses "boom".
struct Recorder;

#[async_trait]
impl Handler for Recorder {
    async fn handle(&self, tx: &mut Tx, ev: &CloudEvent) -> Result<(), HandlerError> {
        let note = match &ev.data() {
            Some(cloudevents::Data::Json(v)) => v["note"].as_str().unwrap_or_default().to_owned(),
            _ => String::new(),
        };
        if note == "boom" {
            return Err(format!("refusing version {}", envelope::aggregate_version(ev).unwrap_or(0)).into());
        }
        sqlx::query("INSERT INTO applied (event_id, subject, version) VALUES ($1, $2, $3)")
            .bind(ev.id().to_owned())
            .bind(ev.subject().unwrap_or_default().to_owned())
            .bind(envelope::aggregate_version(ev).unwrap_or(0))
            .execute(&mut **tx)
            .await?;
        Ok(())
    }
}

async fn subscriber(url: &str, types: &[&str], start: Start) -> Consumer {
    let db = Db::connect("sub", url, DbOptions::default()).await.unwrap();
    let key = match db.backend() {
        busbar::Backend::Postgres => "BIGSERIAL PRIMARY KEY",
        busbar::Backend::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
    };
    let sql = format!("CREATE TABLE applied (n {key}, event_id TEXT, subject TEXT, version BIGINT)");
    sqlx::query(sqlx::AssertSqlSafe(sql)).execute(db.pool()).await.unwrap();
    Consumer::with_scope(db, Arc::new(Recorder), Scope::new(types.iter().copied(), start))
}

async fn applied(c: &Consumer) -> Vec<i64> {
    sqlx::query("SELECT version FROM applied ORDER BY n")
        .fetch_all(c.db().pool())
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
}

async fn publisher(backend: &str) -> (Db, testkit::TempDatabase) {
    let (url, keep) = database(backend).await;
    (Db::connect("items", &url, DbOptions::default()).await.unwrap(), keep)
}

fn only(events: &[CloudEvent], types: &[&str]) -> Vec<CloudEvent> {
    events.iter().filter(|e| types.contains(&e.ty())).cloned().collect()
}

async fn a_subset_subscriber_applies_across_the_gaps_meant_to_be_there(backend: &str) {
    let (publisher, _p) = publisher(backend).await;
    let history = emit_history(&publisher, "a", &["Added", "Renamed", "Priced", "Renamed", "Priced"], None).await;
    let (url, _s) = database(backend).await;
    let takes = ["Added", "Priced"];
    let c = subscriber(&url, &takes, Start::Beginning).await;
    // In order: 1, 3, 5 apply one after the other although 2 and 4 never come.
    for ev in only(&history, &takes) {
        assert!(matches!(c.receive(&ev).await.unwrap(), Outcome::Applied { .. }), "{}", ev.id());
    }
    assert_eq!(applied(&c).await, [1, 3, 5]);

    // Out of order on a second aggregate: 5 waits for 3 (meant for it), not for 4.
    let history = emit_history(&publisher, "b", &["Added", "Renamed", "Priced", "Renamed", "Priced"], None).await;
    let (url, _s2) = database(backend).await;
    let c = subscriber(&url, &takes, Start::Beginning).await;
    let mine = only(&history, &takes);
    assert_eq!(c.receive(&mine[2]).await.unwrap(), Outcome::Deferred { waiting_for: 3 });
    assert_eq!(c.receive(&mine[0]).await.unwrap(), Outcome::Applied { drained: 0 });
    assert_eq!(c.receive(&mine[1]).await.unwrap(), Outcome::Applied { drained: 1 });
    assert_eq!(applied(&c).await, [1, 3, 5]);
    assert_eq!(busbar::consumer::deferred_count(c.db()).await.unwrap(), 0);
}

async fn a_subscription_from_now_does_not_wait_for_what_came_before_it(backend: &str) {
    let (publisher, _p) = publisher(backend).await;
    let history = emit_history(&publisher, "a", &["Added", "Renamed", "Priced", "Renamed", "Priced"], None).await;
    let (url, _s) = database(backend).await;
    let c = subscriber(&url, &["Renamed", "Priced"], Start::Now).await;
    // It started after version 3: it sees 4 and 5 only.
    assert_eq!(c.receive(&history[3]).await.unwrap(), Outcome::Applied { drained: 0 });
    assert_eq!(c.receive(&history[4]).await.unwrap(), Outcome::Applied { drained: 0 });
    assert_eq!(applied(&c).await, [4, 5]);
    // The same event from the beginning waits for its predecessor.
    let (url, _s2) = database(backend).await;
    let c = subscriber(&url, &["Renamed", "Priced"], Start::Beginning).await;
    assert_eq!(c.receive(&history[3]).await.unwrap(), Outcome::Deferred { waiting_for: 3 });
}

fn sweeper(c: &Consumer, transport: Arc<Recording>, max_parked_for: Duration) -> Sweeper {
    Sweeper {
        consumer: c.clone(),
        transport,
        subscriber: "sub".into(),
        limits: Limits { max_parked_for, max_deliver: 2, backoff: Backoff::schedule(vec![Duration::ZERO]) },
        backfilling: Default::default(),
        gauge: ParkedGauge::default(),
    }
}

async fn a_failing_parked_successor_is_blamed_not_the_event_that_released_it(backend: &str) {
    let (publisher, _p) = publisher(backend).await;
    let history = emit_history(&publisher, "a", &["Added", "Priced"], Some(2)).await;
    let (url, _s) = database(backend).await;
    let c = subscriber(&url, &["Added", "Priced"], Start::Beginning).await;
    assert_eq!(c.receive(&history[1]).await.unwrap(), Outcome::Deferred { waiting_for: 1 });
    // v1 is healthy: it commits although v2, drained after it, fails.
    assert_eq!(c.receive(&history[0]).await.unwrap(), Outcome::Applied { drained: 0 });
    assert_eq!(applied(&c).await, [1]);
    assert_eq!(busbar::consumer::deferred_count(c.db()).await.unwrap(), 1, "v2 stays parked");

    let transport = Recording::new();
    let s = sweeper(&c, transport.clone(), Duration::from_secs(3600));
    // Retried (attempt 2 of 2), then dead-lettered with its own error.
    s.sweep().await.unwrap();
    s.sweep().await.unwrap();
    let dead = transport.dead_letters.lock().unwrap().clone();
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0].1.id(), history[1].id(), "the poison v2 is dead-lettered, not v1");
    assert!(dead[0].3.contains("refusing version 2"), "{}", dead[0].3);
    assert_eq!(busbar::consumer::deferred_count(c.db()).await.unwrap(), 0);
    assert_eq!(applied(&c).await, [1]);
}

async fn an_event_parked_too_long_is_dead_lettered_naming_what_it_waits_for(backend: &str) {
    let (publisher, _p) = publisher(backend).await;
    let history = emit_history(&publisher, "a", &["Added", "Priced"], None).await;
    let (url, _s) = database(backend).await;
    let c = subscriber(&url, &["Added", "Priced"], Start::Beginning).await;
    assert_eq!(c.receive(&history[1]).await.unwrap(), Outcome::Deferred { waiting_for: 1 });
    let transport = Recording::new();
    let s = sweeper(&c, transport.clone(), Duration::from_secs(60));
    s.sweep().await.unwrap();
    assert!(transport.dead_letters.lock().unwrap().is_empty(), "not yet: it has waited less than the limit");
    assert_eq!(s.gauge.get().map(|p| p.count), Some(1));
    // As if it had parked two minutes ago.
    sqlx::query("UPDATE busbar_deferred SET deferred_at = deferred_at - 120000").execute(c.db().pool()).await.unwrap();
    let dead_lettered = || event_metric(r#"busbar_events_dead_lettered_total{event_type="Priced"}"#);
    let before = dead_lettered();
    s.sweep().await.unwrap();
    let dead = transport.dead_letters.lock().unwrap().clone();
    assert_eq!(dead.len(), 1);
    // Counted on the service's `/metrics` (at least once: other tests running meanwhile in
    // this process dead-letter Priced events too).
    assert!(dead_lettered() >= before + 1.0, "busbar_events_dead_lettered_total: {before} then {}", dead_lettered());
    assert!(dead[0].3.contains("waiting for version 1 of aggregate a"), "{}", dead[0].3);
    assert_eq!(s.gauge.get().map(|p| p.count), Some(0));
    // Redriven after v1 turns up: v2 is handled again (not a duplicate) and applies in order.
    assert_eq!(c.receive(&history[0]).await.unwrap(), Outcome::Applied { drained: 0 });
    assert_eq!(c.receive(&history[1]).await.unwrap(), Outcome::Applied { drained: 0 });
    assert_eq!(applied(&c).await, [1, 2]);
}

async fn a_panicking_handler_is_a_failed_attempt(backend: &str) {
    struct Panics;
    #[async_trait]
    impl Handler for Panics {
        async fn handle(&self, _: &mut Tx, _: &CloudEvent) -> Result<(), HandlerError> {
            panic!("the handler lost its mind")
        }
    }
    let (url, _s) = database(backend).await;
    let db = Db::connect("sub", &url, DbOptions::default()).await.unwrap();
    let c = Consumer::new(db, Arc::new(Panics));
    let ev = envelope::build("items", &Added { id: "a".into(), note: "x".into() }, 1);
    let err = c.receive(&ev).await.unwrap_err().to_string();
    assert!(err.contains("panicked: the handler lost its mind"), "{err}");
    // Nothing was kept: the inbox does not hold it, so it is handled again next time.
    let n: i64 = sqlx::query("SELECT COUNT(*) FROM busbar_inbox").fetch_one(c.db().pool()).await.unwrap().get(0);
    assert_eq!(n, 0);
}

/// Records an event of a typed handler as [`Recorder`] does.
async fn record<E>(_: &(), tx: &mut Tx, ev: Received<E>) -> Result<(), busbar::db::DbError> {
    sqlx::query("INSERT INTO applied (event_id, subject, version) VALUES ($1, $2, $3)")
        .bind(&ev.meta.id)
        .bind(ev.meta.subject.clone().unwrap_or_default())
        .bind(ev.meta.version.unwrap_or(0))
        .execute(&mut **tx)
        .await?;
    Ok(())
}

/// A service that rebuilds its copy from `Added` (`on`) and reacts to `Renamed` as it
/// happens (`on_new`) is rebuilt on an empty database. Its backfill replays the `Added`
/// history only, and live delivery resumes after the reactions of the old database: none
/// of the history's `Renamed` ever comes again. Nothing may wait for them.
async fn a_rebuilt_copy_does_not_wait_for_reactions_that_history_never_replays(backend: &str) {
    let (publisher, _p) = publisher(backend).await;
    // v1 Added, v2 Renamed, v3 Added, v4 Renamed, v5 Added: the history when it is rebuilt.
    let types = ["Added", "Renamed", "Added", "Renamed", "Added", "Added", "Added", "Renamed"];
    let events = emit_history(&publisher, "a", &types, None).await;
    let (history, live) = events.split_at(5);
    let (url, _s) = database(backend).await;
    let c = subscriber(&url, &[], Start::Beginning).await;
    let config = BusbarConfig::from_lookup("sub", |_| None).unwrap();
    let handlers = Handlers::new(()).on::<Added>(record::<Added>).on_new::<Renamed>(record::<Renamed>);
    let sub = Subscription::of(&config, handlers).unwrap();
    assert_eq!(sub.backfill, ["Added"]);
    let c = Consumer::with_scope(c.db().clone(), sub.handler.clone(), sub.scope());

    let transport = Recording::new();
    transport.published.lock().unwrap().extend(history.iter().cloned());
    let from = busbar::backfill::start_position(c.db()).await.unwrap().expect("an empty database backfills");
    let backfill = Backfill {
        consumer: c.clone(),
        transport: transport.clone(),
        types: sub.backfill.clone(),
        subscriber: "sub".into(),
        max_deliver: 3,
        stats: Default::default(),
        running: Default::default(),
        progress: Default::default(),
    };
    // It returns once it reached the end of history (bounded: it must not hang).
    tokio::time::timeout(Duration::from_secs(30), backfill.run(from, Default::default())).await.unwrap();
    assert_eq!(busbar::consumer::deferred_count(c.db()).await.unwrap(), 0, "nothing waits for a reaction");
    assert_eq!(applied(&c).await, [1, 3, 5]);

    // Live delivery resumes where the old database had got to (after v3): v4 is a new
    // reaction, handled once although the backfill already went past it with v5.
    assert_eq!(c.receive(&history[2]).await.unwrap(), Outcome::Duplicate);
    assert_eq!(c.receive(&history[3]).await.unwrap(), Outcome::Applied { drained: 0 });
    assert_eq!(c.receive(&history[4]).await.unwrap(), Outcome::Duplicate);
    // Later events keep their order: a reaction waits for the state it reacts to (v8 for
    // v7), and v7 for v6.
    let (v6, v7, v8) = (&live[0], &live[1], &live[2]);
    assert_eq!(c.receive(v8).await.unwrap(), Outcome::Deferred { waiting_for: 7 });
    assert_eq!(c.receive(v7).await.unwrap(), Outcome::Deferred { waiting_for: 6 });
    assert_eq!(c.receive(v6).await.unwrap(), Outcome::Applied { drained: 2 });
    assert_eq!(applied(&c).await, [1, 3, 5, 4, 6, 7, 8]);
    assert_eq!(busbar::consumer::deferred_count(c.db()).await.unwrap(), 0);
}

common::on_both_backends!(
    a_subset_subscriber_applies_across_the_gaps_meant_to_be_there,
    a_rebuilt_copy_does_not_wait_for_reactions_that_history_never_replays,
    a_subscription_from_now_does_not_wait_for_what_came_before_it,
    a_failing_parked_successor_is_blamed_not_the_event_that_released_it,
    an_event_parked_too_long_is_dead_lettered_naming_what_it_waits_for,
    a_panicking_handler_is_a_failed_attempt,
);
