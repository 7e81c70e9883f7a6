//! The bus against real subscriber servers on loopback: delivery, order, retries,
//! dead letters, redrive, replay and route reloads.

mod common;

use std::time::Duration;

use common::{Bus, FAST, event, ns, routes_yaml};
use serde_json::{Value, json};
use testkit::subscriber::Subscriber;

const T: Duration = Duration::from_secs(20);

async fn delivers_each_subscriber_its_types_in_order(db_url: Option<&str>) {
    let dir = testkit::temp_dir();
    let all = Subscriber::start().await;
    let only_b = Subscriber::start().await;
    let bus = Bus::start(
        dir.path(),
        &routes_yaml(&[("all", all.port(), &["A", "B"]), ("bonly", only_b.port(), &["B"])], FAST),
        db_url,
        &[],
    )
    .await;

    let mut sent = vec![];
    for chunk in 0..10u64 {
        let batch: Vec<Value> = (0..30).map(|i| event(if i % 3 == 0 { "B" } else { "A" }, chunk * 30 + i)).collect();
        sent.extend(batch.clone());
        let (status, body) = bus.publish(&Value::Array(batch)).await;
        assert_eq!((status, body["accepted"].as_u64()), (200, Some(30)), "{body}");
    }
    // A single, un-batched event works too.
    let single = event("B", 300);
    sent.push(single.clone());
    assert_eq!(bus.publish(&single).await.0, 200);

    let got_all = all.wait_for(301, T).await;
    assert_eq!(ns(&got_all), (0..=300).collect::<Vec<_>>(), "all types, in publish order");
    let want_b: Vec<u64> = sent.iter().filter(|e| e["type"] == "B").map(|e| e["data"]["n"].as_u64().unwrap()).collect();
    let got_b = only_b.wait_for(want_b.len(), T).await;
    assert_eq!(ns(&got_b), want_b, "only B, in publish order");
    assert!(got_b.iter().all(|e| e["type"] == "B"));

    // Delivered events are the CloudEvents as published.
    assert_eq!(got_all.last().unwrap(), &single);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(all.events().len(), 301, "nothing delivered twice without a failure");
}

#[tokio::test]
async fn delivers_in_order_on_sqlite() {
    delivers_each_subscriber_its_types_in_order(None).await;
}

#[tokio::test]
async fn delivers_in_order_on_postgres() {
    let db = testkit::pg::TempDb::create().await;
    delivers_each_subscriber_its_types_in_order(Some(&db.url)).await;
}

#[tokio::test]
async fn retries_after_500_and_after_a_timeout_without_losing_order() {
    let dir = testkit::temp_dir();
    let sub = Subscriber::start().await;
    sub.set(|b| b.fail_next = 2);
    let bus = Bus::start(
        dir.path(),
        &routes_yaml(&[("s", sub.port(), &["A"])], "{maxDeliver: 5, backoff: [20ms], ackWait: 300ms}"),
        None,
        &[],
    )
    .await;
    for n in 0..5 {
        assert_eq!(bus.publish(&event("A", n)).await.0, 200);
    }
    let got = sub.wait_for(5, T).await;
    assert_eq!(ns(&got)[..5], [0, 1, 2, 3, 4]);
    assert!(sub.requests() >= 3, "two failures then success");

    // Now stall longer than ackWait once: the bus gives up waiting and redelivers.
    sub.set(|b| b.stall_next = Some((1, Duration::from_secs(2))));
    assert_eq!(bus.publish(&event("A", 5)).await.0, 200);
    let got = sub.wait_for(6, T).await;
    assert_eq!(ns(&got).last(), Some(&5));
    let (_, _, subs) = bus.get("/subscribers").await;
    assert_eq!(subs[0]["name"], "s");
    assert_eq!(subs[0]["deadLetters"], 0);
}

#[tokio::test]
async fn dead_letters_and_redrive_on_sqlite() {
    dead_letters_after_max_deliver_with_the_reason_then_redrives(None).await;
}

#[tokio::test]
async fn dead_letters_and_redrive_on_postgres() {
    let db = testkit::pg::TempDb::create().await;
    dead_letters_after_max_deliver_with_the_reason_then_redrives(Some(&db.url)).await;
}

async fn dead_letters_after_max_deliver_with_the_reason_then_redrives(db_url: Option<&str>) {
    let dir = testkit::temp_dir();
    let sub = Subscriber::start().await;
    let bus = Bus::start(dir.path(), &routes_yaml(&[("s", sub.port(), &["A"])], FAST), db_url, &[]).await;
    let poison = event("A", 1);
    let poison_id = poison["id"].as_str().unwrap().to_owned();
    sub.set(|b| b.poison_ids = vec![poison_id.clone()]);
    let batch = json!([event("A", 0), poison, event("A", 2), event("A", 3)]);
    assert_eq!(bus.publish(&batch).await.0, 200);

    // The events around the poison one still arrive, in order.
    let got = sub.wait_for(3, T).await;
    assert_eq!(ns(&got), vec![0, 2, 3]);
    let (status, _, dls) = bus.get("/deadletters?subscriber=s").await;
    assert_eq!(status, 200);
    let dls = dls.as_array().unwrap();
    assert_eq!(dls.len(), 1, "{dls:?}");
    assert_eq!(dls[0]["event_id"], poison_id.as_str());
    assert_eq!(dls[0]["attempts"], 3, "maxDeliver attempts");
    assert!(dls[0]["last_error"].as_str().unwrap().contains("poison event"), "{}", dls[0]);
    assert_eq!(dls[0]["event"]["data"]["n"], 1);

    // The subscriber's backfill may give up on the same event too and report it: that is
    // the same dead letter, not a second one to redrive.
    let report = json!({"subscriber": "s", "event": dls[0]["event"], "attempts": 3, "error": "backfill: poison event"});
    let (status, recorded) = bus.post_json("/deadletters", &report).await;
    assert_eq!((status, &recorded["id"]), (200, &dls[0]["id"]), "{recorded}");
    let (_, _, again) = bus.get("/deadletters?subscriber=s").await;
    assert_eq!(again.as_array().unwrap().len(), 1, "one dead letter per event and subscriber: {again}");
    assert_eq!(again[0]["last_error"], "backfill: poison event", "the latest error is kept: {again}");

    // Fix the subscriber, redrive, and the event arrives; the store empties.
    sub.set(|b| b.poison_ids.clear());
    let (status, body) = bus.post(&format!("/deadletters/{}/redrive", dls[0]["id"])).await;
    assert_eq!((status, body["redriving"].as_u64()), (200, Some(1)));
    let got = sub.wait_for(4, T).await;
    assert_eq!(got[3]["id"], poison_id.as_str());
    testkit::wait_until(T, "dead-letter store to empty", || async {
        (bus.get("/deadletters").await.2 == json!([])).then_some(())
    })
    .await;

    // Redriving what is not there is a clear 404.
    let (status, body) = bus.post("/deadletters/999/redrive").await;
    assert_eq!(status, 404);
    assert!(body["error"].as_str().unwrap().contains("999"));
}

#[tokio::test]
async fn replays_from_any_sequence_with_paging() {
    let dir = testkit::temp_dir();
    let bus = Bus::start(dir.path(), &routes_yaml(&[], FAST), None, &[]).await;
    let batch: Vec<Value> = (0..25).map(|n| event(if n % 5 == 0 { "B" } else { "A" }, n)).collect();
    assert_eq!(bus.publish(&Value::Array(batch)).await.0, 200);

    let (status, headers, all) = bus.get("/events").await;
    assert_eq!(status, 200);
    assert_eq!(ns(all.as_array().unwrap()), (0..25).collect::<Vec<_>>());
    assert_eq!(headers["x-busbar-next-after"], "25");
    assert!(headers.get("link").is_none(), "no next page");

    for after in [0u64, 1, 7, 24, 25] {
        let (_, _, page) = bus.get(&format!("/events?after={after}&limit=5")).await;
        let want: Vec<u64> = (after..25).take(5).collect();
        assert_eq!(ns(page.as_array().unwrap()), want, "after={after}");
    }
    let (_, headers, _) = bus.get("/events?after=3&limit=5").await;
    assert_eq!(headers["x-busbar-next-after"], "8");
    assert_eq!(headers["link"], "</events?after=8&limit=5>; rel=\"next\"");

    let (_, _, only_b) = bus.get("/events?type=B").await;
    assert_eq!(ns(only_b.as_array().unwrap()), vec![0, 5, 10, 15, 20]);
    let (_, _, both) = bus.get("/events?type=B,A&limit=3").await;
    assert_eq!(ns(both.as_array().unwrap()), vec![0, 1, 2]);

    for bad in ["/events?after=-1", "/events?limit=0", "/events?limit=x", "/events?bogus=1"] {
        let (status, _, body) = bus.get(bad).await;
        assert_eq!(status, 400, "{bad}");
        assert!(body["error"].is_string(), "{bad}: {body}");
    }
}

#[tokio::test]
async fn duplicate_publishes_are_stored_once() {
    let dir = testkit::temp_dir();
    let sub = Subscriber::start().await;
    let bus = Bus::start(dir.path(), &routes_yaml(&[("s", sub.port(), &["A"])], FAST), None, &[]).await;
    let e = event("A", 1);
    for _ in 0..3 {
        assert_eq!(bus.publish(&e).await.0, 200);
    }
    assert_eq!(bus.publish(&json!([e.clone(), event("A", 2)])).await.0, 200);
    sub.wait_for(2, T).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(ns(&sub.events()), vec![1, 2]);
    let (_, _, log) = bus.get("/events").await;
    assert_eq!(log.as_array().unwrap().len(), 2);
}

#[tokio::test]
async fn route_changes_apply_without_a_restart() {
    let dir = testkit::temp_dir();
    let first = Subscriber::start().await;
    let bus = Bus::start(dir.path(), &routes_yaml(&[("first", first.port(), &["A"])], FAST), None, &[]).await;
    let pid = bus.proc.pid();
    assert_eq!(bus.publish(&json!([event("A", 0), event("B", 1)])).await.0, 200);
    first.wait_for(1, T).await;

    // Add a subscriber for B: it backfills from the beginning. Widen `first` to B too.
    let late = Subscriber::start().await;
    std::fs::write(
        &bus.routes,
        routes_yaml(&[("first", first.port(), &["A", "B"]), ("late", late.port(), &["B"])], FAST),
    )
    .unwrap();
    assert_eq!(ns(&late.wait_for(1, T).await), vec![1]);
    assert_eq!(bus.publish(&event("B", 2)).await.0, 200);
    assert_eq!(ns(&late.wait_for(2, T).await), vec![1, 2]);
    assert_eq!(
        ns(&first.wait_for(2, T).await),
        vec![0, 2],
        "the cursor is kept: B from before the change is not resent"
    );

    // A broken file is refused; the current routes keep working.
    std::fs::write(&bus.routes, "spec: [nonsense").unwrap();
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(bus.publish(&event("B", 3)).await.0, 200);
    assert_eq!(ns(&late.wait_for(3, T).await), vec![1, 2, 3]);
    assert!(bus.proc.log().contains("routes file is invalid"), "the bad file is reported");
    assert_eq!(bus.proc.pid(), pid, "same process throughout");
}

/// A subscriber that has caught up has its position stored within moments, without waiting
/// for the next event: a bus killed after that sends it nothing twice. (Saves are
/// throttled while events stream, so catching up alone must not leave the position
/// unsaved until the next event or a clean shutdown.)
#[tokio::test]
async fn a_caught_up_position_is_stored_without_the_next_event() {
    let dir = testkit::temp_dir();
    let sub = Subscriber::start().await;
    let mut bus = Bus::start(dir.path(), &routes_yaml(&[("s", sub.port(), &["A"])], FAST), None, &[]).await;
    for n in 0..3 {
        assert_eq!(bus.publish(&event("A", n)).await.0, 200);
    }
    assert_eq!(ns(&sub.wait_for(3, T).await), vec![0, 1, 2]);
    testkit::wait_until(T, "the caught-up position to be stored", || async {
        let (_, _, subs) = bus.get("/subscribers").await;
        (subs[0]["lag"] == 0).then_some(())
    })
    .await;

    bus.kill9_and_restart().await;
    assert_eq!(bus.publish(&event("A", 3)).await.0, 200);
    assert_eq!(ns(&sub.wait_for(4, T).await), vec![0, 1, 2, 3], "nothing before the kill is sent again");
}
