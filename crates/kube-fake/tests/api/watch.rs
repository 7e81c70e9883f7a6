//! Lists and watches, the way `kube::runtime::watcher` and controllers use them.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, WatchEvent, WatchParams};
use kube::runtime::watcher;
use kube_fake::FakeApiServer;
use serde_json::json;

use crate::support::*;

fn seed_config_maps(api: &FakeApiServer, ns: &str, n: usize) {
    for i in 0..n {
        api.create(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": format!("cm-{i:04}"), "namespace": ns},
            "data": {"i": i.to_string()}
        }))
        .unwrap();
    }
}

#[tokio::test]
async fn the_watcher_pages_through_more_than_500_objects_then_sees_new_ones() {
    let api = FakeApiServer::start().await;
    seed_config_maps(&api, "a", 700);
    seed_config_maps(&api, "b", 503);
    let cms: Api<ConfigMap> = Api::all(api.client());

    let mut stream = watcher(cms.clone(), watcher::Config::default()).boxed();
    let mut seen = BTreeSet::new();
    within(30, "the initial list", async {
        loop {
            match stream.try_next().await.unwrap().unwrap() {
                watcher::Event::InitApply(cm) => {
                    assert!(seen.insert((cm.metadata.namespace.unwrap(), cm.metadata.name.unwrap())), "no duplicates");
                }
                watcher::Event::InitDone => break,
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(seen.len(), 1203);
    let lists: Vec<_> = api.requests().into_iter().filter(|r| r.verb == "list").collect();
    assert_eq!(lists.len(), 3, "1203 objects in pages of 500");

    // Changes after the list arrive through the watch.
    let ns_c: Api<ConfigMap> = Api::namespaced(api.client(), "c");
    ns_c.create(&PostParams::default(), &config_map("late", &[])).await.unwrap();
    let name = within(10, "the new object", async {
        loop {
            if let watcher::Event::Apply(cm) = stream.try_next().await.unwrap().unwrap() {
                break cm.metadata.name.unwrap();
            }
        }
    })
    .await;
    assert_eq!(name, "late");
}

#[tokio::test]
async fn a_watch_streams_every_change_in_order_with_bookmarks_and_ends_on_timeout() {
    let api = FakeApiServer::builder().bookmark_interval(Duration::from_millis(200)).start().await;
    let cms: Api<ConfigMap> = Api::namespaced(api.client(), "default");
    cms.create(&PostParams::default(), &config_map("before", &[])).await.unwrap();
    let from = api.resource_version().to_string();

    let params = WatchParams::default().timeout(2);
    let stream = cms.watch(&params, &from).await.unwrap();
    cms.create(&PostParams::default(), &config_map("x", &[("v", "1")])).await.unwrap();
    cms.patch("x", &PatchParams::default(), &Patch::Merge(json!({"data": {"v": "2"}}))).await.unwrap();
    cms.delete("x", &DeleteParams::default()).await.unwrap();

    let events: Vec<WatchEvent<ConfigMap>> =
        within(10, "the watch ends after its timeout", stream.try_collect()).await.unwrap();
    let changes: Vec<(String, String)> = events
        .iter()
        .filter_map(|e| match e {
            WatchEvent::Added(c) => Some(("ADDED", c)),
            WatchEvent::Modified(c) => Some(("MODIFIED", c)),
            WatchEvent::Deleted(c) => Some(("DELETED", c)),
            _ => None,
        })
        .map(|(t, c)| (t.to_string(), c.data.as_ref().map(|d| d["v"].clone()).unwrap_or_default()))
        .collect();
    assert_eq!(
        changes,
        [("ADDED".into(), "1".into()), ("MODIFIED".into(), "2".into()), ("DELETED".into(), "2".into())],
        "the object 'before' was created before the watch's version and is not replayed"
    );
    let bookmarks: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            WatchEvent::Bookmark(b) => Some(b.metadata.resource_version.parse().unwrap()),
            _ => None,
        })
        .collect();
    assert!(bookmarks.len() >= 2, "a bookmark once caught up, then periodically: {bookmarks:?}");
    assert_eq!(*bookmarks.last().unwrap(), api.resource_version());
}

#[tokio::test]
async fn a_watch_from_an_expired_version_gets_410() {
    let api = FakeApiServer::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(api.client(), "default");
    cms.create(&PostParams::default(), &config_map("a", &[])).await.unwrap();
    let old = api.resource_version().to_string();
    cms.create(&PostParams::default(), &config_map("b", &[])).await.unwrap();
    api.expire_history();

    let mut stream = cms.watch(&WatchParams::default(), &old).await.unwrap().boxed();
    match within(5, "the error event", stream.try_next()).await.unwrap() {
        Some(WatchEvent::Error(status)) => assert_eq!((status.code, status.reason.as_str()), (410, "Expired")),
        other => panic!("expected a 410 ERROR event, got {other:?}"),
    }

    // Watching from "now" works.
    let now = api.resource_version().to_string();
    let mut stream = cms.watch(&WatchParams::default().disable_bookmarks(), &now).await.unwrap().boxed();
    cms.create(&PostParams::default(), &config_map("c", &[])).await.unwrap();
    assert!(matches!(within(5, "the ADDED event", stream.try_next()).await.unwrap(), Some(WatchEvent::Added(_))));
}

#[tokio::test]
async fn the_watcher_recovers_from_a_410_by_listing_again() {
    let api = FakeApiServer::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(api.client(), "default");
    cms.create(&PostParams::default(), &config_map("first", &[])).await.unwrap();
    let mut stream = watcher(cms.clone(), watcher::Config::default()).boxed();
    let mut next = async || within(10, "the next watcher event", stream.next()).await.expect("the watcher never ends");
    assert!(matches!(next().await, Ok(watcher::Event::Init)));
    assert!(matches!(next().await, Ok(watcher::Event::InitApply(_))));
    assert!(matches!(next().await, Ok(watcher::Event::InitDone)));

    // The server forgets its history while the watch is open.
    api.expire_history();
    match next().await {
        Err(watcher::Error::WatchError(status)) => assert_eq!(status.code, 410),
        other => panic!("expected the 410 to surface, got {other:?}"),
    }
    // The watcher lists again...
    assert!(matches!(next().await, Ok(watcher::Event::Init)));
    assert!(matches!(next().await, Ok(watcher::Event::InitApply(cm)) if cm.metadata.name.as_deref() == Some("first")));
    assert!(matches!(next().await, Ok(watcher::Event::InitDone)));
    // ...and keeps following changes.
    cms.create(&PostParams::default(), &config_map("second", &[])).await.unwrap();
    assert!(matches!(next().await, Ok(watcher::Event::Apply(cm)) if cm.metadata.name.as_deref() == Some("second")));
    let lists = api.count_requests(|r| r.verb == "list");
    assert_eq!(lists, 2);
}

#[tokio::test]
async fn a_label_selected_watch_sees_objects_enter_and_leave_the_selection() {
    let api = FakeApiServer::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(api.client(), "default");
    cms.create(&PostParams::default(), &config_map("c", &[])).await.unwrap();
    let from = api.resource_version().to_string();
    let stream =
        cms.watch(&WatchParams::default().labels("wired=yes").timeout(1).disable_bookmarks(), &from).await.unwrap();
    let label = |v: Option<&str>| Patch::Merge(json!({"metadata": {"labels": {"wired": v}}}));
    cms.patch("c", &PatchParams::default(), &label(Some("yes"))).await.unwrap();
    cms.patch("c", &PatchParams::default(), &label(Some("no"))).await.unwrap();
    let kinds: Vec<String> = within(5, "the watch", stream.try_collect::<Vec<_>>())
        .await
        .unwrap()
        .iter()
        .map(|e| format!("{e:?}"))
        .collect();
    assert_eq!(kinds, ["Added event", "Deleted event"]);
}

#[tokio::test]
async fn a_streaming_list_watcher_gets_the_initial_state_then_changes() {
    let api = FakeApiServer::start().await;
    seed_config_maps(&api, "default", 3);
    let cms: Api<ConfigMap> = Api::namespaced(api.client(), "default");
    let mut stream = watcher(cms.clone(), watcher::Config::default().streaming_lists()).boxed();
    let mut initial = 0;
    within(10, "the initial events", async {
        loop {
            match stream.try_next().await.unwrap().unwrap() {
                watcher::Event::InitApply(_) => initial += 1,
                watcher::Event::InitDone => break,
                _ => {}
            }
        }
    })
    .await;
    assert_eq!(initial, 3);
    cms.create(&PostParams::default(), &config_map("new", &[])).await.unwrap();
    let ev = within(5, "the new object", stream.try_next()).await.unwrap().unwrap();
    assert!(matches!(ev, watcher::Event::Apply(cm) if cm.metadata.name.as_deref() == Some("new")));
}

#[tokio::test]
async fn a_metadata_watcher_follows_changes() {
    let api = FakeApiServer::start().await;
    let cms: Api<kube::core::PartialObjectMeta<ConfigMap>> = Api::all(api.client());
    let mut stream = watcher(cms, watcher::Config::default()).boxed();
    assert!(matches!(within(5, "init", stream.try_next()).await.unwrap(), Some(watcher::Event::Init)));
    assert!(matches!(within(5, "init done", stream.try_next()).await.unwrap(), Some(watcher::Event::InitDone)));
    let ns: Api<ConfigMap> = Api::namespaced(api.client(), "x");
    ns.create(&PostParams::default(), &config_map("m", &[("big", "payload")])).await.unwrap();
    match within(5, "the change", stream.try_next()).await.unwrap() {
        Some(watcher::Event::Apply(meta)) => assert_eq!(meta.metadata.name.as_deref(), Some("m")),
        other => panic!("expected the new object's metadata, got {other:?}"),
    }
}

#[tokio::test]
async fn expiring_one_resource_makes_only_its_watchers_list_again() {
    let api = FakeApiServer::start().await;
    let cms: Api<ConfigMap> = Api::all(api.client());
    let deployments: Api<k8s_openapi::api::apps::v1::Deployment> = Api::all(api.client());
    let mut cm_events = watcher(cms, watcher::Config::default()).boxed();
    let mut d_events = watcher(deployments, watcher::Config::default()).boxed();
    assert!(matches!(within(5, "init", cm_events.next()).await, Some(Ok(watcher::Event::Init))));
    assert!(matches!(within(5, "init done", cm_events.next()).await, Some(Ok(watcher::Event::InitDone))));
    assert!(matches!(within(5, "init", d_events.next()).await, Some(Ok(watcher::Event::Init))));
    assert!(matches!(within(5, "init done", d_events.next()).await, Some(Ok(watcher::Event::InitDone))));
    // Let both watchers open their watch.
    assert!(tokio::time::timeout(Duration::from_millis(200), cm_events.next()).await.is_err());
    assert!(tokio::time::timeout(Duration::from_millis(200), d_events.next()).await.is_err());

    api.expire_history_of("configmaps").unwrap();
    let err = within(5, "the configmap watcher's 410", cm_events.next()).await;
    assert!(matches!(err, Some(Err(watcher::Error::WatchError(s))) if s.code == 410));
    assert!(matches!(within(5, "re-list", cm_events.next()).await, Some(Ok(watcher::Event::Init))));
    let d_next = tokio::time::timeout(Duration::from_millis(200), d_events.next()).await;
    assert!(d_next.is_err(), "deployments are unaffected");
    assert_eq!(api.count_requests(|r| r.verb == "list" && r.resource == "deployments"), 1);
}
