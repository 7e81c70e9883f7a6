//! The built-in bus's objects: a StatefulSet with a volume for its log, its Service, and a
//! ConfigMap holding the routes, all owned by the ServiceBus (garbage-collected with it).
//! The routes ConfigMap is the ServiceBus manifest itself; the bus re-reads the mounted
//! file, so a routes change needs no restart (the pod template does not depend on it).
//! Each is applied only when the live one does not carry it (see [`super::drift`]).

use std::collections::BTreeMap;

use busbar_domain::spec::ServiceBusSpec;
use k8s_openapi::{
    api::{
        apps::v1::{StatefulSet, StatefulSetSpec},
        core::v1::{
            Capabilities, ConfigMap, ConfigMapVolumeSource, Container, ContainerPort, HTTPGetAction,
            PersistentVolumeClaim, PersistentVolumeClaimSpec, PodSecurityContext, PodSpec, PodTemplateSpec, Probe,
            ResourceRequirements, SeccompProfile, SecretVolumeSource, SecurityContext, Service, ServicePort,
            ServiceSpec, Volume, VolumeMount, VolumeResourceRequirements,
        },
    },
    apimachinery::pkg::{
        api::resource::Quantity,
        apis::meta::v1::{LabelSelector, ObjectMeta},
        util::intstr::IntOrString,
    },
};
use serde::Serialize;

use super::{
    actions::Action,
    drift::{fingerprinted, live_covers},
    observed::BuiltinObserved,
    ownership::{bus_labels, owned_meta},
};
use crate::{
    crd::BusRef,
    names::{
        BUS_KEY_KEY, KEY_DIR, ROUTES_DIR, ROUTES_FILE, ROUTES_PATH, bus_object_name, key_secret_name,
        routes_config_map_name,
    },
    settings::Settings,
};

/// The built-in bus's three objects, as the operator applies them.
#[derive(Debug, Clone, PartialEq)]
pub struct BusObjects {
    pub config_map: ConfigMap,
    pub service: Service,
    pub stateful_set: StatefulSet,
}

/// The applies the built-in bus needs: those of its objects the cluster does not carry yet.
/// The ConfigMap and the key come first: the bus's pod mounts both.
pub fn actions(bus: &BusRef, spec: &ServiceBusSpec, settings: &Settings, live: &BuiltinObserved) -> Vec<Action> {
    let want = objects(bus, spec, settings);
    let mut out = vec![];
    if !live_covers(live.config_map.as_ref(), &want.config_map) {
        out.push(Action::ApplyConfigMap(want.config_map));
    }
    if !live_covers(live.service.as_ref(), &want.service) {
        out.push(Action::ApplyService(want.service));
    }
    if !live_covers(live.stateful_set.as_ref(), &want.stateful_set) {
        out.push(Action::ApplyStatefulSet(want.stateful_set));
    }
    out
}

/// The ServiceBus as the manifest the built-in bus reads its routes from (the file
/// `busbar up` reads too).
fn routes_manifest(bus: &str, spec: &ServiceBusSpec) -> String {
    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Manifest<'a> {
        api_version: &'static str,
        kind: &'static str,
        metadata: Named<'a>,
        spec: &'a ServiceBusSpec,
    }
    #[derive(Serialize)]
    struct Named<'a> {
        name: &'a str,
    }
    let manifest = Manifest {
        api_version: busbar_domain::spec::API_VERSION,
        kind: busbar_domain::spec::KIND,
        metadata: Named { name: bus },
        spec,
    };
    serde_yaml_ng::to_string(&manifest).expect("a spec serializes")
}

fn strings<const N: usize>(pairs: [(&str, &str); N]) -> BTreeMap<String, String> {
    pairs.into_iter().map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

pub fn objects(bus: &BusRef, spec: &ServiceBusSpec, settings: &Settings) -> BusObjects {
    let name = bus_object_name(&bus.name);
    let labels = bus_labels(bus);
    let selector = strings([("app.kubernetes.io/instance", &name), ("app.kubernetes.io/name", "event-bus")]);
    let meta = |n: &str| owned_meta(bus, n, labels.clone());
    let config_map = ConfigMap {
        metadata: meta(&routes_config_map_name(&bus.name)),
        data: Some(strings([(ROUTES_FILE, &routes_manifest(&bus.name, spec))])),
        ..Default::default()
    };
    let http = || IntOrString::String("http".into());
    let service = Service {
        metadata: meta(&name),
        spec: Some(ServiceSpec {
            selector: Some(selector.clone()),
            ports: Some(vec![ServicePort {
                name: Some("http".into()),
                port: settings.bus_port.into(),
                target_port: Some(http()),
                ..Default::default()
            }]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let quantities = |pairs: &[(&str, &str)]| -> BTreeMap<String, Quantity> {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), Quantity((*v).to_owned()))).collect()
    };
    let probe = |path: &str, period: i32| Probe {
        http_get: Some(HTTPGetAction { path: Some(path.into()), port: http(), ..Default::default() }),
        period_seconds: Some(period),
        ..Default::default()
    };
    let mount = |name: &str, path: &str, read_only: bool| VolumeMount {
        name: name.into(),
        mount_path: path.into(),
        read_only: read_only.then_some(true),
        ..Default::default()
    };
    let container = Container {
        name: "event-bus".into(),
        image: Some(settings.bus_image.clone()),
        args: Some(
            [
                "--listen",
                &format!("0.0.0.0:{}", settings.bus_port),
                "--database-url",
                "sqlite:///data/event-bus.db",
                "--routes",
                ROUTES_PATH,
                "--auth-key-file",
                &format!("{KEY_DIR}/{BUS_KEY_KEY}"),
                "--endpoint-template",
                &format!("http://{{name}}.{}.svc:{{port}}/events", bus.namespace),
            ]
            .map(str::to_owned)
            .into(),
        ),
        ports: Some(vec![ContainerPort {
            name: Some("http".into()),
            container_port: settings.bus_port.into(),
            ..Default::default()
        }]),
        readiness_probe: Some(probe("/readyz", 5)),
        liveness_probe: Some(probe("/healthz", 10)),
        resources: Some(ResourceRequirements {
            requests: Some(quantities(&[("cpu", "50m"), ("memory", "32Mi")])),
            limits: Some(quantities(&[("cpu", "1"), ("memory", "256Mi")])),
            ..Default::default()
        }),
        security_context: Some(SecurityContext {
            allow_privilege_escalation: Some(false),
            read_only_root_filesystem: Some(true),
            capabilities: Some(Capabilities { drop: Some(vec!["ALL".into()]), ..Default::default() }),
            ..Default::default()
        }),
        volume_mounts: Some(vec![
            mount("data", "/data", false),
            mount("routes", ROUTES_DIR, true),
            mount("key", KEY_DIR, true),
        ]),
        ..Default::default()
    };
    let pod = PodSpec {
        security_context: Some(PodSecurityContext {
            run_as_non_root: Some(true),
            run_as_user: Some(65532),
            run_as_group: Some(65532),
            fs_group: Some(65532),
            seccomp_profile: Some(SeccompProfile { type_: "RuntimeDefault".into(), ..Default::default() }),
            ..Default::default()
        }),
        automount_service_account_token: Some(false),
        containers: vec![container],
        volumes: Some(vec![
            Volume {
                name: "routes".into(),
                config_map: Some(ConfigMapVolumeSource {
                    name: routes_config_map_name(&bus.name),
                    ..Default::default()
                }),
                ..Default::default()
            },
            Volume {
                name: "key".into(),
                secret: Some(SecretVolumeSource {
                    secret_name: Some(key_secret_name(&bus.name)),
                    default_mode: Some(0o440),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ]),
        ..Default::default()
    };
    let volume_claim = PersistentVolumeClaim {
        metadata: ObjectMeta { name: Some("data".into()), ..Default::default() },
        spec: Some(PersistentVolumeClaimSpec {
            access_modes: Some(vec!["ReadWriteOnce".into()]),
            resources: Some(VolumeResourceRequirements {
                requests: Some(quantities(&[("storage", &settings.bus_storage)])),
                ..Default::default()
            }),
            storage_class_name: settings.bus_storage_class.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let stateful_set = StatefulSet {
        metadata: meta(&name),
        spec: Some(StatefulSetSpec {
            service_name: Some(name.clone()),
            replicas: Some(1),
            selector: LabelSelector { match_labels: Some(selector), ..Default::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels.clone()), ..Default::default() }),
                spec: Some(pod),
            },
            volume_claim_templates: Some(vec![volume_claim]),
            ..Default::default()
        }),
        ..Default::default()
    };
    BusObjects {
        config_map: fingerprinted(config_map),
        service: fingerprinted(service),
        stateful_set: fingerprinted(stateful_set),
    }
}
