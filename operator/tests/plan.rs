//! The operator's decisions, without a server: given a ServiceBus and a cluster like this,
//! the operator does exactly that (as the sentences its actions print), and then nothing
//! more. The cluster is a [`World`]: plain data that carries actions out as the API server
//! and JetStream would.

mod support;

use std::time::Duration;

use async_nats::jetstream::consumer::{DeliverPolicy, pull};
use busbar_domain::spec::{StartFrom, SubscriptionSpec};
use busbar_operator::{
    crd::{ContractEdgeStatus, ServiceBusStatus},
    names::{FIELD_MANAGER, MANAGED_BY_LABEL, ROUTES_FILE, ROUTES_PATH, TOKEN_FOR_LABEL},
    plan::{
        self,
        actions::{Action, Concern, Failure, Regarding},
        bus_objects,
        consumers::{self, ConsumerChange},
        observed::SubscriberFigures,
        secrets, status,
    },
    settings::Settings,
};
use busbar_protocol::bus_api::Parked;
use support::{BLOG, BLOG_CONTRACTS, blog_contracts_with_title_renamed, blog_spec, chain_spec, world::World};

/// The blog, wired, with its bus ready: the usual starting point.
fn ready_blog() -> World {
    World::blog_with_deployments().settled().bus_ready().settled()
}

fn ready_blog_on_jetstream() -> World {
    World::blog_with_deployments().on_jetstream().settled()
}

fn tokens(verb: &str) -> Vec<String> {
    BLOG.iter().map(|s| format!("{verb} Secret blog-{s}-bus-token")).collect()
}

fn wires() -> Vec<String> {
    BLOG.iter().map(|d| format!("wire Deployment {d}")).collect()
}

/// Sentences, in order.
fn said(parts: &[&[&str]]) -> Vec<String> {
    parts.iter().flat_map(|p| p.iter().map(|s| s.to_string())).collect()
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// An invalid spec: query subscribes to something that is not an event type.
fn invalid(spec: &mut busbar_domain::spec::ServiceBusSpec) {
    spec.services[3].subscribes[0].ty = "not valid!".into();
}

#[test]
fn the_operator_does_exactly_this() {
    let new_bus = said(&[
        &["create Secret blog-event-bus-key"],
        &strs(&tokens("apply")),
        &["apply ConfigMap blog-event-bus-routes", "apply Service blog-event-bus", "apply StatefulSet blog-event-bus"],
        &strs(&wires()),
        &["event Warning BusStarting on ServiceBus", "event Warning BusStarting on ServiceBus", "patch status"],
    ]);
    let new_bus_on_jetstream = said(&[
        &["create Secret blog-event-bus-key"],
        &strs(&tokens("apply")),
        &["apply Secret blog-nats-auth", "create the JetStream streams"],
        &["put consumer comments", "put consumer moderation", "put consumer query"],
        &strs(&wires()),
        &["event Normal Ready on ServiceBus", "patch status"],
    ]);
    let rekeyed = said(&[&["create Secret blog-event-bus-key"], &strs(&tokens("apply")), &strs(&wires())]);
    let four_times = |s: &'static str| [s; 4];
    let cases: Vec<(&str, World, Vec<String>)> = vec![
        ("a new ServiceBus gets its key, tokens, bus and wiring", World::blog_with_deployments(), new_bus),
        ("a settled bus needs nothing", ready_blog(), vec![]),
        (
            "the bus's pod becomes ready",
            World::blog_with_deployments().settled().bus_ready(),
            said(&[&["event Normal Ready on ServiceBus", "patch status"]]),
        ),
        (
            "a spec change rewires what changed, unwires who left and deletes its token",
            ready_blog().edit_spec(|s| {
                s.services.retain(|s| s.name != "moderation");
                s.services[2].subscribes.retain(|s| s.ty != "CommentUpdated");
            }),
            said(&[&[
                "apply ConfigMap blog-event-bus-routes",
                "wire Deployment query",
                "unwire Deployment moderation",
                "delete Secret blog-moderation-bus-token",
                "patch status",
            ]]),
        ),
        (
            "a Deployment that disappears is waited for",
            ready_blog().without_deployment("query"),
            said(&[&[
                "event Warning DeploymentMissing on ServiceBus",
                "event Warning DeploymentMissing on ServiceBus",
                "patch status",
            ]]),
        ),
        (
            "a Deployment created later is wired",
            ready_blog().without_deployment("query").settled().with_deployments(&["query"]),
            said(&[&["wire Deployment query", "event Normal Ready on ServiceBus", "patch status"]]),
        ),
        (
            "wiring removed by hand is restored",
            ready_blog().edit_container("comments", |c| c.env.as_mut().unwrap().retain(|e| e.name == "DATABASE_URL")),
            said(&[&["wire Deployment comments"]]),
        ),
        (
            "a Deployment this bus wired but no longer declares is unwired; another bus's is not",
            ready_blog().with_deployments(&["legacy", "other"]).labelled("legacy", "blog").labelled("other", "billing"),
            said(&[&["unwire Deployment legacy"]]),
        ),
        (
            "a deleted key Secret is made again and every service gets a new token",
            ready_blog().delete_secret("blog-event-bus-key"),
            rekeyed,
        ),
        (
            "a tampered token Secret is repaired",
            ready_blog().overwrite_secret("blog-posts-bus-token", "token", "forged"),
            said(&[&["apply Secret blog-posts-bus-token"]]),
        ),
        (
            "a key Secret that holds no key stops every write and says so",
            ready_blog().overwrite_secret("blog-event-bus-key", "key", "nonsense"),
            said(&[&[
                "event Warning InvalidBusKey on ServiceBus",
                "event Warning InvalidBusKey on ServiceBus",
                "event Warning InvalidBusKey on ServiceBus",
                "patch status",
            ]]),
        ),
        (
            "a departed service's token Secret is deleted",
            ready_blog().add_secret(secrets::token_secret(&World::blog().bus, "billing", "x")),
            said(&[&["delete Secret blog-billing-bus-token"]]),
        ),
        ("a new ServiceBus on JetStream", World::blog_with_deployments().on_jetstream(), new_bus_on_jetstream),
        ("a settled bus on JetStream needs nothing", ready_blog_on_jetstream(), vec![]),
        (
            "a start position JetStream cannot change: the consumer keeps its place, the service is rewired",
            ready_blog_on_jetstream().edit_spec(|s| s.services[3].start_from = Some(StartFrom::Now)),
            said(&[&["wire Deployment query", "patch status"]]),
        ),
        (
            "NATS does not answer: the services are wired, the streams wait",
            World::blog_with_deployments().on_jetstream().nats_down(),
            said(&[
                &["create Secret blog-event-bus-key"],
                &strs(&tokens("apply")),
                &["apply Secret blog-nats-auth"],
                &strs(&wires()),
                &[
                    "event Warning ProvisioningFailed on ServiceBus",
                    "event Warning ProvisioningFailed on ServiceBus",
                    "patch status",
                ],
            ]),
        ),
        (
            "an invalid spec changes nothing and says why",
            World::blog_with_deployments().edit_spec(invalid),
            said(&[&four_times("event Warning InvalidSpec on ServiceBus"), &["patch status"]]),
        ),
        (
            "a spec made invalid leaves the wiring as it is",
            ready_blog().edit_spec(invalid),
            said(&[&four_times("event Warning InvalidSpec on ServiceBus"), &["patch status"]]),
        ),
    ];
    for (story, mut world, then) in cases {
        assert_eq!(world.reconcile(), then, "{story}");
        assert_eq!(world.reconcile(), Vec::<String>::new(), "{story}: and then nothing more");
    }
}

#[test]
fn an_invalid_spec_plans_no_write_and_says_why_in_graph_valid() {
    let mut w = ready_blog().edit_spec(|s| {
        invalid(s);
        s.delivery.ack_wait = "soon".into();
    });
    let plan = w.plan();
    assert!(plan.actions.is_empty(), "{:?}", plan.actions);
    assert_eq!(plan.problems.len(), 2, "{:?}", plan.problems);
    let graph = plan.status.condition("GraphValid").unwrap();
    assert_eq!((graph.status.as_str(), graph.reason.as_str()), ("False", "InvalidSpec"));
    assert!(graph.message.contains("`not valid!` is not a valid event type"), "{}", graph.message);
    assert!(graph.message.contains("ackWait"), "{}", graph.message);
    assert_eq!(plan.status.condition("Ready").unwrap().reason, "InvalidSpec");
    assert_eq!(plan.status.observed_generation, Some(2));
}

#[test]
fn deleting_the_servicebus_takes_exactly_this() {
    let unwire_all: Vec<String> =
        ["comments", "moderation", "posts", "query"].iter().map(|d| format!("unwire Deployment {d}")).collect();
    let cases: Vec<(&str, World, Vec<String>, bool)> = vec![
        (
            "the built-in bus: the wiring goes, its objects are garbage-collected",
            ready_blog(),
            said(&[&strs(&unwire_all), &["event Normal CleanedUp on ServiceBus"]]),
            false,
        ),
        (
            "JetStream: the wiring and the consumers go, the streams stay",
            ready_blog_on_jetstream(),
            said(&[
                &strs(&unwire_all),
                &["delete consumer comments", "delete consumer moderation", "delete consumer query"],
                &["event Normal CleanedUp on ServiceBus"],
            ]),
            false,
        ),
        (
            "JetStream that does not answer: the ServiceBus stays until it does",
            ready_blog_on_jetstream().nats_down(),
            said(&[&strs(&unwire_all), &["event Warning CleanupBlocked on ServiceBus"]]),
            true,
        ),
    ];
    for (story, world, then, blocked) in cases {
        let cleanup = world.cleanup();
        assert_eq!(cleanup.actions.iter().map(ToString::to_string).collect::<Vec<_>>(), then, "{story}");
        assert_eq!(cleanup.blocked.is_some(), blocked, "{story}");
    }
    let blocked = ready_blog_on_jetstream().nats_down().cleanup().blocked.unwrap();
    assert!(blocked.contains("connection refused") && blocked.contains("busbar.dev/cleanup"), "{blocked}");
}

#[test]
fn each_service_is_wired_with_its_bus_its_types_and_its_own_token_by_reference() {
    let w = ready_blog();
    let env = w.env("query");
    assert_eq!(env["BUSBAR_URL"], "http://blog-event-bus.shop.svc:4005");
    assert_eq!(env["BUSBAR_SUBSCRIBES"], "CommentCreated,CommentUpdated,PostCreated");
    assert_eq!(env["BUSBAR_TOKEN"], "secret:blog-query-bus-token/token");
    assert_eq!(env["DATABASE_URL"], "postgres://query-db/query", "the user's env stays");
    let token = &w.secrets["blog-query-bus-token"];
    assert_eq!(token.metadata.labels.as_ref().unwrap()[TOKEN_FOR_LABEL], "query");
    let value = String::from_utf8(token.data.as_ref().unwrap()["token"].0.clone()).unwrap();
    assert_eq!(w.key().verify(&value).as_deref(), Some("query"));
    let status = w.status.as_ref().unwrap();
    assert_eq!(status.wired_services.as_deref(), Some("4/4"));
    assert_eq!(status.observed_generation, Some(1));
    assert_eq!(status.condition("Ready").unwrap().status, "True");
}

#[test]
fn a_new_key_rolls_every_pod_and_a_spec_change_only_the_changed_ones() {
    let hash = |w: &mut World| -> Vec<(String, String)> {
        w.plan()
            .actions
            .into_iter()
            .filter_map(|a| match a {
                Action::Wire(w) => Some((w.deployment, w.hash)),
                _ => None,
            })
            .collect()
    };
    let first = hash(&mut World::blog_with_deployments());
    let mut rekeyed = ready_blog().delete_secret("blog-event-bus-key");
    let again = hash(&mut rekeyed);
    assert_eq!(again.len(), 4);
    assert!(again.iter().zip(&first).all(|(a, b)| a.0 == b.0 && a.1 != b.1), "{again:?} vs {first:?}");
}

#[test]
fn the_apply_body_carries_only_the_wiring() {
    let plan = World::blog().with_deployments(&["posts"]).plan();
    let Some(Action::Wire(w)) = plan.actions.iter().find(|a| matches!(a, Action::Wire(_))) else { panic!() };
    let body = serde_json::to_value(&w.body).unwrap();
    assert_eq!(body["metadata"]["labels"], serde_json::json!({ "busbar.dev/bus": "blog" }));
    assert!(body["spec"].get("replicas").is_none() && body["spec"].get("selector").is_none(), "{body}");
    let container = &body["spec"]["template"]["spec"]["containers"][0];
    assert_eq!(container.as_object().unwrap().keys().collect::<Vec<_>>(), ["env", "name"]);
    assert_eq!(container["env"].as_array().unwrap().len(), 11, "ten BUSBAR_* values and the token");
}

#[test]
fn status_carries_each_services_figures_parked_events_and_the_totals() {
    let parked = |count, oldest_age_ms| Some(Parked { count, oldest_age_ms });
    let mut w = ready_blog()
        .figures(
            "query",
            SubscriberFigures {
                pending: Some(3),
                redelivered: Some(2),
                dead_lettered: Some(1),
                parked: parked(2, 4_500),
            },
        )
        .figures(
            "comments",
            SubscriberFigures { pending: Some(5), redelivered: Some(0), dead_lettered: Some(0), parked: parked(0, 0) },
        );
    assert_eq!(
        w.reconcile(),
        ["event Warning DeadLettered on ServiceBus about Deployment query", "patch status"],
        "one dead letter appeared"
    );
    let status = w.status.clone().unwrap();
    let query = status.service("query").unwrap();
    assert_eq!((query.pending, query.redelivered, query.dead_lettered), (Some(3), Some(2), Some(1)));
    assert_eq!((query.parked, query.oldest_parked_seconds), (Some(2), Some(4)));
    let comments = status.service("comments").unwrap();
    assert_eq!((comments.parked, comments.oldest_parked_seconds), (Some(0), None), "nothing parked, no age");
    let posts = status.service("posts").unwrap();
    assert_eq!((posts.pending, posts.parked), (None, None), "posts subscribes to nothing: no figures");
    assert_eq!((status.total_pending, status.total_dead_lettered), (Some(8), Some(1)));
    let note = w.events.last().unwrap();
    assert!(note.note.contains("query: 1 new dead letter(s), 1 in all"), "{}", note.note);

    // Without figures (the bus does not answer), status leaves them out rather than guess.
    let mut quiet = ready_blog();
    quiet.reconcile();
    let s = quiet.status.unwrap();
    assert_eq!((s.total_pending, s.total_dead_lettered, s.service("query").unwrap().parked), (None, None, None));
}

#[test]
fn dead_letters_and_lag_are_announced_once_per_transition() {
    let settings = Settings { lag_warning: 100, ..Settings::default() };
    let figures = |pending: u64, dead: u64| SubscriberFigures {
        pending: Some(pending),
        redelivered: Some(0),
        dead_lettered: Some(dead),
        parked: None,
    };
    let mut w = ready_blog();
    w.settings = settings;
    let steps: Vec<(u64, u64, Vec<&str>)> = vec![
        (5, 0, vec!["patch status"]),
        (150, 0, vec!["event Warning LagHigh on ServiceBus about Deployment query", "patch status"]),
        (170, 0, vec!["patch status"]),
        (170, 2, vec!["event Warning DeadLettered on ServiceBus about Deployment query", "patch status"]),
        (170, 2, vec![]),
        (40, 2, vec!["event Normal LagCleared on ServiceBus about Deployment query", "patch status"]),
        (40, 3, vec!["event Warning DeadLettered on ServiceBus about Deployment query", "patch status"]),
        (40, 1, vec!["patch status"]),
    ];
    for (i, (pending, dead, then)) in steps.into_iter().enumerate() {
        w = w.figures("query", figures(pending, dead));
        assert_eq!(w.reconcile(), then, "step {i}: {pending} pending, {dead} dead");
    }
}

#[test]
fn a_warning_that_goes_away_leaves_the_status() {
    let mut w =
        ready_blog().edit_spec(|s| s.services[3].subscribes.push(SubscriptionSpec { ty: "CommentDeleted".into() }));
    w.reconcile();
    assert_eq!(w.status.as_ref().unwrap().warnings, ["query subscribes to CommentDeleted but no service publishes it"]);
    assert_eq!(w.status.as_ref().unwrap().condition("GraphValid").unwrap().reason, "ValidWithWarnings");
    let mut w = w.with_spec(blog_spec());
    assert_eq!(w.reconcile(), ["apply ConfigMap blog-event-bus-routes", "wire Deployment query", "patch status"]);
    let status = w.status.as_ref().unwrap();
    assert!(status.warnings.is_empty(), "{:?}", status.warnings);
    assert_eq!(status.condition("GraphValid").unwrap().reason, "Valid");
}

#[test]
fn a_start_position_change_is_a_warning_in_status() {
    let mut w = ready_blog_on_jetstream().edit_spec(|s| s.services[3].start_from = Some(StartFrom::Now));
    w.reconcile();
    let status = w.status.as_ref().unwrap();
    assert_eq!(status.warnings.len(), 1, "{:?}", status.warnings);
    assert!(status.warnings[0].contains("consumer query keeps its start position"), "{:?}", status.warnings);
    assert_eq!(status.condition("Ready").unwrap().status, "True", "a warning does not stop the bus");
    let js = w.nats.as_ref().unwrap();
    assert_eq!(js.consumers["query"].deliver_policy, DeliverPolicy::All);
}

#[test]
fn condition_times_move_only_on_a_change() {
    let mut w = World::blog_with_deployments().settled();
    let at = |w: &World, t: &str| w.status.as_ref().unwrap().condition(t).unwrap().last_transition_time.clone();
    let (ready_at, wired_at) = (at(&w, "Ready"), at(&w, "Wired"));
    w = w.bus_ready().settled();
    assert_ne!(at(&w, "Ready"), ready_at, "Ready turned True");
    assert_eq!(at(&w, "Wired"), wired_at, "Wired stayed True");
    let status = w.status.as_ref().unwrap();
    assert!(status.conditions.iter().all(|c| c.observed_generation == Some(1)));
}

#[test]
fn a_failure_to_carry_an_action_out_is_reported_in_status_not_lost() {
    let mut w = ready_blog().edit_spec(|s| s.delivery.max_deliver = 3);
    let plan = w.plan();
    let bus = w.bus.clone();
    let failed = |action: &str, concern: Concern| Failure { action: action.into(), concern, error: "forbidden".into() };
    let wiring = failed("wire Deployment query", Concern::Wiring { deployment: "query".into() });
    let status = status::with_failures(plan.status.clone(), &[wiring], &bus, w.status.as_ref(), "t9");
    let query = status.service("query").unwrap();
    assert!(!query.wired && query.message.as_deref() == Some("cannot wire Deployment query: forbidden"));
    assert_eq!(status.wired_services.as_deref(), Some("3/4"));
    let wired = status.condition("Wired").unwrap();
    assert_eq!((wired.status.as_str(), wired.reason.as_str()), ("False", "WiringFailed"));
    assert_eq!(status.condition("Ready").unwrap().reason, "WiringFailed");
    let report: Vec<String> =
        plan::report(w.status.as_ref(), &status, &w.settings).iter().map(ToString::to_string).collect();
    assert!(report.contains(&"event Warning WiringFailed on ServiceBus".to_owned()), "{report:?}");

    let transport = failed("apply StatefulSet blog-event-bus", Concern::Transport);
    let status = status::with_failures(plan.status, &[transport], &bus, w.status.as_ref(), "t9");
    let t = status.condition("TransportReady").unwrap();
    assert_eq!((t.status.as_str(), t.reason.as_str()), ("False", "ProvisioningFailed"));
    assert_eq!(t.message, "cannot apply StatefulSet blog-event-bus: forbidden");
    assert_eq!(t.last_transition_time, "t9");
}

#[test]
fn a_cluster_the_operator_cannot_read_turns_ready_false_in_status_keeping_what_was_known() {
    let w = ready_blog();
    let known = w.status.clone().expect("a ready blog has a status");
    assert_eq!(known.condition("Ready").unwrap().status, "True");
    let error = "ApiError: deployments.apps is forbidden (Forbidden): 403";
    let status = status::unobserved(Some(&known), &w.bus, error, "t9");
    let ready = status.condition("Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("False", "ObservationFailed"));
    assert_eq!(ready.message, format!("cannot read the cluster's state: {error}"));
    assert_eq!(ready.last_transition_time, "t9");
    // The rest is the last thing known, not wiped.
    assert_eq!(status.services, known.services);
    assert_eq!(status.conditions.iter().filter(|c| c.type_ == "Ready").count(), 1);
    let report: Vec<String> =
        plan::report(Some(&known), &status, &w.settings).iter().map(ToString::to_string).collect();
    assert!(report.iter().any(|a| a.starts_with("event Warning ObservationFailed")), "{report:?}");
    assert!(report.iter().any(|a| a.contains("status")), "the status is patched: {report:?}");
    // Failing again later does not move the transition time.
    let again = status::unobserved(Some(&status), &w.bus, error, "t10");
    assert_eq!(again.condition("Ready").unwrap().last_transition_time, "t9");
}

#[test]
fn wiring_and_deployment_events_name_both_sides() {
    let mut w = World::blog().with_deployments(&["query"]);
    w.reconcile();
    let wired: Vec<String> = w.events.iter().filter(|n| n.reason == "Wired").map(ToString::to_string).collect();
    assert_eq!(
        wired,
        [
            "event Normal Wired on Deployment query about ServiceBus",
            "event Normal Wired on ServiceBus about Deployment query"
        ]
    );
    let on_bus = w.events.iter().find(|n| n.regarding == Regarding::ServiceBus && n.reason == "Wired").unwrap();
    assert!(on_bus.note.starts_with("wired Deployment query for service query (wiring "), "{}", on_bus.note);
}

#[test]
fn the_builtin_bus_is_owned_by_the_servicebus_and_reads_the_routes_file() {
    let bus = World::blog().bus;
    let objs = bus_objects::objects(&bus, &blog_spec(), &Settings::default());
    for meta in [&objs.config_map.metadata, &objs.service.metadata, &objs.stateful_set.metadata] {
        assert_eq!(meta.owner_references.as_ref().unwrap()[0].uid, "uid-1");
        assert_eq!(meta.labels.as_ref().unwrap()[MANAGED_BY_LABEL], FIELD_MANAGER);
    }
    let routes = &objs.config_map.data.as_ref().unwrap()[ROUTES_FILE];
    assert_eq!(busbar_domain::spec::parse_manifest(routes).unwrap().spec, blog_spec());
    let pod = objs.stateful_set.spec.as_ref().unwrap().template.spec.clone().unwrap();
    let args = pod.containers[0].args.clone().unwrap();
    assert!(args.windows(2).any(|w| w[0] == "--routes" && w[1] == ROUTES_PATH), "{args:?}");
    assert!(args.windows(2).any(|w| w == ["--auth-key-file", "/etc/busbar-key/key"]), "{args:?}");
    // The routes file is read at run time, so the StatefulSet does not depend on the spec.
    let mut spec = blog_spec();
    spec.services.pop();
    let other = bus_objects::objects(&bus, &spec, &Settings::default());
    assert_eq!(other.stateful_set, objs.stateful_set);
    assert_ne!(other.config_map, objs.config_map);
}

#[test]
fn a_bus_object_changed_by_hand_or_by_new_settings_is_applied_again() {
    let mut w = ready_blog();
    w.stateful_set.as_mut().unwrap().spec.as_mut().unwrap().template.spec.as_mut().unwrap().containers[0].image =
        Some("someone/else:1".into());
    assert_eq!(w.reconcile(), ["apply StatefulSet blog-event-bus"]);
    w.settings.bus_storage_class = Some("fast".into());
    assert_eq!(w.reconcile(), ["apply StatefulSet blog-event-bus"]);
    w.settings.bus_storage_class = None;
    assert_eq!(w.reconcile(), ["apply StatefulSet blog-event-bus"], "a field no longer set counts too");
}

#[test]
fn a_thousand_services_plan_in_one_pass() {
    let names: Vec<String> = (0..1000).map(|i| format!("svc-{i}")).collect();
    let mut w = World::blog().with_spec(chain_spec(1000)).with_deployments(&strs(&names));
    let plan = w.plan();
    assert_eq!(plan.actions.iter().filter(|a| matches!(a, Action::Wire(_))).count(), 1000);
    assert_eq!(plan.status.warnings, ["svc-999 publishes Event999 but no service subscribes to it"]);
}

#[test]
fn one_consumer_per_subscriber_with_the_sdk_config() {
    let c = consumers::desired_consumers("blog", &blog_spec(), true);
    assert_eq!(c.keys().collect::<Vec<_>>(), ["comments", "moderation", "query"]);
    assert_eq!(c["moderation"].filter_subject, "busbar.blog.CommentCreated");
    assert_eq!(c["query"].filter_subjects.len(), 3);
    let old_server = consumers::desired_consumers("blog", &blog_spec(), false);
    assert_eq!(old_server["query"].filter_subject, "busbar.blog.>", "one filter for the whole bus on NATS < 2.10");
}

#[test]
fn a_start_position_change_keeps_the_consumer_and_is_reported() {
    let existing = consumers::desired_consumers("blog", &blog_spec(), true)["query"].clone();
    assert_eq!(consumers::consumer_change(&existing, &existing), ConsumerChange::Unchanged);
    let now = pull::Config { deliver_policy: DeliverPolicy::New, ..existing.clone() };
    let ConsumerChange::KeepStart(kept, why) = consumers::consumer_change(&existing, &now) else { panic!() };
    assert_eq!(kept.deliver_policy, DeliverPolicy::All);
    assert!(why.contains("cannot change where an existing consumer starts"), "{why}");
    let slower = pull::Config { ack_wait: Duration::from_secs(99), ..existing.clone() };
    assert_eq!(consumers::consumer_change(&existing, &slower), ConsumerChange::Update(Box::new(slower)));
}

#[test]
fn an_unchanged_status_is_not_written_and_the_patch_leaves_exactly_the_new_one() {
    let w = ready_blog();
    let status = w.status.clone().unwrap();
    assert!(plan::report(Some(&status), &status, &w.settings).is_empty());
    let next = ServiceBusStatus { warnings: vec![], total_pending: None, ..status.clone() };
    let with_warning = ServiceBusStatus { warnings: vec!["w".into()], total_pending: Some(3), ..status };
    let Some(patch) = status::patch(Some(&with_warning), &next) else { panic!("the status changed") };
    let mut doc = serde_json::json!({ "status": with_warning });
    json_patch::merge(&mut doc, &patch);
    assert_eq!(serde_json::from_value::<ServiceBusStatus>(doc["status"].clone()).unwrap(), next);
}

proptest::proptest! {
    /// Shuffling services in the spec changes no service's wiring.
    #[test]
    fn the_order_of_services_does_not_change_the_wiring(seed in 0usize..1000) {
        let wiring = |w: &mut World| {
            let mut h: Vec<(String, String)> = w
                .plan()
                .actions
                .into_iter()
                .filter_map(|a| match a { Action::Wire(w) => Some((w.deployment, w.hash)), _ => None })
                .collect();
            h.sort();
            h
        };
        let mut w = World::blog_with_deployments();
        w = w.add_secret(secrets::key_secret(&World::blog().bus, &busbar_domain::credentials::BusKey::generate()));
        let before = wiring(&mut w);
        let mut shuffled = w.edit_spec(|s| s.services.rotate_left(seed % 4));
        proptest::prop_assert_eq!(before.len(), 4);
        proptest::prop_assert_eq!(wiring(&mut shuffled), before);
    }
}

/// The blog wired and ready, with the contracts it was built with.
fn ready_blog_with_contracts() -> World {
    World::blog_with_deployments().with_contracts(BLOG_CONTRACTS).settled().bus_ready().settled()
}

fn condition(w: &World, type_: &str) -> (String, String, String) {
    let c = w.status.as_ref().unwrap().condition(type_).unwrap_or_else(|| panic!("{type_} is in status"));
    (c.status.clone(), c.reason.clone(), c.message.clone())
}

#[test]
fn contracts_that_fit_are_reported_and_without_them_nothing_is_checked() {
    let w = ready_blog_with_contracts();
    let (status, reason, message) = condition(&w, "ContractsCompatible");
    assert_eq!((status.as_str(), reason.as_str()), ("True", "Compatible"));
    assert_eq!(message, "every subscriber's reader fits its publisher (6 edge(s))");
    assert!(w.status.as_ref().unwrap().incompatible_edges.is_empty());
    assert_eq!(condition(&w, "Ready").0, "True");

    let plain = ready_blog();
    let (status, reason, message) = condition(&plain, "ContractsCompatible");
    assert_eq!((status.as_str(), reason.as_str()), ("Unknown", "NoContracts"));
    assert!(message.starts_with("no ConfigMap blog-contracts: event contracts are not checked"), "{message}");
    assert_eq!(condition(&plain, "Ready").0, "True", "unchecked contracts do not stop the bus");
}

#[test]
fn a_new_subscription_whose_reader_does_not_fit_is_not_wired() {
    let renamed = blog_contracts_with_title_renamed();
    let mut w = World::blog_with_deployments().with_contracts(&renamed);
    let done = w.reconcile();
    let wired: Vec<&str> = done.iter().filter_map(|a| a.strip_prefix("wire Deployment ")).collect();
    assert_eq!(wired, ["posts", "comments", "moderation"], "query is held: {done:?}");
    assert!(
        done.contains(&"event Warning SubscriptionHeld on ServiceBus about Deployment query".to_owned()),
        "{done:?}"
    );
    assert!(!w.env("query").contains_key("BUSBAR_URL"));

    let status = w.status.clone().unwrap();
    assert_eq!(
        status.incompatible_edges,
        [ContractEdgeStatus {
            publisher: "posts".into(),
            event_type: "PostCreated".into(),
            subscriber: "query".into(),
            state: "Held".into(),
            problems: vec!["PostCreated.title: posts → query: query requires it; posts does not send it".into()],
        }]
    );
    let (state, reason, message) = condition(&w, "ContractsCompatible");
    assert_eq!((state.as_str(), reason.as_str()), ("False", "SubscriptionHeld"));
    assert!(message.contains("posts → query PostCreated"), "{message}");
    assert_eq!(condition(&w, "Ready").1, "SubscriptionHeld", "Ready says why first");
    let query = status.service("query").unwrap();
    assert!(!query.wired);
    assert_eq!(
        query.message.as_deref(),
        Some(
            "not wired: its new subscription to PostCreated does not fit posts's contract (see status.incompatibleEdges)"
        )
    );
    // The bus does not deliver query what it could not read; comments (which needs only
    // the id) still gets PostCreated.
    let routes = &w.config_map.as_ref().unwrap().data.as_ref().unwrap()[ROUTES_FILE];
    let routed = busbar_domain::spec::parse_manifest(routes).unwrap().spec;
    assert!(routed.service("query").unwrap().subscribes.is_empty());
    assert_eq!(routed.service("comments").unwrap().subscribed_types().len(), 2);

    // Held until the contracts fit: nothing more to do meanwhile, then query is wired.
    let mut w = w.settled();
    assert!(w.reconcile().is_empty());
    let mut w = w.with_contracts(BLOG_CONTRACTS);
    let done = w.reconcile();
    assert!(done.contains(&"apply ConfigMap blog-event-bus-routes".to_owned()), "{done:?}");
    assert!(done.contains(&"wire Deployment query".to_owned()), "{done:?}");
    assert_eq!(condition(&w, "ContractsCompatible").0, "True");
    assert!(w.status.as_ref().unwrap().incompatible_edges.is_empty());
}

#[test]
fn a_publisher_change_that_breaks_a_wired_reader_is_reported_not_hidden() {
    let mut w = ready_blog_with_contracts().with_contracts(&blog_contracts_with_title_renamed());
    assert_eq!(
        w.reconcile(),
        [
            "event Warning ReaderBroken on ServiceBus",
            "event Warning ReaderBroken on ServiceBus",
            "event Warning ReaderBroken on ServiceBus about Deployment query",
            "patch status"
        ],
        "Ready and ContractsCompatible turn False, the edge is announced, and query keeps its wiring"
    );
    let status = w.status.clone().unwrap();
    assert_eq!(status.incompatible_edges.len(), 1);
    assert_eq!(status.incompatible_edges[0].state, "Wired");
    assert!(status.service("query").unwrap().wired);
    let (state, reason, message) = condition(&w, "ContractsCompatible");
    assert_eq!((state.as_str(), reason.as_str()), ("False", "ReaderBroken"));
    assert!(message.contains("posts → query PostCreated"), "{message}");
    let note = w.events.last().unwrap();
    assert_eq!(
        note.note,
        "posts's PostCreated no longer fits query, which is wired and dead-letters what it cannot read: \
         PostCreated.title: posts → query: query requires it; posts does not send it"
    );
    assert!(w.reconcile().is_empty(), "announced once");
}

#[test]
fn contracts_that_cannot_be_read_are_reported_and_hold_nothing() {
    let mut w = World::blog_with_deployments().with_contracts("{not json");
    let done = w.reconcile();
    assert_eq!(done.iter().filter(|a| a.starts_with("wire Deployment ")).count(), 4);
    let (state, reason, message) = condition(&w, "ContractsCompatible");
    assert_eq!((state.as_str(), reason.as_str()), ("False", "InvalidContracts"));
    assert!(
        message.starts_with("ConfigMap blog-contracts, key contracts.lock.json: not a busbar contracts lock"),
        "{message}"
    );
}

#[test]
fn on_jetstream_a_held_subscriber_gets_no_consumer() {
    let mut w = World::blog_with_deployments().on_jetstream().with_contracts(&blog_contracts_with_title_renamed());
    let done = w.reconcile();
    let consumers: Vec<&str> = done.iter().filter_map(|a| a.strip_prefix("put consumer ")).collect();
    assert_eq!(consumers, ["comments", "moderation"], "{done:?}");
    assert!(!done.contains(&"wire Deployment query".to_owned()));
}
