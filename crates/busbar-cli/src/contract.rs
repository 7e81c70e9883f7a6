//! `busbar contract lock|check`: the event contracts of a ServiceBus. The contracts come
//! from the services themselves (`<program> --contract`, run the way `busbar up` runs it)
//! or from a lock file; the rules are `busbar::contracts`, the same the operator applies.

use std::{
    collections::BTreeMap,
    io::Read,
    path::{Path, PathBuf},
    process::{Command, ExitCode, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use busbar::{
    contracts::{CONTRACT_FLAG, Change, EdgeVerdict, Lock, PrintedContract, Report, ServiceContract, check, evolution},
    spec::ServiceBus,
};
use busbar_cli::{
    local::LocalRun,
    plan::{self, Program},
};
use clap::{Args, Subcommand};
use serde_json::{Value, json};

/// How long a service has to print its contract: it opens nothing, so this is generous.
const PRINT_TIMEOUT: Duration = Duration::from_secs(30);
/// The lock's file name, beside the manifest, when `-o`/`--against` name none.
pub const LOCK_FILE: &str = "contracts.lock.json";

#[derive(Args)]
pub struct ContractArgs {
    #[command(subcommand)]
    cmd: ContractCmd,
}

#[derive(Subcommand)]
enum ContractCmd {
    /// Write the contracts of every service of a ServiceBus to a lock file.
    ///
    /// Each service prints its own contract (`<program> --contract`): the writer schema of
    /// every type it publishes and the reader schema of every type it handles, generated
    /// from its code. The lock holds them by the services' names in the manifest. Commit it:
    /// CI checks changes against it (`busbar contract check --against`), and the operator
    /// reads it from the ConfigMap `<bus>-contracts`.
    Lock {
        /// The ServiceBus manifest. Default: ./servicebus.yaml, else ./k8s/base/servicebus.yaml.
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Where to write the lock. Default: contracts.lock.json beside the manifest.
        #[arg(short = 'o', long = "output")]
        output: Option<PathBuf>,
    },
    /// Check every publisher → subscriber edge, and with --against every change since a lock.
    ///
    /// For each edge of the manifest's graph, the subscriber's reader schema must accept
    /// everything the publisher's writer schema allows: every field the reader requires
    /// exists in the writer, is always present and never null unless the reader takes null,
    /// and has a compatible type (the same kind, an integer range inside the reader's, no
    /// enum value the reader does not know). A reader that refuses unknown fields breaks on
    /// any field it does not list. Fields the reader does not need may change freely.
    ///
    /// With --against, each writer or reader schema that changed since the lock is safe or
    /// breaking: a writer change must still fit every reader (as locked, still running
    /// during a rollout, and as now); a reader change must fit every writer (as locked: the
    /// events already in the log, and as now).
    ///
    /// Prints one line per break, naming the type, the field, the publisher, the subscriber
    /// and why. Exits 0 when everything fits, 1 on any break or breaking change, 2 when
    /// the check could not run.
    Check {
        /// The ServiceBus manifest (same default as `lock`).
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        /// Take the contracts from this lock file instead of running the services.
        #[arg(long, value_name = "LOCK")]
        contracts: Option<PathBuf>,
        /// Classify every change against this lock (e.g. the lock of the main branch).
        #[arg(long, value_name = "LOCK")]
        against: Option<PathBuf>,
        /// Print the result as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(args: ContractArgs) -> ExitCode {
    let result = match args.cmd {
        ContractCmd::Lock { file, output } => lock(file, output),
        ContractCmd::Check { file, contracts, against, json } => check_cmd(file, contracts, against, json),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("busbar: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn lock(file: Option<PathBuf>, output: Option<PathBuf>) -> Result<ExitCode> {
    let (path, bus) = crate::load(file)?;
    let contracts = from_programs(&path, &bus)?;
    let report = check::check(&bus.spec, &contracts);
    let output = output.unwrap_or_else(|| beside(&path, LOCK_FILE));
    let lock = Lock::new(contracts);
    std::fs::write(&output, lock.to_pretty_json()).with_context(|| format!("cannot write {}", output.display()))?;
    println!("wrote the contracts of {} service(s) of {} to {}", lock.services.len(), bus.name, output.display());
    if !report.passes() {
        eprintln!("busbar: warning: the contracts do not all fit; see `busbar contract check -f {}`", path.display());
    }
    Ok(ExitCode::SUCCESS)
}

fn check_cmd(file: Option<PathBuf>, from: Option<PathBuf>, against: Option<PathBuf>, json: bool) -> Result<ExitCode> {
    let (path, bus) = crate::load(file)?;
    let (contracts, source) = match &from {
        Some(f) => (read_lock(f)?.services, format!("contracts from {}", f.display())),
        None => (from_programs(&path, &bus)?, "contracts from the services' programs".to_owned()),
    };
    let report = check::check(&bus.spec, &contracts);
    let changes = match &against {
        Some(l) => Some(evolution::compare(&bus.spec, &read_lock(l)?, &Lock::new(contracts))),
        None => None,
    };
    let passes = report.passes() && changes.iter().flatten().all(Change::safe);
    if json {
        println!("{}", serde_json::to_string_pretty(&as_json(&bus, &report, changes.as_deref(), passes))?);
    } else {
        print_text(&bus, &path, &source, &report, changes.as_deref().zip(against.as_deref()));
    }
    Ok(if passes { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

fn beside(manifest: &Path, name: &str) -> PathBuf {
    match manifest.parent().filter(|p| !p.as_os_str().is_empty()) {
        Some(dir) => dir.join(name),
        None => PathBuf::from(name),
    }
}

fn read_lock(path: &Path) -> Result<Lock> {
    let text = std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    Lock::parse(&text).with_context(|| format!("{} is not a contracts lock", path.display()))
}

/// Each service's contract, as its program prints it, run the way `busbar up` runs it: its
/// command from the local-run declaration beside the manifest, or the program named after
/// its Deployment next to busbar or on PATH.
fn from_programs(path: &Path, bus: &ServiceBus) -> Result<BTreeMap<String, ServiceContract>> {
    let exe = std::env::current_exe().context("cannot find the busbar executable")?;
    let exe_dir = exe.parent().map(PathBuf::from);
    let local = LocalRun::load(path, None).map_err(anyhow::Error::msg)?;
    let mut out = BTreeMap::new();
    for s in &bus.spec.services {
        let (program, args) = plan::program(s, &local, |name| crate::find_program(name, exe_dir.as_deref()))
            .map_err(|e| anyhow::anyhow!("{e}; or check a lock with --contracts"))?;
        let mut cmd = match program {
            Program::Builtin(name) => {
                let mut c = Command::new(&exe);
                c.args(["__serve", &name]);
                c
            }
            Program::External(p) => Command::new(p),
        };
        cmd.args(args).arg(CONTRACT_FLAG);
        let printed = print_contract(cmd).with_context(|| format!("cannot get the contract of service {}", s.name))?;
        out.insert(s.name.clone(), printed.into_contract());
    }
    Ok(out)
}

/// Runs `cmd` (which ends with `--contract`) and reads the contract it prints.
fn print_contract(mut cmd: Command) -> Result<PrintedContract> {
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("cannot run {shown}"))?;
    let pid = child.id();
    let (mut stdout, mut stderr) = (child.stdout.take().expect("piped"), child.stderr.take().expect("piped"));
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (mut out, mut err) = (String::new(), String::new());
        let _ = stdout.read_to_string(&mut out);
        let _ = stderr.read_to_string(&mut err);
        let _ = tx.send((out, err));
    });
    let Ok((out, err)) = rx.recv_timeout(PRINT_TIMEOUT) else {
        // SAFETY: kill(2) on the child we spawned and have not waited for yet.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        let _ = child.wait();
        bail!(
            "{shown} printed no contract within {}s; does it start with busbar's Service::start?",
            PRINT_TIMEOUT.as_secs()
        );
    };
    let status = child.wait()?;
    if !status.success() {
        bail!("{shown} failed ({status}): {}", err.trim());
    }
    PrintedContract::parse(&out).with_context(|| {
        format!(
            "{shown} printed something else than a contract (its output began {:?})",
            out.chars().take(80).collect::<String>()
        )
    })
}

fn verdict_name(v: &EdgeVerdict) -> &'static str {
    match v {
        EdgeVerdict::Fits => "fits",
        EdgeVerdict::Breaks(_) => "breaks",
        EdgeVerdict::NoReader => "noReader",
        EdgeVerdict::Unchecked(_) => "unchecked",
    }
}

fn print_text(bus: &ServiceBus, path: &Path, source: &str, report: &Report, changes: Option<(&[Change], &Path)>) {
    println!("ServiceBus {} ({}), {source}", bus.name, path.display());
    let count = |name: &str| report.edges.iter().filter(|e| verdict_name(&e.verdict) == name).count();
    println!(
        "edges: {} in all, {} fit, {} break, {} not read by a handler, {} unchecked",
        report.edges.len(),
        count("fits"),
        count("breaks"),
        count("noReader"),
        count("unchecked")
    );
    for b in report.breaks() {
        println!("break: {b}");
    }
    for p in &report.problems {
        println!("problem: {p}");
    }
    for w in &report.warnings {
        println!("warning: {w}");
    }
    if let Some((changes, lock)) = changes {
        let breaking = changes.iter().filter(|c| !c.safe()).count();
        println!(
            "changes against {}: {} in all, {} safe, {breaking} breaking",
            lock.display(),
            changes.len(),
            changes.len() - breaking
        );
        for c in changes {
            println!("  {c}");
            for b in &c.breaks {
                println!("      {b}");
            }
            for n in &c.notes {
                println!("      {n}");
            }
        }
    }
}

fn as_json(bus: &ServiceBus, report: &Report, changes: Option<&[Change]>, passes: bool) -> Value {
    let edges: Vec<Value> = report
        .edges
        .iter()
        .map(|e| {
            let mut v = json!({
                "publisher": e.edge.publisher,
                "type": e.edge.event_type,
                "subscriber": e.edge.subscriber,
                "verdict": verdict_name(&e.verdict),
            });
            match &e.verdict {
                EdgeVerdict::Breaks(ms) => {
                    v["breaks"] = ms
                        .iter()
                        .map(|m| json!({"field": m.path, "reason": m.reason.explain(&e.edge.publisher, &e.edge.subscriber)}))
                        .collect();
                }
                EdgeVerdict::Unchecked(why) => v["why"] = json!(why),
                EdgeVerdict::Fits | EdgeVerdict::NoReader => {}
            }
            v
        })
        .collect();
    let breaks: Vec<Value> = report
        .breaks()
        .iter()
        .map(|b| {
            json!({"publisher": b.publisher, "type": b.event_type, "subscriber": b.subscriber,
                   "field": b.field, "reason": b.reason, "line": b.to_string()})
        })
        .collect();
    let mut out = json!({
        "bus": bus.name,
        "passes": passes,
        "edges": edges,
        "breaks": breaks,
        "problems": report.problems,
        "warnings": report.warnings,
    });
    if let Some(changes) = changes {
        out["changes"] = changes
            .iter()
            .map(|c| {
                json!({
                    "service": c.service, "role": c.role.as_str(), "type": c.event_type, "change": c.kind.as_str(),
                    "safe": c.safe(), "details": c.details,
                    "breaks": c.breaks.iter().map(ToString::to_string).collect::<Vec<_>>(), "notes": c.notes,
                })
            })
            .collect();
    }
    out
}
