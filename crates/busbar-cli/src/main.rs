//! The `busbar` command.

mod cluster;
mod contract;
mod dashboard;
mod dlq;
mod status;
mod table;
mod tail;
mod target;
mod up;

use std::{path::PathBuf, process::ExitCode};

use anyhow::{Context, Result, bail};
use busbar_cli::plan;
use clap::{Parser, Subcommand, ValueEnum};

/// busbar: event-driven, database-per-service microservices.
///
/// A ServiceBus manifest declares which services publish and which subscribe to which
/// event types. `busbar up` runs it on this machine with the built-in event bus; in a
/// cluster, the busbar operator wires the same manifest.
#[derive(Parser)]
#[command(name = "busbar", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run every service of a ServiceBus locally, plus the built-in bus.
    ///
    /// Each service runs as its own process with its own SQLite database in the data
    /// directory, wired to the bus by the spec. busbar waits until all are ready, prints
    /// their URLs, streams their logs with a prefix, and stops them all on Ctrl-C. Data
    /// is kept across runs.
    ///
    /// How each service starts comes from the local-run declaration, busbar.local.yaml
    /// beside the manifest (or --local): a `command` per service, optionally `env` and a
    /// `port` for this machine. A service it does not name runs the program named after it,
    /// next to busbar or on PATH (`cargo build` puts the blog's and the shop's there).
    ///
    /// A service that exits is started again after a backoff (1s, 2s, 4s, ... up to 30s,
    /// and back to 1s once it has stayed up for a minute), as a cluster restarts a pod;
    /// --no-restart stops everything instead.
    ///
    /// On the built-in bus each service gets its own token (BUSBAR_TOKEN), derived from a
    /// bus key kept in the data directory (bus.key): it may publish only what the spec
    /// says it publishes, and only the bus may push events to it. The admin token, for
    /// `busbar dlq`, is written to admin.token there.
    Up {
        /// The ServiceBus manifest. Default: ./servicebus.yaml, else ./k8s/base/servicebus.yaml.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Where the databases live.
        #[arg(long, default_value = ".busbar")]
        data_dir: PathBuf,
        /// Port of the built-in bus.
        #[arg(long, default_value_t = 4005)]
        bus_port: u16,
        /// Use these databases instead of SQLite files, e.g.
        /// `postgres://user@host/blog_{name}`; `{name}` is each service's name (and
        /// `event_bus` for the bus). The databases must exist.
        #[arg(long, value_name = "URL")]
        database_url_template: Option<String>,
        /// Carry events on `builtin` (the built-in bus, started by busbar) or `jetstream`
        /// (an existing NATS server). Default: what the spec says.
        #[arg(long, value_enum)]
        transport: Option<TransportArg>,
        /// NATS server for `--transport jetstream`. Default: the spec's URL, else
        /// nats://127.0.0.1:4222.
        #[arg(long, value_name = "URL")]
        nats_url: Option<String>,
        /// How to start each service on this machine. Default: busbar.local.yaml beside
        /// the manifest, if there is one.
        #[arg(long, value_name = "FILE")]
        local: Option<PathBuf>,
        /// Stop everything when a service exits, instead of restarting it.
        #[arg(long)]
        no_restart: bool,
    },
    /// Validate a ServiceBus manifest and print or draw its event graph and warnings.
    ///
    /// Every service is a node and every route (an event type from its publisher to a
    /// subscriber) an edge labelled with the type. In the drawings, a subscription to a type
    /// nobody publishes comes from a dashed "(no publisher)" node and a type nobody
    /// subscribes to goes to a dashed "(no subscriber)" node; the warnings are written in
    /// too. For example `busbar graph --format svg > graph.svg` (busbar lays it out, no
    /// other tool needed), `busbar graph --format dot | dot -Tpng > graph.png` (with
    /// Graphviz), or `busbar graph --format mermaid` into a `mermaid` code block in Markdown.
    ///
    /// `busbar graph --cluster NAME` draws the ServiceBus NAME as a cluster has it (through
    /// the kubeconfig, as kubectl does), every edge labelled with its subscriber's figures
    /// from the ServiceBus's status: events pending and dead letters, e.g.
    /// `CommentCreated · pending 3 · dead 1`.
    Graph {
        /// The ServiceBus manifest (same default as `up`).
        #[arg(short = 'f', long = "file", group = "source")]
        file: Option<PathBuf>,
        /// Read the ServiceBus NAME from the cluster instead of a manifest, with its figures.
        #[arg(long, group = "source", requires = "name")]
        cluster: bool,
        /// The ServiceBus to read with --cluster.
        #[arg(value_name = "NAME", requires = "cluster")]
        name: Option<String>,
        /// Its namespace. Default: the kubeconfig context's, else `default`.
        #[arg(short = 'n', long, requires = "cluster")]
        namespace: Option<String>,
        /// The kubeconfig context to use. Default: the current one.
        #[arg(long, requires = "cluster")]
        context: Option<String>,
        /// What to print.
        #[arg(long, value_enum, default_value_t = GraphFormat::Text)]
        format: GraphFormat,
    },
    /// Event contracts: check that every subscriber can read what its publishers write.
    ///
    /// Events are the only coupling between services, so their schemas are the contract.
    /// `busbar contract lock` writes every service's contract (generated from its code) to
    /// a lock file; `busbar contract check` checks every edge of the graph, and with
    /// --against every change since a lock. See `busbar contract check --help` for the rules.
    Contract(contract::ContractArgs),
    /// List and redrive dead letters, on the built-in bus or JetStream.
    ///
    /// A dead letter is an event a subscriber gave up on after maxDeliver attempts,
    /// kept with the last error. Other events keep flowing meanwhile; later versions of
    /// the same aggregate wait for it. Fix what made the handler fail, then redrive: the
    /// event goes back to that subscriber, which applies it and the versions waiting.
    ///
    /// Talks to the built-in bus (http://127.0.0.1:4005 unless --bus-url), or with
    /// --nats-url and --bus to JetStream. For example `busbar dlq list`, then
    /// `busbar dlq redrive 3 4` or `busbar dlq redrive --all --subscriber query`.
    Dlq(dlq::DlqArgs),
    /// Each subscriber's state: how far it has been delivered, what is pending and for how
    /// long, what it holds parked, its dead letters and its last error.
    ///
    /// DELIVERED is the bus sequence the subscriber has been given everything up to;
    /// PENDING counts the events of its types after that, and OLDEST PENDING is how long
    /// the first of them has waited. PARKED (later versions waiting for an earlier one)
    /// and OLDEST PARKED are what the subscriber last reported, to the built-in bus or on
    /// JetStream to the bus's parked bucket ("-" when it has not reported lately).
    /// RETRIES is the failed attempts at the event it is stuck on (on JetStream, its
    /// redelivered messages).
    ///
    /// Talks to the built-in bus (http://127.0.0.1:4005 unless --bus-url) with the admin
    /// token, or with --nats-url and --bus to JetStream. `--json` prints every field.
    Status(status::StatusArgs),
    /// Follow events as they are published, one readable line each.
    ///
    /// Each line shows when the event happened, its type, the service that published it,
    /// its aggregate and version, its trace id (when it carries a W3C traceparent) and its
    /// data. --json prints each CloudEvent whole, one per line. Filters: --type (repeat
    /// for several), --service (the publisher), --subject (one aggregate, e.g. a post id).
    /// --from-start shows the history first; --count stops after that many events.
    ///
    /// Talks to the built-in bus (http://127.0.0.1:4005 unless --bus-url) with the admin
    /// token, or with --nats-url and --bus to JetStream; it keeps watching while the bus
    /// restarts. For example `busbar tail --type CommentModerated` or
    /// `busbar tail --from-start --subject 0190f0a0-... --json`.
    Tail(tail::TailArgs),
    /// Serve the dashboard for a bus on JetStream (the built-in bus serves its own at /).
    ///
    /// The same page as the built-in bus's: the event graph (from -f), each subscriber's
    /// delivered, pending, dead letters and retries refreshing every second, the dead
    /// letters with a Redrive button, and a live tail, all read from JetStream with the
    /// credentials given. It listens on 127.0.0.1:4006 (--listen). For example
    /// `busbar dashboard -f k8s/base/servicebus.yaml --nats-url nats://127.0.0.1:4222 --bus blog`.
    Dashboard(dashboard::DashboardArgs),
    /// Print the NATS users a ServiceBus expects on JetStream, for the server's config.
    ///
    /// One user per service, named after it, whose password is its busbar token (the
    /// BUSBAR_TOKEN `busbar up` or the operator gives it), allowed to publish only the
    /// types it `publishes` and to pull only through its own durable consumer; plus the
    /// admin user `_admin` for the operator and `busbar dlq`. Tokens come from the bus key
    /// in the data directory (created if missing), as for `busbar up`. Write the output
    /// to a file only the server can read and `include` it in nats-server.conf. In a
    /// cluster the operator keeps the same block in the Secret `<bus>-nats-auth`.
    NatsAuth {
        /// The ServiceBus manifest (same default as `up`).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Where the bus key lives.
        #[arg(long, default_value = ".busbar")]
        data_dir: PathBuf,
    },
    /// Run the built-in event bus in this process (used by `busbar up`).
    #[command(name = "__serve", hide = true)]
    Serve {
        name: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<std::ffi::OsString>,
    },
}

/// How `busbar graph` prints the graph.
#[derive(Clone, Copy, ValueEnum)]
enum GraphFormat {
    /// One line per route, then the warnings.
    Text,
    /// Mermaid `flowchart LR` source, for Markdown that renders Mermaid (GitHub, GitLab)
    /// or mermaid.live.
    Mermaid,
    /// Graphviz `digraph` source: pipe it to `dot -Tpng` or `dot -Tsvg`.
    Dot,
    /// An SVG image laid out by busbar itself, no Graphviz needed: open it in a browser.
    Svg,
}

#[derive(Clone, Copy, ValueEnum)]
enum TransportArg {
    Builtin,
    Jetstream,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Serve { name, args } => return serve(&name, args),
        Cmd::Contract(args) => return contract::run(args),
        Cmd::Up { file, data_dir, bus_port, database_url_template, transport, nats_url, local, no_restart } => {
            let transport = transport.map(|t| match t {
                TransportArg::Builtin => busbar::spec::TransportKind::Builtin,
                TransportArg::Jetstream => busbar::spec::TransportKind::JetStream,
            });
            let opts = plan::Options {
                spec_path: PathBuf::new(),
                data_dir,
                bus_port,
                database_url_template,
                transport,
                nats_url,
                auth: None,
                worker_threads: plan::worker_threads(),
            };
            up(file, local, opts, up::Restart { enabled: !no_restart })
        }
        Cmd::Graph { file, cluster: false, format, .. } => graph(file, format),
        Cmd::Graph { name, namespace, context, format, .. } => {
            let name = name.expect("clap requires NAME with --cluster");
            graph_cluster(&name, namespace.as_deref(), context.as_deref(), format)
        }
        Cmd::Dlq(args) => dlq::run(args),
        Cmd::Status(args) => status::run(args),
        Cmd::Tail(args) => tail::run(args),
        Cmd::Dashboard(args) => dashboard::run(args),
        Cmd::NatsAuth { file, data_dir } => nats_auth(file, data_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("busbar: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(name: &str, args: Vec<std::ffi::OsString>) -> ExitCode {
    match name {
        "event-bus" => event_bus::main_with_args(std::iter::once("event-bus".into()).chain(args)),
        other => {
            eprintln!(
                "busbar: `{other}` is not built in (only {} is); an app's services are programs of their own",
                plan::BUILTIN.join(", ")
            );
            ExitCode::from(2)
        }
    }
}

fn spec_path(file: Option<PathBuf>) -> Result<PathBuf> {
    if let Some(f) = file {
        return Ok(f);
    }
    let candidates = [PathBuf::from("servicebus.yaml"), PathBuf::from("k8s/base/servicebus.yaml")];
    match candidates.iter().find(|p| p.exists()) {
        Some(p) => Ok(p.clone()),
        None => bail!(
            "no ServiceBus manifest found (looked for ./servicebus.yaml and ./k8s/base/servicebus.yaml); pass one with -f"
        ),
    }
}

fn load(file: Option<PathBuf>) -> Result<(PathBuf, busbar::spec::ServiceBus)> {
    let path = spec_path(file)?;
    let bus = busbar::spec::load_manifest(&path).map_err(anyhow::Error::msg)?;
    Ok((path, bus))
}

fn graph(file: Option<PathBuf>, format: GraphFormat) -> Result<()> {
    let (path, bus) = load(file)?;
    draw(&bus.name, &path.display().to_string(), &bus.spec, Default::default(), format)
}

fn graph_cluster(name: &str, namespace: Option<&str>, context: Option<&str>, format: GraphFormat) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let bus = rt.block_on(cluster::read(name, namespace, context))?;
    let source = format!("namespace {}", bus.namespace);
    draw(&bus.name, &source, &bus.spec, bus.figures, format)
}

/// Prints the graph of `spec` in `format`; `source` says where it comes from (in the text),
/// `figures` are each subscriber's, from a live bus.
fn draw(
    name: &str,
    source: &str,
    spec: &busbar::spec::ServiceBusSpec,
    figures: std::collections::BTreeMap<String, busbar::graph::render::Figures>,
    format: GraphFormat,
) -> Result<()> {
    use busbar::graph::render;
    let g = busbar::graph::analyze(spec);
    let drawing = || render::Drawing::new(name, spec, &g).with_figures(figures.clone());
    match format {
        GraphFormat::Text => {}
        GraphFormat::Mermaid => return print_all(&render::mermaid(&drawing())),
        GraphFormat::Dot => return print_all(&render::dot(&drawing())),
        GraphFormat::Svg => return print_all(&render::svg(&drawing())),
    }
    println!("ServiceBus {name} ({source}): {} services, {} routes", spec.services.len(), g.edges.len());
    for e in &g.edges {
        let f = figures.get(&e.subscriber).map(|f| f.suffix()).unwrap_or_default();
        println!("  {} --{}--> {}{f}", e.publisher, e.event_type, e.subscriber);
    }
    for w in &g.warnings {
        println!("warning: {w}");
    }
    Ok(())
}

/// Writes `text` to stdout; a closed pipe (`| head`) is not an error worth a panic.
fn print_all(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(e.into()),
        _ => Ok(()),
    }
}

fn nats_auth(file: Option<PathBuf>, data_dir: PathBuf) -> Result<()> {
    let (_, bus) = load(file)?;
    std::fs::create_dir_all(&data_dir)
        .with_context(|| format!("cannot create data directory {}", data_dir.display()))?;
    let auth = busbar_cli::credentials::ensure(&data_dir)?;
    print!("{}", busbar::nats_auth::authorization_block(&bus.name, &bus.spec, &auth.key));
    Ok(())
}

fn up(file: Option<PathBuf>, local: Option<PathBuf>, mut opts: plan::Options, restart: up::Restart) -> Result<()> {
    let (path, bus) = load(file)?;
    let local = busbar_cli::local::LocalRun::load(&path, local.as_deref()).map_err(anyhow::Error::msg)?;
    for w in busbar::graph::analyze(&bus.spec).warnings {
        eprintln!("busbar: warning: {w}");
    }
    std::fs::create_dir_all(&opts.data_dir)
        .with_context(|| format!("cannot create data directory {}", opts.data_dir.display()))?;
    // Absolute paths: the children may resolve them from anywhere.
    opts.spec_path = std::fs::canonicalize(&path)?;
    opts.data_dir = std::fs::canonicalize(&opts.data_dir)?;
    opts.auth = Some(busbar_cli::credentials::ensure(&opts.data_dir)?);
    let exe_dir = std::env::current_exe().ok().and_then(|e| e.parent().map(PathBuf::from));
    let procs = plan::plan(&bus, &opts, &local, |name| find_program(name, exe_dir.as_deref()))
        .map_err(|problems| anyhow::anyhow!("cannot run {}:\n  - {}", path.display(), problems.join("\n  - ")))?;
    let rt = tokio::runtime::Runtime::new()?;
    rt.block_on(up::run(procs, restart))
}

fn find_program(name: &str, exe_dir: Option<&std::path::Path>) -> Option<PathBuf> {
    let beside = exe_dir.map(|d| d.join(name)).filter(|p| p.is_file());
    beside.or_else(|| {
        std::env::var_os("PATH")
            .and_then(|paths| std::env::split_paths(&paths).map(|d| d.join(name)).find(|p| p.is_file()))
    })
}
