//! A ServiceBus on JetStream, end to end: the operator against the fake API server and a
//! real nats-server. The stream and one durable consumer per subscriber are created,
//! updated and deleted as the spec changes, their figures reach status, and deleting the
//! ServiceBus removes the consumers and keeps the streams.

mod support;

use std::time::Duration;

use async_nats::jetstream::{self, consumer::DeliverPolicy};
use busbar_client::jetstream::JetStream;
use busbar_domain::{
    names::{dead_letter_stream_name, dead_letter_subject, parked_bucket, stream_name},
    spec::StartFrom,
};
use busbar_operator::crd::ServiceBus;
use busbar_protocol::bus_api::Parked;
use futures::TryStreamExt;
use kube::{Api, api::DeleteParams};
use serde_json::Value;
use support::{
    BLOG, blog_spec,
    cluster::{Cluster, NS, eventually},
    on_jetstream, service_bus,
};

/// A bus name no other test run uses, so streams never collide.
fn unique_bus() -> String {
    format!("op{}", uuid::Uuid::now_v7().simple()).chars().take(24).collect()
}

async fn consumers(js: &jetstream::Context, bus: &str) -> Vec<String> {
    let Ok(stream) = js.get_stream(stream_name(bus)).await else { return vec![] };
    let mut names: Vec<String> = stream.consumer_names().try_collect().await.unwrap();
    names.sort();
    names
}

fn service<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["services"].as_array()?.iter().find(|s| s["name"] == name)
}

#[tokio::test]
async fn streams_and_consumers_follow_the_spec_and_go_with_the_servicebus() {
    let url = testkit::nats_url();
    let nats = async_nats::connect(&url).await.expect("NATS is reachable (cargo xtask test starts one)");
    let js = jetstream::new(nats);
    let bus = unique_bus();
    let c = Cluster::new().await;
    for d in BLOG {
        c.add_deployment(d);
    }
    let op = c.start_operator("op-a", false);

    // Created, wired and reported.
    let spec = on_jetstream(blog_spec(), &url);
    c.apply_bus(&service_bus(NS, &bus, spec.clone())).await;
    eventually("the bus is Ready", || async { c.condition(&bus, "Ready") == Some(("True".into(), "Ready".into())) })
        .await;
    assert_eq!(consumers(&js, &bus).await, ["comments", "moderation", "query"]);
    assert!(js.get_stream(dead_letter_stream_name(&bus)).await.is_ok(), "the dead-letter stream exists");
    let stream = js.get_stream(stream_name(&bus)).await.unwrap();
    let moderation = stream.consumer_info("moderation").await.unwrap();
    assert_eq!(moderation.config.filter_subject, format!("busbar.{bus}.CommentCreated"));
    assert_eq!(c.env_var("query", "BUSBAR_TRANSPORT").as_deref(), Some("jetstream"));
    assert_eq!(c.env_var("query", "BUSBAR_URL"), Some(url.clone()));
    assert!(c.api.get("secrets", NS, &format!("{bus}-nats-auth")).is_some(), "the NATS users Secret");
    eventually("query's figures are in status", || async {
        c.bus(&bus).is_some_and(|b| {
            service(&b["status"], "query").is_some_and(|q| q["pending"] == 0 && q["deadLettered"] == 0)
                && b["status"]["totalPending"] == 0
        })
    })
    .await;
    assert!(
        service(&c.bus(&bus).unwrap()["status"], "query").unwrap().get("parked").is_none(),
        "not reported: unknown"
    );

    // What query holds parked, as its SDK reports it to the bus's parked bucket.
    let sdk = JetStream::connect_now(&url, &bus).await.unwrap();
    sdk.report_parked("query", Parked { count: 2, oldest_age_ms: 3_500 }).await.unwrap();
    op.reconcile_after(c.touch(&bus)).await;
    eventually("query's parked events are in status", || async {
        c.bus(&bus).and_then(|b| service(&b["status"], "query").cloned()).is_some_and(|q| {
            q["parked"] == 2 && q["oldestParkedSeconds"].as_u64().is_some_and(|s| (3..60).contains(&s))
        })
    })
    .await;

    // Updated: moderation leaves, ackWait changes for everyone.
    let mut next = spec.clone();
    next.services.retain(|s| s.name != "moderation");
    next.delivery.ack_wait = "45s".into();
    c.apply_bus(&service_bus(NS, &bus, next.clone())).await;
    eventually("moderation's consumer is deleted and the others updated", || async {
        consumers(&js, &bus).await == ["comments", "query"]
            && stream.consumer_info("query").await.is_ok_and(|q| q.config.ack_wait == Duration::from_secs(45))
    })
    .await;

    // A change JetStream cannot make: the consumer keeps its position, and status says so.
    let mut now = next.clone();
    now.services.iter_mut().find(|s| s.name == "query").unwrap().start_from = Some(StartFrom::Now);
    c.apply_bus(&service_bus(NS, &bus, now)).await;
    eventually("the warning is in status", || async {
        c.bus(&bus).is_some_and(|b| {
            b["status"]["warnings"].as_array().is_some_and(|w| {
                w.iter().any(|w| w.as_str().unwrap().contains("consumer query keeps its start position"))
            })
        })
    })
    .await;
    assert_eq!(stream.consumer_info("query").await.unwrap().config.deliver_policy, DeliverPolicy::All);

    // A dead letter appears: status counts it and an Event says so, once.
    js.publish(dead_letter_subject(&bus, "query"), "poison".into()).await.unwrap().await.unwrap();
    op.reconcile_after(c.touch(&bus)).await;
    eventually("the dead letter is in status", || async {
        c.bus(&bus).is_some_and(|b| b["status"]["totalDeadLettered"] == 1)
    })
    .await;
    op.reconcile_after(c.touch(&bus)).await;
    let dead = c.events_about("ServiceBus", &bus).into_iter().filter(|r| r == "DeadLettered").count();
    assert_eq!(dead, 1, "announced once");

    // Deleted with the ServiceBus; the streams (the events) stay.
    Api::<ServiceBus>::namespaced(c.user(), NS).delete(&bus, &DeleteParams::default()).await.unwrap();
    eventually("the ServiceBus is gone", || async { c.bus(&bus).is_none() }).await;
    assert!(consumers(&js, &bus).await.is_empty());
    assert!(js.get_stream(stream_name(&bus)).await.is_ok(), "the stream stays");
    op.stop().await;

    js.delete_stream(stream_name(&bus)).await.unwrap();
    js.delete_stream(dead_letter_stream_name(&bus)).await.unwrap();
    js.delete_key_value(parked_bucket(&bus)).await.unwrap();
}

#[tokio::test]
async fn an_unreachable_nats_is_reported_not_hung_and_the_services_are_still_wired() {
    let url = format!("nats://127.0.0.1:{}", testkit::free_port());
    let c = Cluster::new().await;
    for d in BLOG {
        c.add_deployment(d);
    }
    let op = c.start_operator("op-a", false);
    c.apply_bus(&service_bus(NS, "blog", on_jetstream(blog_spec(), &url))).await;
    testkit::wait_until(Duration::from_secs(20), "TransportReady says NATS failed", || async {
        let b = c.bus("blog")?;
        let t = b["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == "TransportReady")?.clone();
        (t["reason"] == "ProvisioningFailed").then_some(t["message"].as_str()?.to_owned())
    })
    .await
    .starts_with(&format!("NATS at {url}: "))
    .then_some(())
    .expect("the message names the server");
    eventually("every Deployment is wired anyway", || async {
        BLOG.iter().all(|d| c.env_var(d, "BUSBAR_URL").as_deref() == Some(url.as_str()))
    })
    .await;
    op.stop().await;
}
