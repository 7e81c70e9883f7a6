//! What `busbar up` will start, decided purely from the spec and options: one process
//! for the bus and one per service, with their ports, data files and `BUSBAR_*` wiring.

use std::path::{Path, PathBuf};

use busbar::{
    spec::{ServiceBus, TransportKind},
    wiring::{self, Endpoint},
};

use crate::{credentials::LocalAuth, local::LocalRun};

/// What this binary runs itself (`busbar __serve NAME`): the built-in bus, which is part of
/// busbar, not of any app. An app's services are programs of their own.
pub const BUILTIN: &[&str] = &["event-bus"];

#[derive(Debug, Clone)]
pub struct Options {
    pub spec_path: PathBuf,
    pub data_dir: PathBuf,
    pub bus_port: u16,
    /// Database URL per process; `{name}` becomes the service name with `-` as `_`.
    /// `None`: a SQLite file per process in `data_dir`.
    pub database_url_template: Option<String>,
    /// Overrides the spec's transport.
    pub transport: Option<TransportKind>,
    /// NATS for the jetstream transport; default: the spec's URL, else nats://127.0.0.1:4222.
    pub nats_url: Option<String>,
    /// The built-in bus's key: the bus checks tokens and each service gets its own.
    /// `None`: an open bus (anyone on this machine may publish anything).
    pub auth: Option<LocalAuth>,
    /// Each process's `BUSBAR_WORKER_THREADS` (see [`worker_threads`]); a local-run
    /// declaration's environment may still set its own.
    pub worker_threads: String,
}

/// The async worker threads each process gets when they all share this machine:
/// `BUSBAR_WORKER_THREADS` if set, else 1. One per process, not one per CPU in each of
/// them, because the processes already keep the CPUs busy between them, and every extra
/// worker adds hand-offs between threads (measured in BENCHMARKS.md: "Fewer round trips and
/// one worker thread").
pub fn worker_threads() -> String {
    std::env::var("BUSBAR_WORKER_THREADS").unwrap_or_else(|_| "1".into())
}

#[derive(Debug, Clone, PartialEq)]
pub enum Program {
    /// Run by this binary: `busbar __serve <name>`.
    Builtin(String),
    /// A program named after the service, found next to `busbar` or on PATH.
    External(PathBuf),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Proc {
    pub name: String,
    pub program: Program,
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub port: u16,
    pub publishes: Vec<String>,
    pub subscribes: Vec<String>,
}

impl Proc {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

/// The bus first, then the services in spec order, each run as `local` declares (see
/// [`crate::local`]). Every problem is reported at once.
pub fn plan(
    bus: &ServiceBus,
    opts: &Options,
    local: &LocalRun,
    find: impl Fn(&str) -> Option<PathBuf>,
) -> Result<Vec<Proc>, Vec<String>> {
    let mut problems: Vec<String> = local
        .unknown_services(bus)
        .into_iter()
        .map(|n| format!("{} declares service {n}, which the manifest does not have", crate::local::FILE))
        .collect();
    let transport = opts.transport.unwrap_or(bus.spec.transport.kind());
    let sqlite = |name: &str| match &opts.database_url_template {
        Some(t) => t.replace("{name}", &name.replace('-', "_")),
        None => format!("sqlite://{}", opts.data_dir.join(format!("{name}.db")).display()),
    };
    let endpoint = Endpoint {
        kind: transport,
        url: match transport {
            TransportKind::Builtin => format!("http://127.0.0.1:{}", opts.bus_port),
            TransportKind::JetStream => opts
                .nats_url
                .clone()
                .or_else(|| bus.spec.transport.jetstream.as_ref().map(|j| j.url.clone()))
                .unwrap_or_else(|| "nats://127.0.0.1:4222".into()),
        },
    };
    let mut procs = vec![];
    // Each service gets its token on both transports: the built-in bus checks it, and on
    // JetStream it is the service's NATS password (`busbar nats-auth` prints the users a
    // server needs; a server without authorization ignores it).
    let auth = opts.auth.as_ref();
    if transport == TransportKind::Builtin {
        let mut args = vec![
            "--listen".into(),
            format!("127.0.0.1:{}", opts.bus_port),
            "--database-url".into(),
            sqlite("event-bus"),
            "--routes".into(),
            path_str(&opts.spec_path),
            "--endpoint-template".into(),
            "http://127.0.0.1:{port}/events".into(),
        ];
        if let Some(a) = auth {
            args.extend(["--auth-key-file".into(), path_str(&a.key_file)]);
        }
        procs.push(Proc {
            name: "event-bus".into(),
            program: Program::Builtin("event-bus".into()),
            args,
            // Traces name each process, even when OTEL_SERVICE_NAME is set for `busbar up`.
            env: vec![
                ("BUSBAR_WORKER_THREADS".into(), opts.worker_threads.clone()),
                ("OTEL_SERVICE_NAME".into(), "event-bus".into()),
            ],
            port: opts.bus_port,
            publishes: vec![],
            subscribes: vec![],
        });
    }
    for s in &bus.spec.services {
        let declared = local.service(&s.name);
        let Some(port) = declared.and_then(|l| l.port).or(s.port) else {
            problems.push(format!("service {} has no `port` in the spec; busbar up needs one to run it", s.name));
            continue;
        };
        if let Some(other) = procs.iter().find(|p| p.port == port) {
            problems.push(format!("services {} and {} both use port {port}", other.name, s.name));
            continue;
        }
        let (program, args) = match program(s, local, &find) {
            Ok(p) => p,
            Err(e) => {
                problems.push(e);
                continue;
            }
        };
        procs.push(Proc {
            name: s.name.clone(),
            program,
            args,
            // The worker threads, then the declaration's environment (which may set its
            // own), then busbar's wiring, which wins on a clash.
            env: [("BUSBAR_WORKER_THREADS".to_owned(), opts.worker_threads.clone())]
                .into_iter()
                .chain(declared.into_iter().flat_map(|l| l.env.iter().map(|(k, v)| (k.clone(), v.clone()))))
                .chain([
                    ("HOST".into(), "127.0.0.1".into()),
                    ("PORT".into(), port.to_string()),
                    ("DATABASE_URL".into(), sqlite(&s.name)),
                    ("OTEL_SERVICE_NAME".into(), s.name.clone()),
                ])
                .chain(wiring::service_env(&bus.name, &bus.spec, s, &endpoint))
                .chain(auth.map(|a| (wiring::TOKEN_ENV.to_owned(), a.key.token(&s.name))))
                .collect(),
            port,
            publishes: s.publishes.clone(),
            subscribes: s.subscribed_types().into_iter().map(str::to_owned).collect(),
        });
    }
    if problems.is_empty() { Ok(procs) } else { Err(problems) }
}

/// How a service runs: its command in the local-run declaration, else the program named
/// after it (see [`LocalRun::command`]).
pub fn program(
    s: &busbar::spec::ServiceSpec,
    local: &LocalRun,
    find: impl Fn(&str) -> Option<PathBuf>,
) -> Result<(Program, Vec<String>), String> {
    let (path, args) = local.command(s, find)?;
    Ok((Program::External(path), args))
}

fn path_str(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use busbar::spec::parse_manifest;

    const BLOG: &str = include_str!("../../../k8s/base/servicebus.yaml");

    fn opts() -> Options {
        Options {
            spec_path: "sb.yaml".into(),
            data_dir: "/d".into(),
            bus_port: 4005,
            database_url_template: None,
            transport: None,
            nats_url: None,
            auth: None,
            worker_threads: "1".into(),
        }
    }

    #[test]
    fn a_url_template_gives_each_process_its_own_database() {
        let bus = parse_manifest(BLOG).unwrap();
        let o = Options { database_url_template: Some("postgres://u@h/blog_{name}".into()), ..opts() };
        let procs = plan(&bus, &o, &LocalRun::default(), bin).unwrap();
        assert!(procs[0].args.contains(&"postgres://u@h/blog_event_bus".to_owned()));
        assert!(procs[4].env.contains(&("DATABASE_URL".into(), "postgres://u@h/blog_query".into())));
    }

    /// Every program found in /bin.
    fn bin(name: &str) -> Option<PathBuf> {
        Some(PathBuf::from(format!("/bin/{name}")))
    }

    #[test]
    fn the_blog_runs_its_programs_wired_to_the_local_bus() {
        let bus = parse_manifest(BLOG).unwrap();
        let procs = plan(&bus, &opts(), &LocalRun::default(), bin).unwrap();
        let names: Vec<&str> = procs.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["event-bus", "posts", "comments", "moderation", "query"]);
        assert!(procs[0].args.windows(2).any(|w| w == ["--database-url", "sqlite:///d/event-bus.db"]));
        let comments = &procs[2];
        assert_eq!(procs[0].program, Program::Builtin("event-bus".into()), "the bus is part of busbar");
        assert_eq!(comments.program, Program::External("/bin/comments".into()));
        assert_eq!(comments.port, 4001);
        let env: std::collections::HashMap<_, _> = comments.env.iter().cloned().collect();
        assert_eq!(env["BUSBAR_URL"], "http://127.0.0.1:4005");
        assert_eq!(env["DATABASE_URL"], "sqlite:///d/comments.db");
        assert_eq!(env["BUSBAR_SERVICE"], "comments");
        assert_eq!(comments.subscribes, ["CommentModerated", "PostCreated"]);
    }

    #[test]
    fn with_a_key_the_bus_checks_tokens_and_each_service_gets_its_own() {
        let bus = parse_manifest(BLOG).unwrap();
        let key = busbar::credentials::BusKey::generate();
        let o = Options { auth: Some(LocalAuth { key: key.clone(), key_file: "/d/bus.key".into() }), ..opts() };
        let procs = plan(&bus, &o, &LocalRun::default(), bin).unwrap();
        assert!(procs[0].args.windows(2).any(|w| w == ["--auth-key-file", "/d/bus.key"]));
        for p in &procs[1..] {
            let token = p.env.iter().find(|(k, _)| k == "BUSBAR_TOKEN").map(|(_, v)| v.as_str());
            assert_eq!(token.and_then(|t| key.verify(t)).as_deref(), Some(p.name.as_str()));
        }
        // JetStream: no bus process; the token is the service's NATS password.
        let js = Options { transport: Some(TransportKind::JetStream), ..o };
        let procs = plan(&bus, &js, &LocalRun::default(), bin).unwrap();
        assert!(procs.iter().all(|p| p.env.iter().any(|(k, v)| k == "BUSBAR_TOKEN" && key.verify(v).is_some())));
    }

    #[test]
    fn problems_are_all_reported() {
        let bus = parse_manifest(
            "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nspec:\n  transport: {jetstream: {url: 'nats://x:4222'}}\n  services: [{name: nop}, {name: billing, port: 4005}, {name: shipping, port: 5000}]\n",
        )
        .unwrap();
        let find = |n: &str| Some(PathBuf::from(format!("/bin/{n}")));
        let problems = plan(&bus, &opts(), &LocalRun::default(), find).unwrap_err();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("nop has no `port`"));
        // On the built-in bus, its port is taken too.
        let builtin = Options { transport: Some(TransportKind::Builtin), ..opts() };
        let problems = plan(&bus, &builtin, &LocalRun::default(), find).unwrap_err();
        assert!(problems[1].contains("event-bus and billing both use port 4005"), "{problems:?}");
    }

    #[test]
    fn on_jetstream_there_is_no_bus_process_and_services_get_the_nats_wiring() {
        let bus = parse_manifest(BLOG).unwrap();
        let o = Options {
            transport: Some(TransportKind::JetStream),
            nats_url: Some("nats://127.0.0.1:5222".into()),
            ..opts()
        };
        let procs = plan(&bus, &o, &LocalRun::default(), bin).unwrap();
        assert!(procs.iter().all(|p| p.name != "event-bus"));
        let env: std::collections::HashMap<_, _> = procs[3].env.iter().cloned().collect();
        assert_eq!(procs[3].name, "query");
        assert_eq!(env["BUSBAR_TRANSPORT"], "jetstream");
        assert_eq!(env["BUSBAR_URL"], "nats://127.0.0.1:5222");
        assert_eq!(env["BUSBAR_BUS"], "blog");
        assert_eq!(env["BUSBAR_SUBSCRIBES"], "CommentCreated,CommentUpdated,PostCreated");
        assert_eq!((env["BUSBAR_MAX_DELIVER"].as_str(), env["BUSBAR_BACKOFF"].as_str()), ("10", "1s,5s,30s"));
    }

    #[test]
    fn unknown_services_need_a_program() {
        let bus = parse_manifest(
            "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nspec: {services: [{name: billing, port: 5000}]}\n",
        )
        .unwrap();
        let problems = plan(&bus, &opts(), &LocalRun::default(), |_| None).unwrap_err();
        assert!(problems[0].contains("no program for service billing"), "{problems:?}");
        let procs = plan(&bus, &opts(), &LocalRun::default(), |_| Some("/opt/billing".into())).unwrap();
        assert_eq!(procs[1].program, Program::External("/opt/billing".into()));
    }

    #[test]
    fn the_shop_runs_as_its_local_declaration_says() {
        let bus = parse_manifest(include_str!("../../../k8s/shop/servicebus.yaml")).unwrap();
        let mut local =
            LocalRun::parse(include_str!("../../../k8s/shop/busbar.local.yaml"), Path::new("/repo/k8s/shop")).unwrap();
        let orders = local.services.get_mut("orders").unwrap();
        orders.env.insert("RUST_LOG".into(), "debug".into());
        orders.env.insert("PORT".into(), "1".into());
        orders.port = Some(5102);
        let procs = plan(&bus, &opts(), &local, |n| Some(PathBuf::from(format!("/target/debug/{n}")))).unwrap();
        let names: Vec<&str> = procs.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["event-bus", "users", "products", "orders", "user-products"]);
        let orders = &procs[3];
        assert_eq!(orders.program, Program::External("/target/debug/orders".into()));
        assert_eq!(orders.port, 5102, "the declaration's port wins on this machine");
        let env: std::collections::HashMap<_, _> = orders.env.iter().cloned().collect();
        assert_eq!((env["RUST_LOG"].as_str(), env["PORT"].as_str()), ("debug", "5102"), "busbar's wiring wins");
        assert_eq!(env["DATABASE_URL"], "sqlite:///d/orders.db");
        assert_eq!(procs[4].subscribes.len(), 6);
    }

    #[test]
    fn each_process_gets_the_worker_threads_unless_its_declaration_sets_its_own() {
        let bus = parse_manifest(include_str!("../../../k8s/shop/servicebus.yaml")).unwrap();
        let mut local =
            LocalRun::parse(include_str!("../../../k8s/shop/busbar.local.yaml"), Path::new("/repo/k8s/shop")).unwrap();
        local.services.get_mut("orders").unwrap().env.insert("BUSBAR_WORKER_THREADS".into(), "3".into());
        let o = Options { worker_threads: "2".into(), ..opts() };
        let procs = plan(&bus, &o, &local, |n| Some(PathBuf::from(format!("/target/debug/{n}")))).unwrap();
        for p in &procs {
            // The last setting of a name is the one the process sees.
            let env: std::collections::HashMap<_, _> = p.env.iter().cloned().collect();
            let want = if p.name == "orders" { "3" } else { "2" };
            assert_eq!(env["BUSBAR_WORKER_THREADS"], want, "{}", p.name);
        }
    }
}
