//! Events published by kube's Recorder are stored and listable.

use k8s_openapi::api::events::v1::Event;
use kube::api::{Api, ListParams, PostParams};
use kube::runtime::events::{Event as Publish, EventType, Recorder, Reporter};
use kube::{Resource, ResourceExt};

use crate::support::*;

#[tokio::test]
async fn recorder_events_are_stored_and_repeats_become_a_series() {
    let api = server_with_widgets().await;
    let widgets: kube::Api<Widget> = Api::namespaced(api.client(), "shop");
    let w = widgets.create(&PostParams::default(), &widget("w", 1)).await.unwrap();
    let recorder = Recorder::new(api.client(), Reporter { controller: "busbar-operator".into(), instance: None });
    let wired = Publish {
        type_: EventType::Normal,
        reason: "Wired".into(),
        note: Some("posts publishes PostCreated".into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    recorder.publish(&wired, &w.object_ref(&())).await.unwrap();
    recorder.publish(&wired, &w.object_ref(&())).await.unwrap();
    let warning = Publish {
        type_: EventType::Warning,
        reason: "GraphInvalid".into(),
        note: Some("query subscribes to CommentDeleted but no service publishes it".into()),
        action: "Reconcile".into(),
        secondary: None,
    };
    recorder.publish(&warning, &w.object_ref(&())).await.unwrap();

    let events = api.events("shop");
    assert_eq!(events.len(), 2, "a repeat is patched into the first event's series");
    assert_eq!(events[0]["reason"], "Wired");
    assert_eq!(events[0]["series"]["count"], 2);
    assert_eq!(events[0]["regarding"]["name"], "w");
    assert_eq!(events[1]["type"], "Warning");

    let listed: Api<Event> = Api::namespaced(api.client(), "shop");
    let listed = listed.list(&ListParams::default().fields("regarding.name=w,type=Warning")).await.unwrap();
    assert_eq!(listed.items.len(), 1);
    assert_eq!(listed.items[0].reporting_controller.as_deref(), Some("busbar-operator"));
    assert_eq!(listed.items[0].namespace().as_deref(), Some("shop"));
}
