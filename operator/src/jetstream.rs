//! The operator's NATS connections, and the JetStream calls observe and execute make
//! through them: reading the bus's streams, consumers and figures (what each subscriber
//! holds parked, from the bus's parked bucket: [`busbar_client::jetstream::parked`]), and
//! carrying out the stream and consumer actions. What to create, change or delete is
//! decided in [`crate::plan::consumers`].

use std::{
    collections::{BTreeMap, HashMap},
    future::Future,
    time::Duration,
};

use async_nats::jetstream::{
    ErrorCode,
    consumer::{self, pull},
    context::GetStreamErrorKind,
    stream::Stream,
};
use busbar_client::jetstream::JetStream;
use busbar_domain::names::{dead_letter_stream_name, dead_letter_subject, stream_name};
use futures::TryStreamExt;
use tokio::sync::Mutex;

use crate::plan::observed::{JetStreamObserved, SubscriberFigures};

/// Bounds one call to NATS, so an unreachable server fails a reconcile instead of hanging it.
pub const TIMEOUT: Duration = Duration::from_secs(10);

/// One NATS connection per (url, bus), kept across reconciles.
#[derive(Default)]
pub struct Links {
    conns: Mutex<HashMap<(String, String), Link>>,
}

/// A connection, and the admin token it was made with.
struct Link {
    token: Option<String>,
    js: JetStream,
}

impl Links {
    /// The connection to `url` for `bus`, as the admin user when the bus has a key (NATS
    /// configured with the bus's users admits the operator only so; a server without
    /// authorization ignores the credentials). A new token means a new connection.
    ///
    /// A first connection fails at once when NATS cannot be reached, so the reconcile says so
    /// and retries later, instead of waiting on a client that keeps trying in the background
    /// (which also could not tell which server version it talks to). Once connected, the
    /// client reconnects by itself.
    pub async fn connect(&self, url: &str, bus: &str, admin_token: Option<&str>) -> Result<JetStream, String> {
        let key = (url.to_owned(), bus.to_owned());
        if let Some(link) = self.conns.lock().await.get(&key)
            && link.token.as_deref() == admin_token
        {
            return Ok(link.js.clone());
        }
        let connecting = async {
            match admin_token {
                Some(token) => JetStream::connect_now_as(url, bus, busbar_domain::credentials::ADMIN, token).await,
                None => JetStream::connect_now(url, bus).await,
            }
            .map_err(|e| e.to_string())
        };
        let js = bounded(connecting).await.map_err(|e| format!("NATS at {url}: {e}"))?;
        self.conns.lock().await.insert(key, Link { token: admin_token.map(str::to_owned), js: js.clone() });
        Ok(js)
    }
}

async fn bounded<T>(work: impl Future<Output = Result<T, String>>) -> Result<T, String> {
    tokio::time::timeout(TIMEOUT, work)
        .await
        .unwrap_or_else(|_| Err(format!("did not answer within {}s", TIMEOUT.as_secs())))
}

async fn stream_if_any(js: &JetStream, name: &str) -> Result<Option<Stream>, String> {
    match js.context().get_stream(name).await {
        Ok(s) => Ok(Some(s)),
        Err(e) if matches!(e.kind(), GetStreamErrorKind::JetStream(j) if j.error_code() == ErrorCode::STREAM_NOT_FOUND) => {
            Ok(None)
        }
        Err(e) => Err(format!("cannot read stream {name}: {e}")),
    }
}

/// The bus's streams and consumers, and each consumer's figures.
pub async fn observe(js: &JetStream) -> Result<JetStreamObserved, String> {
    let bus = js.bus().to_owned();
    let reading = async {
        let stream = stream_if_any(js, &stream_name(&bus)).await?;
        let dlq = stream_if_any(js, &dead_letter_stream_name(&bus)).await?;
        let mut seen = JetStreamObserved {
            multi_filter: js.multi_filter(),
            streams: stream.is_some() && dlq.is_some(),
            ..Default::default()
        };
        let Some(stream) = stream else { return Ok(seen) };
        let dead: BTreeMap<String, usize> = match &dlq {
            Some(_) => js.dead_letter_counts().await.map_err(|e| e.to_string())?,
            None => BTreeMap::new(),
        };
        let infos: Vec<consumer::Info> =
            stream.consumers().try_collect().await.map_err(|e| format!("cannot list the consumers: {e}"))?;
        // What each subscriber last reported holding parked; unknown when it has not.
        let parked = js.parked_figures(&infos.iter().map(|i| i.name.clone()).collect::<Vec<_>>()).await;
        for info in infos {
            let dead_lettered = dlq.is_some().then(|| *dead.get(&dead_letter_subject(&bus, &info.name)).unwrap_or(&0));
            seen.figures.insert(
                info.name.clone(),
                SubscriberFigures {
                    pending: Some(info.num_pending),
                    redelivered: Some(info.num_redelivered as u64),
                    dead_lettered: dead_lettered.map(|n| n as u64),
                    parked: parked.get(&info.name).copied(),
                },
            );
            seen.consumers.insert(info.name, pull_config(info.config));
        }
        Ok(seen)
    };
    bounded(reading).await
}

/// Creates the bus's stream and dead-letter stream (kept as they are if they exist).
pub async fn create_streams(js: &JetStream) -> Result<(), String> {
    bounded(async { js.ensure_streams().await.map_err(|e| e.to_string()) }).await
}

/// Creates or updates a consumer on the bus's stream.
pub async fn put_consumer(js: &JetStream, config: &pull::Config) -> Result<(), String> {
    bounded(async {
        let stream = js.context().get_stream(stream_name(js.bus())).await.map_err(|e| e.to_string())?;
        stream.create_consumer(config.clone()).await.map(drop).map_err(|e| e.to_string())
    })
    .await
}

/// Deletes a consumer of the bus's stream; one that is gone already is fine.
pub async fn delete_consumer(js: &JetStream, name: &str) -> Result<(), String> {
    bounded(async {
        let Some(stream) = stream_if_any(js, &stream_name(js.bus())).await? else { return Ok(()) };
        match stream.delete_consumer(name).await {
            Ok(_) => Ok(()),
            Err(e) if stream.consumer_info(name).await.is_err() => {
                tracing::debug!(consumer = name, error = %e, "consumer already gone");
                Ok(())
            }
            Err(e) => Err(e.to_string()),
        }
    })
    .await
}

/// The parts of a consumer's configuration busbar sets, in the form it asks for them.
fn pull_config(c: consumer::Config) -> pull::Config {
    pull::Config {
        durable_name: c.durable_name,
        deliver_policy: c.deliver_policy,
        ack_policy: c.ack_policy,
        ack_wait: c.ack_wait,
        max_deliver: c.max_deliver,
        filter_subject: c.filter_subject,
        filter_subjects: c.filter_subjects,
        ..Default::default()
    }
}
