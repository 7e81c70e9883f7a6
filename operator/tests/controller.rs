//! The unmodified kube-runtime Controller, end to end, against the in-process fake API
//! server: given a ServiceBus like this, when that happens, the cluster ends up like so.

use std::{future::Future, sync::Arc, time::Duration};

use busbar_domain::spec::Subscription;
use busbar_operator::{
    controller::{self, RunConfig},
    crd::ServiceBus,
    fixtures::{blog_spec, deployment, service_bus},
    leader::LeaseConfig,
    metrics::Metrics,
    plan::{BUS_LABEL, FIELD_MANAGER, FINALIZER, Settings, WIRING_HASH_ANNOTATION},
};
use k8s_openapi::api::apps::v1::Deployment;
use kube::{
    Api, Client,
    api::{DeleteParams, Patch, PatchParams, PostParams},
};
use kube_fake::FakeApiServer;
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

const NS: &str = "shop";
const BLOG: [&str; 4] = ["posts", "comments", "moderation", "query"];

struct Cluster {
    api: FakeApiServer,
}

impl Cluster {
    async fn new() -> Cluster {
        let api = FakeApiServer::start().await;
        api.install_crd(busbar_operator::crd::crd_yaml()).expect("the CRD installs");
        Cluster { api }
    }

    /// A client whose requests the fake attributes to `who` (its User-Agent).
    fn client_as(&self, who: &str) -> Client {
        let mut cfg = self.api.config();
        cfg.headers.push((http::header::USER_AGENT, http::HeaderValue::from_str(who).unwrap()));
        Client::try_from(cfg).unwrap()
    }

    fn user(&self) -> Client {
        self.client_as("kubectl/test")
    }

    fn add_deployment(&self, name: &str) {
        self.api.create(serde_json::to_value(deployment(NS, name)).unwrap()).unwrap();
    }

    async fn apply_bus(&self, sb: &ServiceBus) {
        let api = Api::<ServiceBus>::namespaced(self.user(), NS);
        let body = serde_json::to_value(sb).unwrap();
        api.patch(sb.metadata.name.as_deref().unwrap(), &PatchParams::apply("kubectl").force(), &Patch::Apply(body))
            .await
            .unwrap();
    }

    /// Starts one operator replica; it stops when the token is cancelled.
    fn start_operator(&self, identity: &str, leader_election: bool) -> Replica {
        let stop = CancellationToken::new();
        let cfg = RunConfig {
            settings: Settings { bus_stats: false, ..Settings::default() },
            identity: identity.into(),
            lease: leader_election.then(|| LeaseConfig {
                namespace: "busbar-system".into(),
                name: "busbar-operator".into(),
                identity: identity.into(),
                lease_duration: Duration::from_secs(2),
                retry_period: Duration::from_millis(200),
            }),
        };
        let metrics = Arc::new(Metrics::default());
        let task = tokio::spawn(controller::run(self.client_as(identity), cfg, metrics.clone(), stop.clone()));
        Replica { stop, task, metrics }
    }

    fn deployment(&self, name: &str) -> Deployment {
        self.api.get_as::<Deployment>(NS, name).unwrap_or_else(|| panic!("Deployment {name} exists"))
    }

    fn env_of(&self, name: &str) -> Vec<(String, String)> {
        let d = self.deployment(name);
        let c = &d.spec.unwrap().template.spec.unwrap().containers[0];
        c.env.iter().flatten().map(|e| (e.name.clone(), e.value.clone().unwrap_or_default())).collect()
    }

    fn env_var(&self, name: &str, var: &str) -> Option<String> {
        self.env_of(name).into_iter().find(|(k, _)| k == var).map(|(_, v)| v)
    }

    fn wiring_hash(&self, name: &str) -> Option<String> {
        self.deployment(name).spec?.template.metadata?.annotations?.get(WIRING_HASH_ANNOTATION).cloned()
    }

    fn bus(&self, name: &str) -> Option<Value> {
        self.api.get("servicebuses.busbar.dev", NS, name)
    }

    fn condition(&self, bus: &str, type_: &str) -> Option<(String, String)> {
        let b = self.bus(bus)?;
        let c = b["status"]["conditions"].as_array()?.iter().find(|c| c["type"] == type_)?.clone();
        Some((c["status"].as_str()?.to_owned(), c["reason"].as_str()?.to_owned()))
    }

    /// Nothing runs pods here: the test says when the bus's pod is ready.
    fn bus_pod_ready(&self, bus: &str) {
        self.api
            .patch_status("statefulsets", NS, &format!("{bus}-event-bus"), json!({ "readyReplicas": 1, "replicas": 1 }))
            .unwrap();
    }

    fn event_reasons(&self) -> Vec<String> {
        self.api.events(NS).iter().filter_map(|e| e["reason"].as_str().map(str::to_owned)).collect()
    }
}

/// Every request the operator replicas made is allowed by the RBAC the repository ships
/// (`rbac.rs`): the fake has no RBAC, so this is where a missing rule would show.
fn assert_rbac_covers_what_the_operator_did(api: &FakeApiServer) {
    let rules: Vec<Value> = [busbar_operator::rbac::cluster_rules(), busbar_operator::rbac::lease_rules()]
        .into_iter()
        .flat_map(|r| r.as_array().unwrap().clone())
        .collect();
    let allowed = |group: &str, resource: &str, verb: &str| {
        rules.iter().any(|r| {
            let has = |k: &str, v: &str| r[k].as_array().unwrap().iter().any(|x| x == v);
            has("apiGroups", group) && has("resources", resource) && has("verbs", verb)
        })
    };
    let mut missing = std::collections::BTreeSet::new();
    for r in api.requests() {
        let ua = r.user_agent.as_deref().unwrap_or_default();
        if !(ua.starts_with("op-") || ua.starts_with("replica-")) || r.verb == "discovery" {
            continue;
        }
        let resource = match &r.subresource {
            Some(sub) => format!("{}/{sub}", r.resource),
            None => r.resource.clone(),
        };
        if !allowed(&r.group, &resource, &r.verb) {
            missing.insert(format!("{} {}/{}", r.verb, r.group, resource));
        }
    }
    assert!(missing.is_empty(), "requests the shipped RBAC does not allow: {missing:?}");
}

struct Replica {
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    metrics: Arc<Metrics>,
}

impl Replica {
    /// Runs `trigger`, then waits (at most 10 s) until a reconcile that started after this
    /// call has finished and none is running.
    async fn reconcile_after(&self, trigger: impl Future<Output = ()>) {
        let before = self.metrics.reconciles.get();
        trigger.await;
        eventually("a reconcile after the trigger finishes", || async {
            let done = self.metrics.completed.get();
            done > before && done == self.metrics.reconciles.get()
        })
        .await;
    }

    async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(10), self.task).await.expect("the operator stops").unwrap();
    }
}

/// Waits (at most 10 s) until `check` holds.
async fn eventually<F: Future<Output = bool>>(what: &str, check: impl Fn() -> F) {
    testkit::wait_until(Duration::from_secs(10), what, || async { check().await.then_some(()) }).await
}

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
    let reasons = c.event_reasons();
    assert_eq!(reasons.iter().filter(|r| *r == "Wired").count(), 4, "{reasons:?}");
    assert!(reasons.iter().any(|r| r == "Ready"), "{reasons:?}");

    // Reconciling again changes nothing: no writes once the cluster matches.
    c.api.clear_requests();
    let before = c.api.resource_version();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(c.api.resource_version(), before, "a settled bus is not rewritten");
    assert!(op.metrics.reconciles.get() >= 2);
    op.stop().await;
}

/// Status says what is true now: a warning that no longer applies is removed, not left behind.
#[tokio::test]
async fn a_warning_that_goes_away_leaves_the_status() {
    let c = Cluster::new().await;
    let op = wired_blog(&c).await;
    let mut spec = blog_spec();
    spec.services[3].subscribes.push(Subscription { ty: "CommentDeleted".into() });
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
    op.reconcile_after(async {
        let touch = json!({ "metadata": { "annotations": { "test/touch": "1" } } });
        Api::<ServiceBus>::namespaced(c.user(), NS)
            .patch("blog", &PatchParams::default(), &Patch::Merge(&touch))
            .await
            .unwrap();
    })
    .await;
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
    let touch = json!({ "metadata": { "annotations": { "test/touch": "1" } } });
    Api::<ServiceBus>::namespaced(c.user(), NS)
        .patch("blog", &PatchParams::default(), &Patch::Merge(&touch))
        .await
        .unwrap();
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
    // The fake does not validate against the CRD schema, so the operator's own check is what
    // stands between this spec and the cluster (as it would if a webhook were bypassed).
    let mut spec = blog_spec();
    spec.services[3].subscribes.push(Subscription { ty: "Post Created!".into() });
    spec.delivery.ack_wait = "soon".into();
    c.apply_bus(&service_bus(NS, "blog", spec)).await;

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
    tokio::time::sleep(Duration::from_millis(600)).await; // several of b's lease attempts
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
        subscribes: vec![Subscription { ty: "PostCreated".into() }],
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
