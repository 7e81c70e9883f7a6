//! Typed event handlers: a service says which event types it handles by registering a
//! function per type, and everything else follows from that one list: the types it
//! subscribes to, what backfill replays, and the contract its readers need.
//!
//! ```ignore
//! let handlers = Handlers::new(words)
//!     .on::<PostCreated>(store::remember_post)          // a copy: rebuilt from history
//!     .on_new::<CommentModerated>(store::apply_decision); // a reaction: only as it happens
//! service.serve(routes, Some(handlers)).await
//!
//! async fn remember_post(_: &WordList, tx: &mut Tx, post: Received<PostCreated>) -> Result<(), DbError> { ... }
//! ```
//!
//! A handler is an `async fn (&S, &mut Tx, Received<E>) -> Result<(), impl Into<HandlerError>>`:
//! `S` is the service's own state (`()` when it has none), `Tx` the transaction its writes
//! (and the inbox record, and any event it emits) commit in, and [`Received`] the decoded
//! `data` plus the envelope's attributes.

use std::{collections::BTreeMap, future::Future, pin::Pin, sync::Arc};

use async_trait::async_trait;
use cloudevents::AttributesReader;
use schemars::JsonSchema;

use crate::{
    consumer::{Handler, HandlerError},
    db::Tx,
    envelope::{self, CloudEvent, Event},
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
}

/// What a handler function returns, boxed.
type HandlerFuture<'a> = Pin<Box<dyn Future<Output = Result<(), HandlerError>> + Send + 'a>>;

/// A handler function for events of type `E` with service state `S`. Implemented for every
/// `async fn(&S, &mut Tx, Received<E>) -> Result<(), Er>` where `Er` converts to a
/// [`HandlerError`]; there is nothing to implement by hand.
pub trait HandlerFn<'a, S: 'a, E>: Send + Sync + 'static {
    type Fut: Future<Output = Result<(), Self::Error>> + Send + 'a;
    type Error: Into<HandlerError>;
    fn call(&self, state: &'a S, tx: &'a mut Tx, event: Received<E>) -> Self::Fut;
}

impl<'a, S: 'a, E, F, Fut, Er> HandlerFn<'a, S, E> for F
where
    F: Fn(&'a S, &'a mut Tx, Received<E>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), Er>> + Send + 'a,
    Er: Into<HandlerError>,
{
    type Fut = Fut;
    type Error = Er;
    fn call(&self, state: &'a S, tx: &'a mut Tx, event: Received<E>) -> Fut {
        self(state, tx, event)
    }
}

/// One registered type: decodes the envelope's data and calls the function.
trait Route<S>: Send + Sync {
    fn handle<'a>(&'a self, state: &'a S, tx: &'a mut Tx, event: &'a CloudEvent) -> HandlerFuture<'a>;
}

struct Typed<E, F> {
    f: F,
    _event: std::marker::PhantomData<fn() -> E>,
}

impl<S, E, F> Route<S> for Typed<E, F>
where
    S: Send + Sync + 'static,
    E: Event + Send + 'static,
    F: for<'a> HandlerFn<'a, S, E>,
{
    fn handle<'a>(&'a self, state: &'a S, tx: &'a mut Tx, event: &'a CloudEvent) -> HandlerFuture<'a> {
        // A payload that is not what its type says is the event's fault, and the consumer
        // dead-letters it at once (EnvelopeError::Data); decode before entering the future.
        let received = envelope::data::<E>(event).map(|data| Received {
            data,
            meta: Meta {
                id: event.id().to_owned(),
                source: event.source().to_string(),
                subject: event.subject().map(str::to_owned),
                version: envelope::aggregate_version(event),
            },
        });
        Box::pin(async move {
            let received = received.map_err(|e| Box::new(e) as HandlerError)?;
            self.f.call(state, tx, received).await.map_err(Into::into)
        })
    }
}

/// One registered event type: how to handle it, whether backfill replays it, and its
/// JSON Schema (what the handler reads, for contracts).
struct Registration<S> {
    route: Box<dyn Route<S>>,
    replay: bool,
    schema: fn() -> schemars::Schema,
}

/// The event types a service handles, each with its handler function, and the service's
/// state they share.
pub struct Handlers<S = ()> {
    state: Arc<S>,
    by_type: BTreeMap<&'static str, Registration<S>>,
}

impl Handlers<()> {
    /// No handlers: for a service that only publishes.
    pub fn none() -> Self {
        Self::new(())
    }
}

impl<S: Send + Sync + 'static> Handlers<S> {
    pub fn new(state: S) -> Self {
        Self { state: Arc::new(state), by_type: BTreeMap::new() }
    }

    /// Handles `E` with `f`, also when a fresh copy is rebuilt from history (backfill):
    /// for state this service copies from others.
    pub fn on<E>(self, f: impl for<'a> HandlerFn<'a, S, E>) -> Self
    where
        E: Event + JsonSchema + Send + 'static,
    {
        self.register::<E>(f, true)
    }

    /// Handles `E` with `f` only as events arrive, never from history: for reactions that
    /// must happen once, when the event is new (deciding on a comment, sending a mail).
    pub fn on_new<E>(self, f: impl for<'a> HandlerFn<'a, S, E>) -> Self
    where
        E: Event + JsonSchema + Send + 'static,
    {
        self.register::<E>(f, false)
    }

    fn register<E>(mut self, f: impl for<'a> HandlerFn<'a, S, E>, replay: bool) -> Self
    where
        E: Event + JsonSchema + Send + 'static,
    {
        let route = Box::new(Typed::<E, _> { f, _event: std::marker::PhantomData });
        let previous =
            self.by_type.insert(E::TYPE, Registration { route, replay, schema: || schemars::schema_for!(E) });
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
}

#[async_trait]
impl<S: Send + Sync + 'static> Handler for Handlers<S> {
    async fn handle(&self, tx: &mut Tx, event: &CloudEvent) -> Result<(), HandlerError> {
        match self.by_type.get(event.ty()) {
            Some(r) => r.route.handle(&self.state, tx, event).await,
            // The wiring sent a type no handler is registered for: nothing to apply.
            None => {
                tracing::debug!(event_type = event.ty(), "no handler for this event type; ignoring it");
                Ok(())
            }
        }
    }
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
        assert!(err.downcast_ref::<envelope::EnvelopeError>().is_some(), "{err}");
        tx.commit().await.unwrap();
        let n: (i64,) = sqlx::query_as("SELECT n FROM t WHERE id = 'a'").fetch_one(db.pool()).await.unwrap();
        assert_eq!(n.0, 40);
    }

    #[test]
    #[should_panic(expected = "registered twice")]
    fn a_type_registered_twice_is_a_programming_error() {
        let _ = Handlers::new(Factor(1)).on::<Added>(add).on::<Added>(add);
    }
}
