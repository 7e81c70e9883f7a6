//! JetStream with per-service NATS users from `nats_auth::authorization_block`, on a real
//! nats-server this test starts with that config: a service publishes its own types and
//! nothing else, a foreign password is refused, and one service cannot pull another's
//! durable consumer.

use std::time::Duration;

use async_nats::jetstream::{self, consumer::pull};
use busbar::{
    bus_api::Parked,
    credentials::{ADMIN, BusKey},
    envelope::CloudEvent,
    names::{stream_name, subject},
    transport::jetstream::JetStream,
};
use futures::StreamExt;

const BUS: &str = "blog";

fn event(ty: &str, source: &str) -> CloudEvent {
    let json = serde_json::json!({"specversion": "1.0", "id": uuid::Uuid::now_v7().to_string(), "source": source,
        "type": ty, "subject": "p1", "data": {"id": "p1"}});
    busbar::envelope::decode_one(&json.to_string()).unwrap()
}

async fn connect(url: &str, user: &str, password: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::with_user_and_password(user.into(), password.into())
        .custom_inbox_prefix(busbar::nats_auth::inbox_prefix(user))
        .connection_timeout(Duration::from_secs(5))
        .connect(url)
        .await
}

#[tokio::test]
async fn services_publish_only_their_types_and_pull_only_their_own_durable() {
    let spec = busbar::spec::parse_manifest(include_str!("../../../k8s/base/servicebus.yaml")).unwrap().spec;
    let key = BusKey::generate();
    let mut nats = testkit::Nats::new();
    nats.extra_conf = busbar::nats_auth::authorization_block(BUS, &spec, &key);
    nats.start().await;
    let url = nats.url();

    // No credentials, or a token from another bus's key: refused at connect.
    let foreign = BusKey::generate().token("posts");
    let e = connect(&url, "posts", &foreign).await.unwrap_err().to_string();
    assert!(e.to_lowercase().contains("authorization"), "{e}");
    assert!(async_nats::connect(&url).await.is_err(), "anonymous connections are refused");

    // posts, through the SDK, publishes PostCreated (creating the streams on the way).
    let posts = JetStream::connect_as(&url, BUS, "posts", &key.token("posts")).await.unwrap();
    let created = event("PostCreated", "posts");
    posts.publish(std::slice::from_ref(&created)).await.unwrap();
    // An undeclared type never reaches the stream: the server drops it as a permissions
    // violation, so the publish gets no acknowledgement.
    let forged = event("CommentModerated", "posts");
    let refused = tokio::time::timeout(Duration::from_secs(8), posts.publish(std::slice::from_ref(&forged))).await;
    assert!(!matches!(refused, Ok(Ok(()))), "publishing an undeclared type must fail");

    let admin = jetstream::new(connect(&url, ADMIN, &key.token(ADMIN)).await.unwrap());
    let mut stream = admin.get_stream(stream_name(BUS)).await.unwrap();
    let info = stream.info().await.unwrap();
    assert_eq!(info.state.messages, 1, "only PostCreated is stored");
    let stored = stream.get_last_raw_message_by_subject(&subject(BUS, "PostCreated")).await.unwrap();
    assert!(String::from_utf8_lossy(&stored.payload).contains(&created.id().to_string()));

    // query's durable exists; comments may not pull from it, query may.
    for durable in ["query", "comments"] {
        stream
            .create_consumer(pull::Config {
                durable_name: Some(durable.into()),
                filter_subject: subject(BUS, "PostCreated"),
                ..Default::default()
            })
            .await
            .unwrap();
    }
    let comments = connect(&url, "comments", &key.token("comments")).await.unwrap();
    let next = format!("$JS.API.CONSUMER.MSG.NEXT.{}.query", stream_name(BUS));
    let stolen = tokio::time::timeout(Duration::from_secs(3), comments.request(next, "1".into())).await;
    assert!(!matches!(stolen, Ok(Ok(_))), "comments pulled from query's durable: {stolen:?}");
    let own = jetstream::new(comments).get_stream(stream_name(BUS)).await.unwrap();
    let mine: jetstream::consumer::PullConsumer = own.get_consumer("comments").await.unwrap();
    let mut batch = mine.fetch().max_messages(1).expires(Duration::from_secs(3)).messages().await.unwrap();
    let msg = batch.next().await.expect("comments reads its own durable").unwrap();
    msg.ack().await.unwrap();
    println!("refused: a foreign token, an anonymous client, an undeclared publish, a pull from another's durable");

    // What a subscriber holds parked: query reports its own (creating the bucket), the
    // admin (`busbar status`, the operator) reads it, and comments cannot overwrite it.
    let unknown = JetStream::connect_now_as(&url, BUS, ADMIN, &key.token(ADMIN)).await.unwrap();
    let parked_of = |rows: Vec<busbar::bus_api::SubscriberStatus>, name: &str| {
        rows.into_iter().find(|r| r.name == name).unwrap_or_else(|| panic!("a row for {name}")).parked
    };
    assert_eq!(parked_of(unknown.subscriber_status().await.unwrap(), "query"), None, "no report yet: unknown");
    let query = JetStream::connect_as(&url, BUS, "query", &key.token("query")).await.unwrap();
    query.report_parked("query", Parked { count: 1, oldest_age_ms: 2_000 }).await.expect("query reports its own");
    let seen = parked_of(unknown.subscriber_status().await.unwrap(), "query").expect("query's report");
    assert_eq!(seen.count, 1);
    assert!((2_000..30_000).contains(&seen.oldest_age_ms), "its age as reported, and since: {seen:?}");
    let comments = JetStream::connect_as(&url, BUS, "comments", &key.token("comments")).await.unwrap();
    let forged = Parked { count: 0, oldest_age_ms: 0 };
    let forging = tokio::time::timeout(Duration::from_secs(8), comments.report_parked("query", forged)).await;
    assert!(!matches!(forging, Ok(Ok(()))), "comments overwrote query's parked figure");
    assert_eq!(parked_of(unknown.subscriber_status().await.unwrap(), "query").map(|p| p.count), Some(1));
    assert_eq!(parked_of(unknown.subscriber_status().await.unwrap(), "comments"), None, "comments has not reported");
}

use busbar::AttributesReader;
