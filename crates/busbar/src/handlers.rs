//! Typed event handlers: a service says which event types it handles by registering a
//! function per type, and which it publishes, and everything else follows from that one
//! list: the types it subscribes to, what backfill replays, and its contract (the reader
//! schema of each type it handles, the writer schema of each it publishes; see
//! [`crate::contract`]).
//!
//! ```ignore
//! let handlers = Handlers::new(words)
//!     .on::<PostCreated>(store::remember_post)           // a copy: rebuilt from history
//!     .on_new::<CommentModerated>(store::apply_decision) // a reaction: only as it happens
//!     .publishes::<CommentUpdated>();                    // what it emits
//! let service = Service::start(NAME, PORT, &migrations, &migrations, handlers).await?;
//!
//! async fn remember_post(_: &WordList, tx: &mut Tx, post: Received<PostCreated>) -> Result<(), DbError> { ... }
//! ```
//!
//! A handler is an `async fn (&S, &mut Tx, Received<E>) -> Result<(), impl Into<HandlerError>>`:
//! `S` is the service's own state (`()` when it has none), `Tx` the transaction its writes
//! (and the inbox record, and any event it emits) commit in, and [`Received`] the decoded
//! `data` plus the envelope's attributes. One registered with [`Handlers::on_many`] takes
//! a `Vec<Received<E>>` instead: the consecutive events of `E` in a delivered batch, so it
//! can apply them in one statement (each statement is a round trip, and on SQLite a
//! hand-off to sqlx's worker thread and back, which costs more than most statements).

use std::{
    any::type_name,
    collections::BTreeMap,
    future::Future,
    pin::Pin,
    sync::{Arc, OnceLock},
};

use async_trait::async_trait;
use busbar_domain::contracts::{ServiceContract, TypeSchema};
use cloudevents::AttributesReader;
use schemars::JsonSchema;

use crate::{
    consumer::{Handler, HandlerError},
    contract::{self, Declared},
    db::Tx,
    envelope::{self, CloudEvent, EnvelopeError, Event},
    trace::TraceContext,
};

/// An event's decoded `data`, with what the envelope says about it. Dereferences to the
/// data, so `post.title` reads the field (and `post.id` the data's `id`, not the event's).
#[derive(Debug, Clone)]
pub struct Received<E> {
    pub data: E,
    pub meta: Meta,
}

/// The envelope's attributes of a received event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Meta {
    /// The event's id (its CloudEvents `id`).
    pub id: String,
    /// The service that published it.
    pub source: String,
    /// The aggregate it is about (its `subject`), when it names one.
    pub subject: Option<String>,
    /// The aggregate's version after the change it reports, when it carries one.
    pub version: Option<i64>,
    /// The span its handling runs as ([`Received::traced`]).
    pub trace: Option<TraceContext>,
}

impl<E> std::ops::Deref for Received<E> {
    type Target = E;
    fn deref(&self) -> &E {
        &self.data
    }
}

impl<E> Received<E> {
    pub fn into_inner(self) -> E {
        self.data
    }

    /// Runs `work` as this event's handling span: an event emitted in it names that span as
    /// parent, continuing this event's trace. A function taking a run
    /// ([`Handlers::on_many`]) runs as the run's first event's span, so what it emits for
    /// another event of the run belongs in this.
    pub async fn traced<F: Future>(&self, work: F) -> F::Output {
        crate::trace::continuing(self.meta.trace, work).await
    }
}

/// What a handler function returns, boxed.
type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send + 'a>>;

/// A handler function with service state `S`, taking `In`: a [`Received`] event, or a
/// `Vec` of them ([`Handlers::on_many`]). Implemented for every
/// `async fn(&S, &mut Tx, In) -> Result<(), Er>` where `Er` converts to a
/// [`HandlerError`]; there is nothing to implement by hand.
pub trait HandlerFn<'a, S: 'a, In>: Send + Sync + 'static {
    type Fut: Future<Output = Result<(), Self::Error>> + Send + 'a;
    type Error: Into<HandlerError>;
    fn call(&self, state: &'a S, tx: &'a mut Tx, input: In) -> Self::Fut;
}

impl<'a, S: 'a, In, F, Fut, Er> HandlerFn<'a, S, In> for F
where
    F: Fn(&'a S, &'a mut Tx, In) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Er>> + Send + 'a,
    Er: Into<HandlerError>,
{
    type Fut = Fut;
    type Error = Er;
    fn call(&self, state: &'a S, tx: &'a mut Tx, input: In) -> Fut {
        self(state, tx, input)
    }
}

/// One registered type: decodes the envelope's data and calls the function.
trait Route<S>: Send + Sync {
    /// `events`, all of this type and consecutive in a delivered batch, in order (one
    /// event when handled alone).
    fn handle_run<'a>(&'a self, state: &'a S, tx: &'a mut Tx, events: &'a [&'a CloudEvent]) -> HandlerFuture<'a>;
}

/// Decodes the `data` of events of type `E`.
struct Decoder<E> {
    /// The reader schema, compiled the first time an event does not decode: it explains
    /// why, field by field, in the words of the contract.
    reader: OnceLock<Result<jsonschema::Validator, String>>,
    _event: std::marker::PhantomData<fn() -> E>,
}

impl<E: Event + JsonSchema> Decoder<E> {
    fn new() -> Self {
        Self { reader: OnceLock::new(), _event: std::marker::PhantomData }
    }

    /// The event's data with its attributes. A payload that is not what its type says is
    /// the event's fault, and the consumer dead-letters it at once (EnvelopeError::Data).
    fn received(&self, event: &CloudEvent) -> Result<Received<E>, HandlerError> {
        match envelope::data::<E>(event) {
            Ok(data) => Ok(Received {
                data,
                meta: Meta {
                    id: event.id().to_owned(),
                    source: event.source().to_string(),
                    subject: event.subject().map(str::to_owned),
                    version: envelope::aggregate_version(event),
                    trace: crate::trace::of_event(event.id()),
                },
            }),
            Err(EnvelopeError::Data { reason, .. }) => Err(Box::new(self.rejected(event, reason))),
            Err(other) => Err(Box::new(other)),
        }
    }

    /// The error for an event whose data `E` does not decode: what the reader schema says
    /// is wrong with it (serde's words only if the schema finds nothing), with the
    /// `dataschema` the event claims, so a dead letter names both sides of the contract.
    fn rejected(&self, event: &CloudEvent, serde_reason: String) -> EnvelopeError {
        const SHOWN: usize = 5;
        let reader = self.reader.get_or_init(|| {
            jsonschema::validator_for(contract::reader_schema::<E>().as_value()).map_err(|e| e.to_string())
        });
        let found: Vec<String> = match (reader, envelope::data_json(event)) {
            (Ok(v), Some(data)) => v
                .iter_errors(&data)
                .take(SHOWN)
                .map(|e| {
                    let at = e.instance_path().to_string();
                    format!("at {}: {e}", if at.is_empty() { "/" } else { &at })
                })
                .collect(),
            _ => vec![],
        };
        let reason = match found.is_empty() {
            true => serde_reason,
            false => format!("the reader schema rejects it: {}", found.join("; ")),
        };
        EnvelopeError::Data { id: event.id().to_owned(), ty: E::TYPE, reason, dataschema: envelope::dataschema(event) }
    }
}

/// A function taking one event at a time ([`Handlers::on`], [`Handlers::on_new`]).
struct Each<E, F> {
    decoder: Decoder<E>,
    f: F,
}

impl<S, E, F> Route<S> for Each<E, F>
where
    S: Send + Sync + 'static,
    E: Event + JsonSchema + Send + 'static,
    F: for<'a> HandlerFn<'a, S, Received<E>>,
{
    fn handle_run<'a>(&'a self, state: &'a S, tx: &'a mut Tx, events: &'a [&'a CloudEvent]) -> HandlerFuture<'a> {
        Box::pin(async move {
            for event in events {
                self.f.call(state, &mut *tx, self.decoder.received(event)?).await.map_err(Into::into)?;
            }
            Ok(())
        })
    }
}

/// A function taking the consecutive events of its type together ([`Handlers::on_many`]).
struct Many<E, F> {
    decoder: Decoder<E>,
    f: F,
}

impl<S, E, F> Route<S> for Many<E, F>
where
    S: Send + Sync + 'static,
    E: Event + JsonSchema + Send + 'static,
    F: for<'a> HandlerFn<'a, S, Vec<Received<E>>>,
{
    fn handle_run<'a>(&'a self, state: &'a S, tx: &'a mut Tx, events: &'a [&'a CloudEvent]) -> HandlerFuture<'a> {
        let received: Result<Vec<_>, _> = events.iter().map(|e| self.decoder.received(e)).collect();
        Box::pin(async move { self.f.call(state, tx, received?).await.map_err(Into::into) })
    }
}

/// One registered event type: how to handle it, whether backfill replays it, and its
/// JSON Schema (what the handler reads, for contracts).
struct Registration<S> {
    route: Box<dyn Route<S>>,
    replay: bool,
    schema: fn() -> schemars::Schema,
}

/// A type the service publishes: the Rust type that stands for it and its writer schema.
struct Published {
    rust_type: &'static str,
    schema: fn() -> serde_json::Value,
}

/// The event types a service handles, each with its handler function, the service's state
/// they share, and the types it publishes.
pub struct Handlers<S = ()> {
    state: Arc<S>,
    by_type: BTreeMap<&'static str, Registration<S>>,
    publishes: BTreeMap<&'static str, Published>,
    transactional: bool,
}

impl Handlers<()> {
    /// No handlers: for a service that only publishes (what it publishes still has to be
    /// declared: `Handlers::none().publishes::<PostCreated>()`).
    pub fn none() -> Self {
        Self::new(())
    }
}

impl<S: Send + Sync + 'static> Handlers<S> {
    pub fn new(state: S) -> Self {
        Self { state: Arc::new(state), by_type: BTreeMap::new(), publishes: BTreeMap::new(), transactional: false }
    }

    /// Declares that every handler's only effects are its writes through the transaction
    /// it is given (what it emits included): no calls out, no state of its own, so a run
    /// that is rolled back leaves no trace. The events of a delivered batch then share
    /// their transaction without a savepoint each, one round trip (and on PostgreSQL one
    /// subtransaction) less per event; when one fails, the batch is rolled back and the
    /// events before it are handled again. Without it, the events before a failing one
    /// are committed as they were handled, each handler running once.
    pub fn transactional(mut self) -> Self {
        self.transactional = true;
        self
    }

    /// Declares that this service publishes `E`: its writer schema goes into the service's
    /// contract, and its events carry that schema's digest as their `dataschema`. A
    /// service cannot emit a type it did not declare (the emit fails, saying so).
    pub fn publishes<E>(mut self) -> Self
    where
        E: Event + JsonSchema,
    {
        let previous = self
            .publishes
            .insert(E::TYPE, Published { rust_type: type_name::<E>(), schema: contract::writer_schema::<E> });
        assert!(previous.is_none(), "event type {} is declared twice; declare each published type once", E::TYPE);
        self
    }

    /// Handles `E` with `f`, also when a fresh copy is rebuilt from history (backfill):
    /// for state this service copies from others.
    pub fn on<E>(self, f: impl for<'a> HandlerFn<'a, S, Received<E>>) -> Self
    where
        E: Event + JsonSchema + Send + 'static,
    {
        self.register::<E>(Box::new(Each { decoder: Decoder::new(), f }), true)
    }

    /// Handles `E` with `f` only as events arrive, never from history: for reactions that
    /// must happen once, when the event is new (deciding on a comment, sending a mail).
    pub fn on_new<E>(self, f: impl for<'a> HandlerFn<'a, S, Received<E>>) -> Self
    where
        E: Event + JsonSchema + Send + 'static,
    {
        self.register::<E>(Box::new(Each { decoder: Decoder::new(), f }), false)
    }

    /// Handles `E` like [`Self::on`] (history included), but `f` takes a `Vec`: the
    /// consecutive events of `E` in a delivered batch, in order, so it can apply them in
    /// one statement. Only with [`Self::transactional`]: events of a batch are then handled
    /// without a savepoint each, and when `f` fails, the consumer handles the batch again
    /// one event per call, so the error names the event that caused it. Without it, `f`
    /// gets one event per call. `f` must leave the same state as calls one event at a time
    /// in the same order would (a later event of an id overwriting an earlier one).
    pub fn on_many<E>(self, f: impl for<'a> HandlerFn<'a, S, Vec<Received<E>>>) -> Self
    where
        E: Event + JsonSchema + Send + 'static,
    {
        self.register::<E>(Box::new(Many { decoder: Decoder::new(), f }), true)
    }

    /// [`Self::on_new`] taking runs, as [`Self::on_many`] does: `f` gets the consecutive
    /// new events of `E` in a delivered batch in one call (with [`Self::transactional`]),
    /// never events from history.
    pub fn on_new_many<E>(self, f: impl for<'a> HandlerFn<'a, S, Vec<Received<E>>>) -> Self
    where
        E: Event + JsonSchema + Send + 'static,
    {
        self.register::<E>(Box::new(Many { decoder: Decoder::new(), f }), false)
    }

    fn register<E>(mut self, route: Box<dyn Route<S>>, replay: bool) -> Self
    where
        E: Event + JsonSchema + Send + 'static,
    {
        let previous =
            self.by_type.insert(E::TYPE, Registration { route, replay, schema: contract::reader_schema::<E> });
        assert!(previous.is_none(), "event type {} is registered twice; one handler per type", E::TYPE);
        self
    }

    /// Every type handled, sorted.
    pub fn types(&self) -> Vec<&'static str> {
        self.by_type.keys().copied().collect()
    }

    /// The types a backfill replays (those registered with [`Self::on`]), sorted.
    pub fn replayed(&self) -> Vec<&'static str> {
        self.by_type.iter().filter(|(_, r)| r.replay).map(|(t, _)| *t).collect()
    }

    /// The JSON Schema of each handled type's data, as this service's handlers read it.
    pub fn reader_schemas(&self) -> BTreeMap<&'static str, schemars::Schema> {
        self.by_type.iter().map(|(t, r)| (*t, (r.schema)())).collect()
    }

    /// Every type declared with [`Self::publishes`], sorted.
    pub fn published(&self) -> Vec<&'static str> {
        self.publishes.keys().copied().collect()
    }

    /// The JSON Schema of each published type's data, as this service writes it.
    pub fn writer_schemas(&self) -> BTreeMap<&'static str, serde_json::Value> {
        self.publishes.iter().map(|(t, p)| (*t, (p.schema)())).collect()
    }

    /// This service's contract: a writer schema per published type, a reader schema per
    /// handled type.
    pub fn contract(&self) -> ServiceContract {
        ServiceContract {
            publishes: self.writer_schemas().into_iter().map(|(t, s)| (t.to_owned(), TypeSchema::new(s))).collect(),
            subscribes: self
                .reader_schemas()
                .into_iter()
                .map(|(t, s)| (t.to_owned(), TypeSchema::new(s.to_value())))
                .collect(),
        }
    }

    /// What the database needs to check and stamp what this service emits.
    pub(crate) fn declared(&self) -> Declared {
        Declared::new(self.publishes.iter().map(|(t, p)| (*t, p.rust_type, (p.schema)())))
    }
}

#[async_trait]
impl<S: Send + Sync + 'static> Handler for Handlers<S> {
    async fn handle(&self, tx: &mut Tx, event: &CloudEvent) -> Result<(), HandlerError> {
        match self.by_type.get(event.ty()) {
            Some(r) => r.route.handle_run(&self.state, tx, &[event]).await,
            None => {
                unhandled(event.ty());
                Ok(())
            }
        }
    }

    /// Each run of one type goes to its route whole: a function registered with
    /// [`Self::on_many`] gets it in one call, any other one event at a time.
    async fn handle_run(&self, tx: &mut Tx, events: &[&CloudEvent]) -> Result<(), HandlerError> {
        for run in events.chunk_by(|a, b| a.ty() == b.ty()) {
            match self.by_type.get(run[0].ty()) {
                Some(r) => r.route.handle_run(&self.state, tx, run).await?,
                None => unhandled(run[0].ty()),
            }
        }
        Ok(())
    }

    fn transactional(&self) -> bool {
        self.transactional
    }
}

/// The wiring sent a type no handler is registered for: nothing to apply.
fn unhandled(ty: &str) {
    tracing::debug!(event_type = ty, "no handler for this event type; ignoring it");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::{Db, DbError, DbOptions};
    use serde::{Deserialize, Serialize};

    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    struct Added {
        id: String,
        n: i64,
    }
    impl Event for Added {
        const TYPE: &'static str = "Added";
        fn aggregate_id(&self) -> String {
            self.id.clone()
        }
    }
    #[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
    struct Noted {
        id: String,
    }
    impl Event for Noted {
        const TYPE: &'static str = "Noted";
        fn aggregate_id(&self) -> String {
            self.id.clone()
        }
    }

    struct Factor(i64);

    async fn add(f: &Factor, tx: &mut Tx, ev: Received<Added>) -> Result<(), DbError> {
        sqlx::query("INSERT INTO t (id, n) VALUES ($1, $2)").bind(&ev.id).bind(ev.n * f.0).execute(&mut **tx).await?;
        Ok(())
    }

    async fn refuse(_: &Factor, _: &mut Tx, ev: Received<Noted>) -> Result<(), String> {
        Err(format!("refusing {} (event version {:?})", ev.id, ev.meta.version))
    }

    #[tokio::test]
    async fn each_type_reaches_its_own_function_with_decoded_data_and_state() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("h.db").display());
        let db = Db::connect("t", &url, DbOptions::default()).await.unwrap();
        sqlx::query("CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER)").execute(db.pool()).await.unwrap();
        let h = Handlers::new(Factor(10)).on::<Added>(add).on_new::<Noted>(refuse);
        assert_eq!(h.types(), ["Added", "Noted"]);
        assert_eq!(h.replayed(), ["Added"]);
        assert!(h.reader_schemas()["Added"].as_value()["properties"]["n"].is_object());

        let mut tx = db.begin().await.unwrap();
        h.handle(&mut tx, &envelope::build("x", &Added { id: "a".into(), n: 4 }, 1)).await.unwrap();
        let err = h.handle(&mut tx, &envelope::build("x", &Noted { id: "b".into() }, 1)).await.unwrap_err();
        assert_eq!(err.to_string(), "refusing b (event version Some(1))");
        // Data that is not what the type says is reported as such, for the consumer to dead-letter.
        let bad = envelope::decode_one(r#"{"specversion":"1.0","id":"1","source":"s","type":"Added","data":{"id":1}}"#)
            .unwrap();
        let err = h.handle(&mut tx, &bad).await.unwrap_err();
        assert!(matches!(err.downcast_ref::<EnvelopeError>(), Some(EnvelopeError::Data { .. })), "{err}");
        tx.commit().await.unwrap();
        let n: (i64,) = sqlx::query_as("SELECT n FROM t WHERE id = 'a'").fetch_one(db.pool()).await.unwrap();
        assert_eq!(n.0, 40);
    }

    #[tokio::test]
    async fn data_the_reader_schema_rejects_is_refused_with_the_schema_error_and_the_dataschema() {
        let dir = tempfile::tempdir().unwrap();
        let db = Db::connect("t", &format!("sqlite://{}", dir.path().join("h.db").display()), DbOptions::default())
            .await
            .unwrap();
        let h = Handlers::new(Factor(1)).on::<Added>(add);
        let mut ev = envelope::decode_one(
            r#"{"specversion":"1.0","id":"e1","source":"s","type":"Added","data":{"id":"a","n":"four"}}"#,
        )
        .unwrap();
        let uri = "urn:busbar:schema:Added:sha256:0123";
        envelope::set_dataschema(&mut ev, &envelope::schema_uri(uri).unwrap());
        let mut tx = db.begin().await.unwrap();
        let err = h.handle(&mut tx, &ev).await.unwrap_err();
        let Some(EnvelopeError::Data { reason, dataschema, .. }) = err.downcast_ref::<EnvelopeError>() else {
            panic!("not a data error: {err}")
        };
        assert_eq!(dataschema.as_deref(), Some(uri));
        assert!(reason.starts_with("the reader schema rejects it: at /n: "), "{reason}");
        assert!(reason.contains(r#""four" is not of type "integer""#), "{reason}");
        let text = err.to_string();
        assert!(
            text.starts_with(
                "event e1: data does not match Added (its dataschema: urn:busbar:schema:Added:sha256:0123)"
            ),
            "{text}"
        );

        // Without a dataschema, and with a field missing.
        let ev =
            envelope::decode_one(r#"{"specversion":"1.0","id":"e2","source":"s","type":"Added","data":{"id":"a"}}"#)
                .unwrap();
        let text = h.handle(&mut tx, &ev).await.unwrap_err().to_string();
        assert!(
            text.contains(
                "(it carries no dataschema): the reader schema rejects it: at /: \"n\" is a required property"
            ),
            "{text}"
        );
    }

    /// The size of each call of [`add_all`].
    #[derive(Default)]
    struct Calls(std::sync::Mutex<Vec<usize>>);

    async fn add_all(calls: &Calls, tx: &mut Tx, all: Vec<Received<Added>>) -> Result<(), DbError> {
        calls.0.lock().unwrap().push(all.len());
        for ev in all {
            sqlx::query("INSERT INTO t (id, n) VALUES ($1, $2)").bind(&ev.id).bind(ev.n).execute(&mut **tx).await?;
        }
        Ok(())
    }

    async fn noted(_: &Calls, _: &mut Tx, _: Received<Noted>) -> Result<(), DbError> {
        Ok(())
    }

    #[tokio::test]
    async fn a_function_taking_many_gets_each_run_of_its_type_in_one_call() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("h.db").display());
        let db = Db::connect("t", &url, DbOptions::default()).await.unwrap();
        sqlx::query("CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER)").execute(db.pool()).await.unwrap();
        let h = Handlers::new(Calls::default()).on_many::<Added>(add_all).on::<Noted>(noted).transactional();
        assert_eq!(h.replayed(), ["Added", "Noted"], "a function taking many is replayed, like `on`");
        let added = |id: &str| envelope::build("x", &Added { id: id.into(), n: 1 }, 1);
        let run = [added("a"), added("b"), envelope::build("x", &Noted { id: "n".into() }, 1), added("c"), added("d")];
        let mut tx = db.begin().await.unwrap();
        h.handle_run(&mut tx, &run.iter().collect::<Vec<_>>()).await.unwrap();
        h.handle(&mut tx, &added("e")).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(*h.state.0.lock().unwrap(), [2, 2, 1], "a and b, c and d, then e alone");
        let ids: Vec<(String,)> = sqlx::query_as("SELECT id FROM t ORDER BY id").fetch_all(db.pool()).await.unwrap();
        assert_eq!(ids.into_iter().map(|r| r.0).collect::<Vec<_>>(), ["a", "b", "c", "d", "e"]);

        // One event of a run whose data is not what its type says fails the run, as an
        // event the consumer dead-letters.
        let bad = envelope::decode_one(r#"{"specversion":"1.0","id":"1","source":"s","type":"Added","data":{"id":1}}"#)
            .unwrap();
        let mut tx = db.begin().await.unwrap();
        let err = h.handle_run(&mut tx, &[&added("f"), &bad]).await.unwrap_err();
        assert!(matches!(err.downcast_ref::<EnvelopeError>(), Some(EnvelopeError::Data { .. })), "{err}");
        assert_eq!(h.state.0.lock().unwrap().len(), 3, "the function is not called");
    }

    #[tokio::test]
    async fn a_reaction_taking_many_gets_runs_and_is_never_replayed() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("h.db").display());
        let db = Db::connect("t", &url, DbOptions::default()).await.unwrap();
        sqlx::query("CREATE TABLE t (id TEXT PRIMARY KEY, n INTEGER)").execute(db.pool()).await.unwrap();
        let h = Handlers::new(Calls::default()).on_new_many::<Added>(add_all).on::<Noted>(noted).transactional();
        assert_eq!(h.types(), ["Added", "Noted"]);
        assert_eq!(h.replayed(), ["Noted"], "a reaction is not replayed from history, taking many or not");
        let added = |id: &str| envelope::build("x", &Added { id: id.into(), n: 1 }, 1);
        let run = [added("a"), added("b"), added("c"), envelope::build("x", &Noted { id: "n".into() }, 1), added("d")];
        let mut tx = db.begin().await.unwrap();
        h.handle_run(&mut tx, &run.iter().collect::<Vec<_>>()).await.unwrap();
        tx.commit().await.unwrap();
        assert_eq!(*h.state.0.lock().unwrap(), [3, 1], "a to c in one call, then d");
    }

    #[test]
    fn the_contract_lists_what_is_read_and_what_is_written() {
        let h = Handlers::new(Factor(1)).on::<Added>(add).publishes::<Noted>();
        assert_eq!(h.published(), ["Noted"]);
        let c = h.contract();
        assert_eq!(c.subscribes.keys().collect::<Vec<_>>(), ["Added"]);
        assert_eq!(c.publishes.keys().collect::<Vec<_>>(), ["Noted"]);
        let written = contract::writer_schema::<Noted>();
        assert_eq!(c.publishes["Noted"], TypeSchema::new(written));
        assert_eq!(c.subscribes["Added"].schema, contract::reader_schema::<Added>().to_value());
    }

    #[test]
    #[should_panic(expected = "declared twice")]
    fn a_published_type_declared_twice_is_a_programming_error() {
        let _ = Handlers::none().publishes::<Noted>().publishes::<Noted>();
    }

    #[test]
    #[should_panic(expected = "registered twice")]
    fn a_type_registered_twice_is_a_programming_error() {
        let _ = Handlers::new(Factor(1)).on::<Added>(add).on::<Added>(add);
    }
}
