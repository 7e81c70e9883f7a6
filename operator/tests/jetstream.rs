//! JetStream provisioning against a real nats-server: the stream and one durable consumer
//! per subscriber are created, updated and deleted as the spec changes.

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use busbar_domain::{
    names::{dead_letter_stream_name, stream_name},
    spec::{ServiceBusSpec, StartFrom, TransportSpec},
};
use busbar_operator::{fixtures::blog_spec, jetstream::Provisioner, plan::TransportState};
use futures::TryStreamExt;

/// A bus name no other test run uses, so streams never collide.
fn unique_bus() -> String {
    format!("op{}", uuid::Uuid::now_v7().simple()).chars().take(24).collect()
}

fn on_jetstream(mut spec: ServiceBusSpec, url: &str) -> ServiceBusSpec {
    spec.transport = TransportSpec {
        builtin: None,
        jetstream: Some(busbar_domain::spec::JetStreamSpec { url: url.into(), replicas: 1 }),
    };
    spec
}

async fn consumers(js: &jetstream::Context, bus: &str) -> Vec<String> {
    let stream = js.get_stream(stream_name(bus)).await.expect("the stream exists");
    let mut names: Vec<String> = stream.consumer_names().try_collect().await.unwrap();
    names.sort();
    names
}

#[tokio::test]
async fn streams_and_consumers_follow_the_spec() {
    let url = testkit::nats_url();
    let bus = unique_bus();
    let js = jetstream::new(async_nats::connect(&url).await.expect("NATS is reachable (cargo xtask test starts one)"));
    let p = Provisioner::default();

    // Created.
    let spec = on_jetstream(blog_spec(), &url);
    let (state, stats) = p.provision(&url, &bus, &spec).await;
    assert_eq!(state, TransportState::JetStream { result: Ok(()), warnings: vec![] });
    assert_eq!(consumers(&js, &bus).await, ["comments", "moderation", "query"]);
    assert!(js.get_stream(dead_letter_stream_name(&bus)).await.is_ok(), "the dead-letter stream exists");
    assert_eq!(stats["query"].pending, Some(0));
    assert_eq!(stats["query"].dead_lettered, Some(0));
    let stream = js.get_stream(stream_name(&bus)).await.unwrap();
    let moderation = stream.consumer_info("moderation").await.unwrap();
    assert_eq!(moderation.config.filter_subject, format!("busbar.{bus}.CommentCreated"));

    // Updated: moderation leaves, ackWait changes for everyone.
    let mut next = spec.clone();
    next.services.retain(|s| s.name != "moderation");
    next.delivery.ack_wait = "45s".into();
    let (state, _) = p.provision(&url, &bus, &next).await;
    assert_eq!(state, TransportState::JetStream { result: Ok(()), warnings: vec![] });
    assert_eq!(consumers(&js, &bus).await, ["comments", "query"]);
    let query = stream.consumer_info("query").await.unwrap();
    assert_eq!(query.config.ack_wait, std::time::Duration::from_secs(45));

    // A change JetStream cannot make: the consumer keeps its position, and status says so.
    let mut now = next.clone();
    now.services.iter_mut().find(|s| s.name == "query").unwrap().start_from = Some(StartFrom::Now);
    let (state, _) = p.provision(&url, &bus, &now).await;
    let TransportState::JetStream { result: Ok(()), warnings } = state else {
        panic!("provisioning failed: {state:?}")
    };
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("consumer query keeps its start position"), "{warnings:?}");
    assert_eq!(stream.consumer_info("query").await.unwrap().config.deliver_policy, DeliverPolicy::All);

    // Deleted with the ServiceBus; the streams (the events) stay.
    p.remove_consumers(&url, &bus).await.unwrap();
    assert!(consumers(&js, &bus).await.is_empty());

    js.delete_stream(stream_name(&bus)).await.unwrap();
    js.delete_stream(dead_letter_stream_name(&bus)).await.unwrap();
}

#[tokio::test]
async fn an_unreachable_nats_is_reported_not_hung() {
    let url = format!("nats://127.0.0.1:{}", testkit::free_port());
    let spec = on_jetstream(blog_spec(), &url);
    let started = std::time::Instant::now();
    let (state, stats) = Provisioner::default().provision(&url, "blog", &spec).await;
    let TransportState::JetStream { result: Err(e), .. } = state else { panic!("expected a failure, got {state:?}") };
    assert!(e.starts_with(&format!("NATS at {url}: ")), "{e}");
    assert!(stats.is_empty());
    assert!(started.elapsed() < std::time::Duration::from_secs(15), "bounded by the provisioning timeout");
}
