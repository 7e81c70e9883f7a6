//! The unmodified kube-runtime Controller, end to end, against the in-process fake API
//! server: given a ServiceBus like this, when that happens, the cluster ends up like so.

mod support;

use std::time::Duration;

use busbar_domain::{credentials::BusKey, spec::SubscriptionSpec};
use busbar_operator::{
    controller,
    crd::ServiceBus,
    leader::LeaseConfig,
    names::{BUS_LABEL, FIELD_MANAGER, FINALIZER},
    settings::Settings,
};
use busbar_protocol::bus_api::Parked;
use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Api,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use kube_fake::FakeApiServer;
use serde_json::json;
use support::{
    BLOG, BLOG_CONTRACTS, blog_contracts_with_title_renamed, blog_spec,
    cluster::{Cluster, NS, Replica, assert_rbac_covers_what_the_operator_did, eventually},
    contracts_config_map,
    fake_bus::FakeBus,
    service_bus,
};

fn blog() -> ServiceBus {
    service_bus(NS, "blog", blog_spec())
}

async fn wired_blog(c: &Cluster) -> Replica {
    for d in BLOG {
        c.add_deployment(d);
    }
    let op = c.start_operator("op-a", false);
    c.apply_bus(&blog()).await;
    eventually("every blog Deployment is wired", || async {
        BLOG.iter().all(|d| c.env_var(d, "BUSBAR_URL").is_some() && c.wiring_hash(d).is_some())
    })
    .await;
    op
}

#[tokio::test]
async fn a_new_servicebus_wires_its_deployments_and_becomes_ready() {
    let c = Cluster::new().await;
    let op = wired_blog(&c).await;

    assert_eq!(c.env_var("query", "BUSBAR_URL").unwrap(), "http://blog-event-bus.shop.svc:4005");
    assert_eq!(c.env_var("query", "BUSBAR_SUBSCRIBES").unwrap(), "CommentCreated,CommentUpdated,PostCreated");
    assert_eq!(c.env_var("comments", "BUSBAR_SERVICE").unwrap(), "comments");
    assert_eq!(c.env_var("posts", "DATABASE_URL").unwrap(), "postgres://posts-db/posts", "the user's env stays");
    assert_eq!(c.deployment("posts").metadata.labels.unwrap()[BUS_LABEL], "blog");
    // The built-in bus, owned by the ServiceBus.
    for (kind, name) in
        [("statefulsets", "blog-event-bus"), ("services", "blog-event-bus"), ("configmaps", "blog-event-bus-routes")]
    {
        let o = c.api.get(kind, NS, name).unwrap_or_else(|| panic!("{kind}/{name} exists"));
        assert_eq!(o["metadata"]["ownerReferences"][0]["kind"], "ServiceBus");
    }
    eventually("the bus is reported starting", || async {
        c.condition("blog", "Ready") == Some(("False".into(), "BusStarting".into()))
    })
    .await;
    c.bus_pod_ready("blog");
    eventually("the bus is Ready", || async { c.condition("blog", "Ready") == Some(("True".into(), "Ready".into())) })
        .await;
    let b = c.bus("blog").unwrap();
    assert_eq!(b["status"]["observedGeneration"], 1);
    assert_eq!(b["status"]["wiredServices"], "4/4");
    assert_eq!(b["status"]["transport"], "builtin");
    assert_eq!(b["metadata"]["finalizers"], json!([FINALIZER]));
    assert!(
        b["status"]["services"].as_array().unwrap().iter().all(|s| s["wired"] == true && s["deploymentFound"] == true)
    );
    // `kubectl describe` tells the story: each Deployment was wired (on the Deployment and
    // on the ServiceBus), and the bus became Ready, once.
    for d in BLOG {
        assert_eq!(c.events_about("Deployment", d), ["Wired"], "{d}");
    }
    let on_bus = c.events_about("ServiceBus", "blog");
    assert_eq!(on_bus.iter().filter(|r| *r == "Wired").count(), 4, "{on_bus:?}");
    assert_eq!(on_bus.iter().filter(|r| *r == "Ready").count(), 1, "{on_bus:?}");
    let related: Vec<String> = c
        .api
        .events(NS)
        .iter()
        .filter(|e| e["regarding"]["kind"] == "ServiceBus" && e["reason"] == "Wired")
        .map(|e| e["related"]["name"].as_str().unwrap_or_default().to_owned())
        .collect();
    assert_eq!(related.len(), 4, "each names its Deployment: {related:?}");
    op.stop().await;
}

/// Status says what is true now: a warning that no longer applies is removed, not left behind.
#[tokio::test]
async fn a_warning_that_goes_away_leaves_the_status() {
    let c = Cluster::new().await;
    let op = wired_blog(&c).await;
    let mut spec = blog_spec();
    spec.services[3].subscribes.push(SubscriptionSpec { ty: "CommentDeleted".into() });
    c.apply_bus(&service_bus(NS, "blog", spec)).await;
    eventually("the warning is reported", || async {
        c.bus("blog").is_some_and(|b| {
            b["status"]["warnings"] == json!(["query subscribes to CommentDeleted but no service publishes it"])
        })
    })
    .await;

    // The spec is fixed: nobody subscribes to CommentDeleted any more.
    c.apply_bus(&blog()).await;
    eventually("the warning is gone from status", || async {
        c.bus("blog").is_some_and(|b| {
            b["status"]["observedGeneration"] == 3
                && b["status"]["warnings"].as_array().is_none_or(|w| w.is_empty())
                && c.condition("blog", "GraphValid") == Some(("True".into(), "Valid".into()))
        })
    })
    .await;
    op.stop().await;
}

/// A reconcile that finds the cluster as it should be writes nothing: no status patch, no
/// re-apply of the bus's objects, no Event.
#[tokio::test]
async fn a_reconcile_with_nothing_to_change_writes_nothing() {
    let c = Cluster::new().await;
    let op = wired_blog(&c).await;
    c.bus_pod_ready("blog");
    eventually("the bus is Ready", || async { c.condition("blog", "Ready") == Some(("True".into(), "Ready".into())) })
        .await;

    c.api.clear_requests();
    // A change to the ServiceBus's metadata only: it triggers a reconcile with nothing to do.
    op.reconcile_after(c.touch("blog")).await;
    let writes: Vec<String> = c
        .api
        .requests()
        .into_iter()
        .filter(|r| r.is_write() && r.user_agent.as_deref() == Some("op-a"))
        .map(|r| format!("{} {} {:?} (manager {})", r.verb, r.path, r.subresource, r.manager()))
        .collect();
    assert!(writes.is_empty(), "a reconcile with nothing to change wrote: {writes:#?}");
    assert_eq!(c.api.writes_by_field_manager(FIELD_MANAGER), 0);
    op.stop().await;
}

/// `kubectl get sbus` and `kubectl describe sbus` tell how the subscribers are doing: the
/// bus's figures (parked events included) reach status and its totals, and dead letters
/// appearing and lag over `--lag-warning` become Events, each once per transition however
/// often the operator reconciles.
#[tokio::test]
async fn subscriber_trouble_is_in_status_and_described_once_per_transition() {
    let c = Cluster::new().await;
    for d in BLOG {
        c.add_deployment(d);
    }
    let bus = FakeBus::start().await;
    let settings = Settings { bus_stats_url: Some(bus.url()), lag_warning: 100, ..Settings::default() };
    let op = c.start_operator_with("op-a", false, settings);
    c.apply_bus(&blog()).await;
    eventually("the bus's StatefulSet exists", || async { c.api.get("statefulsets", NS, "blog-event-bus").is_some() })
        .await;
    c.bus_pod_ready("blog");
    eventually("the bus is Ready", || async { c.condition("blog", "Ready") == Some(("True".into(), "Ready".into())) })
        .await;
    let trouble = || {
        let kinds = ["LagHigh", "LagCleared", "DeadLettered"];
        c.events_about("ServiceBus", "blog").into_iter().filter(|r| kinds.contains(&r.as_str())).collect::<Vec<_>>()
    };

    bus.report("query", 5, 0, Some(Parked { count: 2, oldest_age_ms: 3_500 }));
    bus.report("comments", 1, 0, None);
    op.reconcile_after(c.touch("blog")).await;
    let status = c.bus("blog").unwrap()["status"].clone();
    let query = status["services"].as_array().unwrap().iter().find(|s| s["name"] == "query").unwrap().clone();
    assert_eq!(
        (query["pending"].clone(), query["parked"].clone(), query["oldestParkedSeconds"].clone()),
        (json!(5), json!(2), json!(3))
    );
    assert_eq!((status["totalPending"].clone(), status["totalDeadLettered"].clone()), (json!(6), json!(0)));
    assert!(trouble().is_empty(), "{:?}", trouble());

    bus.report("query", 500, 0, None);
    op.reconcile_after(c.touch("blog")).await;
    op.reconcile_after(c.touch("blog")).await;
    assert_eq!(trouble(), ["LagHigh"]);
    bus.report("query", 500, 2, None);
    op.reconcile_after(c.touch("blog")).await;
    op.reconcile_after(c.touch("blog")).await;
    assert_eq!(trouble(), ["LagHigh", "DeadLettered"]);
    bus.report("query", 0, 2, None);
    op.reconcile_after(c.touch("blog")).await;
    op.reconcile_after(c.touch("blog")).await;
    assert_eq!(trouble(), ["LagHigh", "DeadLettered", "LagCleared"]);
    let status = c.bus("blog").unwrap()["status"].clone();
    assert_eq!((status["totalPending"].clone(), status["totalDeadLettered"].clone()), (json!(1), json!(2)));

    // The operator read the figures as the bus's admin.
    let key = c.api.get_as::<k8s_openapi::api::core::v1::Secret>(NS, "blog-event-bus-key").unwrap();
    let key = BusKey::from_hex(&String::from_utf8_lossy(&key.data.unwrap()["key"].0)).unwrap();
    assert_eq!(key.verify(&bus.bearer().unwrap()).as_deref(), Some(busbar_domain::credentials::ADMIN));
    op.stop().await;
}

/// Given the blog's contracts in which posts no longer sends the `title` query reads, query's
/// subscription is held: its Deployment stays unwired and status names the edge, while
/// comments (which reads only the id) is wired. Once the contracts fit, query is wired.
#[tokio::test]
async fn an_incompatible_subscription_is_not_wired_and_is_named_in_status() {
    let c = Cluster::new().await;
    for d in BLOG {
        c.add_deployment(d);
    }
    c.apply_config_map(&contracts_config_map(NS, "blog", &blog_contracts_with_title_renamed())).await;
    let op = c.start_operator("op-a", false);
    c.apply_bus(&blog()).await;
    eventually("ContractsCompatible is False, naming the edge", || async {
        c.condition("blog", "ContractsCompatible") == Some(("False".into(), "SubscriptionHeld".into()))
    })
    .await;
    let b = c.bus("blog").unwrap();
    assert_eq!(
        b["status"]["incompatibleEdges"],
        json!([{
            "publisher": "posts", "type": "PostCreated", "subscriber": "query", "state": "Held",
            "problems": ["PostCreated.title: posts → query: query requires it; posts does not send it"]
        }])
    );
    let message = b["status"]["conditions"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["type"] == "ContractsCompatible")
        .unwrap()["message"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(message.contains("posts → query PostCreated"), "{message}");
    for d in ["posts", "comments", "moderation"] {
        assert!(c.env_var(d, "BUSBAR_URL").is_some(), "{d} is wired");
    }
    assert_eq!(c.env_var("query", "BUSBAR_URL"), None, "query is not wired");
    assert_eq!(c.wiring_hash("query"), None);
    assert_eq!(b["status"]["wiredServices"], "3/4");
    assert!(c.events_about("ServiceBus", "blog").contains(&"SubscriptionHeld".to_owned()));
    let routes = c.api.get("configmaps", NS, "blog-event-bus-routes").unwrap();
    let routed = busbar_domain::spec::parse_manifest(routes["data"]["servicebus.yaml"].as_str().unwrap()).unwrap();
    assert!(routed.spec.service("query").unwrap().subscribes.is_empty(), "the bus does not deliver to query");

    // The contracts as built: the ConfigMap's change reconciles the bus, and query is wired.
    c.apply_config_map(&contracts_config_map(NS, "blog", BLOG_CONTRACTS)).await;
    eventually("query is wired once its contract fits", || async {
        c.env_var("query", "BUSBAR_URL").is_some()
            && c.condition("blog", "ContractsCompatible") == Some(("True".into(), "Compatible".into()))
    })
    .await;
    assert_rbac_covers_what_the_operator_did(&c.api);
    op.stop().await;
}

#[tokio::test]
async fn a_spec_change_rewires_and_a_removed_service_is_unwired() {
    let c = Cluster::new().await;
    let op = wired_blog(&c).await;
    let old_hash = c.wiring_hash("query").unwrap();
    let posts_hash = c.wiring_hash("posts").unwrap();

    // query stops receiving CommentUpdated; moderation leaves the bus.
    let mut spec = blog_spec();
    spec.services.retain(|s| s.name != "moderation");
    spec.services.iter_mut().find(|s| s.name == "query").unwrap().subscribes.retain(|s| s.ty != "CommentUpdated");
    c.apply_bus(&service_bus(NS, "blog", spec)).await;

    eventually("query is rewired", || async {
        c.env_var("query", "BUSBAR_SUBSCRIBES").as_deref() == Some("CommentCreated,PostCreated")
    })
    .await;
    assert_ne!(c.wiring_hash("query").unwrap(), old_hash, "the pods roll");
    assert_eq!(c.wiring_hash("posts").unwrap(), posts_hash, "posts' wiring did not change, so it does not roll");
    eventually("moderation is unwired", || async {
        c.env_var("moderation", "BUSBAR_URL").is_none() && c.wiring_hash("moderation").is_none()
    })
    .await;
    let m = c.deployment("moderation");
    assert!(!m.metadata.labels.unwrap().contains_key(BUS_LABEL));
    assert_eq!(c.env_of("moderation"), [("DATABASE_URL".to_owned(), "postgres://moderation-db/moderation".to_owned())]);
    eventually("status follows the new generation", || async {
        c.bus("blog").is_some_and(|b| b["status"]["observedGeneration"] == 2 && b["status"]["wiredServices"] == "3/3")
    })
    .await;
    assert_rbac_covers_what_the_operator_did(&c.api);
    op.stop().await;
}

#[tokio::test]
async fn a_deployment_created_later_is_wired() {
    let c = Cluster::new().await;
    for d in ["posts", "comments", "moderation"] {
        c.add_deployment(d);
    }
    let op = c.start_operator("op-a", false);
    c.apply_bus(&blog()).await;
    eventually("the waiting is reported", || async {
        c.condition("blog", "Wired") == Some(("False".into(), "DeploymentMissing".into()))
    })
    .await;
    let missing = &c.bus("blog").unwrap()["status"]["services"].as_array().unwrap().clone()[3];
    assert_eq!((missing["name"].as_str(), missing["deploymentFound"].as_bool()), (Some("query"), Some(false)));

    c.add_deployment("query");
    eventually("query is wired", || async { c.env_var("query", "BUSBAR_URL").is_some() }).await;
    eventually("Wired turns True", || async {
        c.condition("blog", "Wired") == Some(("True".into(), "AllWired".into()))
    })
    .await;
    op.stop().await;
}

#[tokio::test]
async fn wiring_removed_by_hand_is_restored() {
    let c = Cluster::new().await;
    let op = wired_blog(&c).await;
    let hash = c.wiring_hash("comments").unwrap();

    // Someone edits the Deployment and drops every BUSBAR_* variable.
    let deployments = Api::<Deployment>::namespaced(c.user(), NS);
    let patch = json!({ "spec": { "template": { "spec": { "containers": [
        { "name": "comments", "image": "ghcr.io/busbar-dev/comments:latest",
          "env": [ { "name": "DATABASE_URL", "value": "postgres://comments-db/comments" } ] } ] } } } });
    deployments.patch("comments", &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
    assert!(c.env_var("comments", "BUSBAR_URL").is_none());

    eventually("the wiring is back", || async { c.env_var("comments", "BUSBAR_URL").is_some() }).await;
    assert_eq!(c.env_var("comments", "BUSBAR_SUBSCRIBES").unwrap(), "CommentModerated,PostCreated");
    assert_eq!(c.wiring_hash("comments").unwrap(), hash);
    assert_eq!(c.env_var("comments", "DATABASE_URL").unwrap(), "postgres://comments-db/comments");
    op.stop().await;
}

#[tokio::test]
async fn deleting_the_servicebus_removes_what_the_operator_added_and_nothing_else() {
    let c = Cluster::new().await;
    let op = wired_blog(&c).await;
    eventually("the finalizer is on", || async {
        c.bus("blog").is_some_and(|b| b["metadata"]["finalizers"] == json!([FINALIZER]))
    })
    .await;

    Api::<ServiceBus>::namespaced(c.user(), NS).delete("blog", &DeleteParams::default()).await.unwrap();
    eventually("the ServiceBus is gone", || async { c.bus("blog").is_none() }).await;
    for d in BLOG {
        assert!(c.env_var(d, "BUSBAR_URL").is_none(), "{d} is unwired");
        assert!(c.wiring_hash(d).is_none(), "{d} lost the annotation");
        assert_eq!(c.env_of(d).len(), 1, "{d} keeps its own env");
        assert!(!c.deployment(d).metadata.labels.unwrap().contains_key(BUS_LABEL));
    }
    eventually("the bus's objects are garbage-collected", || async {
        c.api.get("statefulsets", NS, "blog-event-bus").is_none()
            && c.api.get("services", NS, "blog-event-bus").is_none()
            && c.api.get("configmaps", NS, "blog-event-bus-routes").is_none()
    })
    .await;
    assert!(c.event_reasons().iter().any(|r| r == "CleanedUp"));
    assert_rbac_covers_what_the_operator_did(&c.api);
    op.stop().await;
}

/// On the built-in bus every service gets its own token: a Secret per service derived
/// from the bus's key Secret, wired into its Deployment by reference; the bus reads the
/// key. A tampered token is repaired, a departed service's token is deleted, and all of
/// it goes with the ServiceBus.
#[tokio::test]
async fn each_service_gets_its_own_token_and_the_bus_gets_the_key() {
    use busbar_domain::credentials::BusKey;
    use k8s_openapi::api::core::v1::Secret;
    let c = Cluster::new().await;
    let op = wired_blog(&c).await;
    let secret = |name: &str| c.api.get_as::<Secret>(NS, name);
    let data = |s: &Secret, k: &str| String::from_utf8(s.data.as_ref().unwrap()[k].0.clone()).unwrap();
    let key_secret = secret("blog-event-bus-key").expect("the key Secret exists");
    assert_eq!(key_secret.metadata.owner_references.as_ref().unwrap()[0].kind, "ServiceBus");
    let key = BusKey::from_hex(&data(&key_secret, "key")).unwrap();
    for svc in BLOG {
        let name = format!("blog-{svc}-bus-token");
        eventually(&format!("{name} exists"), || async { secret(&name).is_some() }).await;
        let token = data(&secret(&name).unwrap(), "token");
        assert_eq!(key.verify(&token).as_deref(), Some(svc), "{name} holds {svc}'s own token");
        let d = c.deployment(svc);
        let env = d.spec.unwrap().template.spec.unwrap().containers[0].env.clone().unwrap();
        let from = env.iter().find(|e| e.name == "BUSBAR_TOKEN").and_then(|e| e.value_from.clone()).unwrap();
        let r = from.secret_key_ref.unwrap();
        assert_eq!((r.name.as_str(), r.key.as_str()), (name.as_str(), "token"), "{svc} reads its token by reference");
    }
    let sts = c.api.get("statefulsets", NS, "blog-event-bus").unwrap();
    let pod = &sts["spec"]["template"]["spec"];
    let args: Vec<&str> =
        pod["containers"][0]["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert!(args.windows(2).any(|w| w == ["--auth-key-file", "/etc/busbar-key/key"]), "{args:?}");
    assert_eq!(pod["volumes"][1]["secret"]["secretName"], "blog-event-bus-key");

    // Someone overwrites posts' token; the next reconcile puts the right one back.
    let secrets = Api::<Secret>::namespaced(c.user(), NS);
    let forged = json!({ "data": { "token": "Zm9yZ2Vk" } });
    secrets.patch("blog-posts-bus-token", &PatchParams::default(), &Patch::Merge(&forged)).await.unwrap();
    c.touch("blog").await;
    eventually("posts' token is repaired", || async {
        secret("blog-posts-bus-token").is_some_and(|s| key.verify(&data(&s, "token")).as_deref() == Some("posts"))
    })
    .await;

    // query leaves the bus: its token goes.
    let mut spec = blog_spec();
    spec.services.retain(|s| s.name != "query");
    c.apply_bus(&service_bus(NS, "blog", spec)).await;
    eventually("query's token Secret is deleted", || async { secret("blog-query-bus-token").is_none() }).await;
    assert!(secret("blog-posts-bus-token").is_some());
    assert_rbac_covers_what_the_operator_did(&c.api);

    Api::<ServiceBus>::namespaced(c.user(), NS).delete("blog", &DeleteParams::default()).await.unwrap();
    eventually("every Secret goes with the ServiceBus", || async {
        secret("blog-event-bus-key").is_none() && BLOG.iter().all(|s| secret(&format!("blog-{s}-bus-token")).is_none())
    })
    .await;
    op.stop().await;
}

#[tokio::test]
async fn an_invalid_spec_is_reported_and_nothing_is_wired() {
    let c = Cluster::new().await;
    for d in BLOG {
        c.add_deployment(d);
    }
    let op = c.start_operator("op-a", false);
    // The API server refuses this spec (the CRD's schema); stored anyway, as if it predated a
    // stricter CRD, the operator's own check is what stands between it and the cluster.
    let mut spec = blog_spec();
    spec.services[3].subscribes.push(SubscriptionSpec { ty: "Post Created!".into() });
    spec.delivery.ack_wait = "soon".into();
    c.api.apply_unvalidated("kubectl", serde_json::to_value(service_bus(NS, "blog", spec)).unwrap()).unwrap();

    eventually("GraphValid is False", || async {
        c.condition("blog", "GraphValid") == Some(("False".into(), "InvalidSpec".into()))
    })
    .await;
    let b = c.bus("blog").unwrap();
    let msg =
        b["status"]["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "GraphValid").unwrap()["message"]
            .as_str()
            .unwrap()
            .to_owned();
    assert!(msg.contains("`Post Created!` is not a valid event type") && msg.contains("ackWait"), "{msg}");
    assert_eq!(c.condition("blog", "Ready").unwrap().0, "False");
    for d in BLOG {
        assert!(c.env_var(d, "BUSBAR_URL").is_none(), "{d} must not be wired");
    }
    assert!(c.api.get("statefulsets", NS, "blog-event-bus").is_none(), "no bus for an invalid spec");
    assert!(c.event_reasons().iter().any(|r| r == "InvalidSpec"));

    // Fixed: the same operator (still running) wires it.
    c.apply_bus(&blog()).await;
    eventually("wired after the fix", || async { BLOG.iter().all(|d| c.env_var(d, "BUSBAR_URL").is_some()) }).await;
    op.stop().await;
}

#[tokio::test]
async fn with_two_replicas_only_the_leader_writes() {
    let c = Cluster::new().await;
    for d in BLOG {
        c.add_deployment(d);
    }
    let a = c.start_operator("replica-a", true);
    eventually("replica-a leads", || async {
        c.api
            .get("leases", "busbar-system", "busbar-operator")
            .is_some_and(|l| l["spec"]["holderIdentity"] == "replica-a")
    })
    .await;
    let b = c.start_operator("replica-b", true);
    c.apply_bus(&blog()).await;
    eventually("wired by the leader", || async { BLOG.iter().all(|d| c.env_var(d, "BUSBAR_URL").is_some()) }).await;
    let lease_attempts_by_b =
        || c.api.count_requests(|r| r.resource == "leases" && r.user_agent.as_deref() == Some("replica-b"));
    let before = lease_attempts_by_b();
    eventually("replica-b tries for the lease several times", || async { lease_attempts_by_b() >= before + 3 }).await;
    let writes_by = |who: &str| {
        c.api.count_requests(|r| r.is_write() && r.resource != "leases" && r.user_agent.as_deref() == Some(who))
    };
    assert!(writes_by("replica-a") > 0);
    assert_eq!(writes_by("replica-b"), 0, "the follower wrote outside its lease");
    assert_eq!(b.metrics.reconciles.get(), 0, "the follower does not reconcile");

    // The leader goes away (releasing its lease); the follower takes over.
    a.stop().await;
    eventually("replica-b leads", || async {
        c.api
            .get("leases", "busbar-system", "busbar-operator")
            .is_some_and(|l| l["spec"]["holderIdentity"] == "replica-b")
    })
    .await;
    let mut spec = blog_spec();
    spec.delivery.max_deliver = 3;
    c.apply_bus(&service_bus(NS, "blog", spec)).await;
    eventually("the new leader rewires", || async {
        BLOG.iter().all(|d| c.env_var(d, "BUSBAR_MAX_DELIVER").as_deref() == Some("3"))
    })
    .await;
    assert!(writes_by("replica-b") > 0);
    b.stop().await;
    assert_rbac_covers_what_the_operator_did(&c.api);
}

#[tokio::test]
async fn a_stale_lease_update_loses() {
    let c = Cluster::new().await;
    let cfg = |id: &str| LeaseConfig {
        namespace: "busbar-system".into(),
        name: "race".into(),
        identity: id.into(),
        lease_duration: Duration::from_secs(30),
        retry_period: Duration::from_secs(1),
    };
    let a = busbar_operator::leader::LeaderElector::new(c.client_as("a"), cfg("a"));
    let b = busbar_operator::leader::LeaderElector::new(c.client_as("b"), cfg("b"));
    let (ra, rb) = tokio::join!(a.try_acquire_or_renew(), b.try_acquire_or_renew());
    assert_eq!(ra.unwrap() as u8 + rb.unwrap() as u8, 1, "exactly one replica wins a race for a new lease");
    let (ra, rb) = tokio::join!(a.try_acquire_or_renew(), b.try_acquire_or_renew());
    assert_eq!(ra.unwrap() as u8 + rb.unwrap() as u8, 1, "the holder renews; the other stays out");
}

#[tokio::test]
async fn the_watch_recovers_when_history_expires() {
    let c = Cluster::new().await;
    let op = wired_blog(&c).await;
    // As after an API server restart, for the Deployment watch: it gets 410 and re-lists.
    // (Expiring every watch at once works too, but kube's controller backs its watchers off
    // one after another through a shared backoff, which takes about 25 s.)
    c.api.expire_history_of("deployments").unwrap();
    c.add_deployment("late");
    let mut spec = blog_spec();
    spec.services.push(busbar_domain::spec::ServiceSpec {
        name: "late".into(),
        deployment: None,
        port: Some(4010),
        publishes: vec![],
        subscribes: vec![SubscriptionSpec { ty: "PostCreated".into() }],
        start_from: None,
    });
    c.apply_bus(&service_bus(NS, "blog", spec)).await;
    let wired = tokio::time::timeout(Duration::from_secs(10), async {
        while c.env_var("late", "BUSBAR_URL").is_none() {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await;
    if wired.is_err() {
        for r in c.api.requests().iter().rev().take(60) {
            eprintln!("{} {} {} {:?} {}", r.verb, r.path, r.code, r.user_agent, r.resource);
        }
        panic!("late was not wired after the watchers re-listed");
    }
    op.stop().await;
}

#[tokio::test]
async fn without_the_crd_the_operator_says_what_to_install() {
    let api = FakeApiServer::start().await;
    let err = controller::check_crd(&api.client()).await.unwrap_err().to_string();
    assert!(err.contains("ServiceBus CRD (servicebuses.busbar.dev) is not installed"), "{err}");
    assert!(err.contains("kubectl apply -f"), "{err}");
}

#[tokio::test]
async fn the_crd_is_served_as_generated() {
    let c = Cluster::new().await;
    let crd = c.api.get("customresourcedefinitions", "", "servicebuses.busbar.dev").unwrap();
    assert_eq!(crd["spec"]["names"]["shortNames"], json!(["sbus"]));
    // A ServiceBus round-trips through the API with its defaults.
    let created = Api::<ServiceBus>::namespaced(c.user(), NS).create(&PostParams::default(), &blog()).await.unwrap();
    assert_eq!(created.spec.services.len(), 4);
}
