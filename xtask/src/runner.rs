//! Runs the workspace's test binaries a few at a time instead of one after another.
//!
//! `cargo test` runs each test binary to completion before starting the next, and most of
//! this suite's time is spent waiting (on child processes starting, on retries, on
//! backoff), not computing, so one binary at a time leaves the machine idle. Here cargo
//! only builds (`--no-run`); the binaries then run `jobs` at a time, longest first by the
//! durations the previous run recorded, each with the working directory and environment
//! `cargo test` would give it. Every binary's output is printed whole when it finishes,
//! so the log reads like cargo's. Tests keep out of each other's way across processes:
//! ports are claimed through `testkit::free_port`, databases and streams have unique names.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

/// One test binary cargo built.
#[derive(Debug, Clone, PartialEq)]
pub struct TestBinary {
    /// `package/target`, e.g. `busbar-cli/faults`, or `query/query (bin)` for unit tests.
    pub name: String,
    pub package: String,
    pub executable: PathBuf,
    /// The package's directory, where `cargo test` runs it.
    pub dir: PathBuf,
}

/// The test binaries in `cargo test --no-run --message-format=json` output.
pub fn test_binaries(cargo_json: &str) -> Vec<TestBinary> {
    let mut out = vec![];
    for line in cargo_json.lines() {
        let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else { continue };
        if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
            continue;
        }
        let (Some(exe), Some(manifest), Some(target)) =
            (v["executable"].as_str(), v["manifest_path"].as_str(), v["target"]["name"].as_str())
        else {
            continue;
        };
        let dir = Path::new(manifest).parent().map(Path::to_path_buf).unwrap_or_default();
        let package = package_name(v["package_id"].as_str().unwrap_or_default(), &dir);
        // Integration tests by their file name; a crate's own unit tests by their kind, since
        // a package's library and binary often share its name.
        let name = match v["target"]["kind"][0].as_str() {
            Some("test") | None => format!("{package}/{target}"),
            Some(kind) => format!("{package}/{target} ({kind})"),
        };
        out.push(TestBinary { name, package, executable: exe.into(), dir });
    }
    out
}

/// A package's name from its cargo package id: `path+file:///dir#name@0.1.0`, or
/// `path+file:///dir/name#0.1.0` when the name is the directory's.
fn package_name(id: &str, dir: &Path) -> String {
    match id.rsplit_once('#') {
        Some((_, frag)) if frag.contains('@') => frag.split('@').next().unwrap_or(frag).to_owned(),
        _ => dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default(),
    }
}

/// Longest first by the last recorded durations (unknown ones first of all: they may be
/// long), so that the run does not end waiting on one long binary started last.
pub fn schedule(mut bins: Vec<TestBinary>, last: &HashMap<String, f64>) -> Vec<TestBinary> {
    bins.sort_by(|a, b| {
        let t = |x: &TestBinary| last.get(&x.name).copied().unwrap_or(f64::INFINITY);
        t(b).total_cmp(&t(a)).then_with(|| a.name.cmp(&b.name))
    });
    bins
}

/// What a finished binary did.
pub struct Outcome {
    pub name: String,
    pub ok: bool,
    pub took: Duration,
}

/// Runs `bins` with `jobs` at a time, passing `args` to each; prints each one's output when
/// it finishes. Returns the outcomes in finishing order.
pub fn run_all(bins: Vec<TestBinary>, args: &[String], jobs: usize) -> Vec<Outcome> {
    let queue = Arc::new(Mutex::new(bins.into_iter().collect::<std::collections::VecDeque<_>>()));
    let outcomes = Arc::new(Mutex::new(vec![]));
    let print = Arc::new(Mutex::new(()));
    let workers: Vec<_> = (0..jobs.max(1))
        .map(|_| {
            let (queue, outcomes, print, args) = (queue.clone(), outcomes.clone(), print.clone(), args.to_vec());
            std::thread::spawn(move || {
                while let Some(bin) = queue.lock().expect("queue").pop_front() {
                    let started = Instant::now();
                    let out = Command::new(&bin.executable)
                        .args(&args)
                        .current_dir(&bin.dir)
                        .env("CARGO_MANIFEST_DIR", &bin.dir)
                        .env("CARGO_PKG_NAME", &bin.package)
                        .output();
                    let took = started.elapsed();
                    let ok = matches!(&out, Ok(o) if o.status.success());
                    {
                        let _guard = print.lock().expect("print");
                        println!("\n     Running {} ({})", bin.name, bin.executable.display());
                        match &out {
                            Ok(o) => {
                                print!("{}", String::from_utf8_lossy(&o.stdout));
                                eprint!("{}", String::from_utf8_lossy(&o.stderr));
                                if !o.status.success() {
                                    println!("{}: FAILED ({}) after {:.1} s", bin.name, o.status, took.as_secs_f64());
                                }
                            }
                            Err(e) => println!("{}: could not start {}: {e}", bin.name, bin.executable.display()),
                        }
                    }
                    outcomes.lock().expect("outcomes").push(Outcome { name: bin.name, ok, took });
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    Arc::try_unwrap(outcomes).map(|m| m.into_inner().expect("outcomes")).unwrap_or_default()
}

/// Durations recorded by the last run, by binary name (empty when there is none).
pub fn load_times(path: &Path) -> HashMap<String, f64> {
    std::fs::read_to_string(path).ok().and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default()
}

/// Records this run's durations for the next one's schedule, keeping binaries it did not run.
pub fn save_times(path: &Path, outcomes: &[Outcome]) {
    let mut times = load_times(path);
    for o in outcomes {
        times.insert(o.name.clone(), o.took.as_secs_f64());
    }
    if let Ok(s) = serde_json::to_string_pretty(&times) {
        let _ = std::fs::write(path, s);
    }
}

/// Builds the test binaries with cargo (`cargo_args` select them) and lists them.
pub fn build(cargo: &str, cargo_args: &[String], workspace: bool) -> Result<Vec<TestBinary>> {
    let out = crate::cargo_command(cargo)
        .args(["test", "--no-run", "--message-format=json-render-diagnostics"])
        .args(if workspace { Some("--workspace") } else { None })
        .args(cargo_args)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running cargo test --no-run")?;
    if !out.status.success() {
        bail!("building the tests failed");
    }
    Ok(test_binaries(&String::from_utf8_lossy(&out.stdout)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const JSON: &str = r#"{"reason":"compiler-artifact","package_id":"path+file:///w/crates/busbar-cli#0.1.0","manifest_path":"/w/crates/busbar-cli/Cargo.toml","target":{"name":"faults","kind":["test"]},"profile":{"test":true},"executable":"/w/target/debug/deps/faults-1"}
{"reason":"compiler-artifact","package_id":"path+file:///w/services/blog/posts#0.1.0","manifest_path":"/w/services/blog/posts/Cargo.toml","target":{"name":"posts","kind":["bin"]},"profile":{"test":false},"executable":"/w/target/debug/posts"}
{"reason":"compiler-artifact","package_id":"path+file:///w/operator#busbar-operator@0.1.0","manifest_path":"/w/operator/Cargo.toml","target":{"name":"busbar_operator","kind":["lib"]},"profile":{"test":true},"executable":"/w/target/debug/deps/busbar_operator-2"}
{"reason":"compiler-artifact","package_id":"registry+https://x#serde@1.0.0","manifest_path":"/r/serde/Cargo.toml","target":{"name":"serde","kind":["lib"]},"profile":{"test":false},"executable":null}
{"reason":"build-finished","success":true}"#;

    #[test]
    fn lists_only_test_executables_with_their_package_and_directory() {
        let bins = test_binaries(JSON);
        assert_eq!(
            bins,
            [
                TestBinary {
                    name: "busbar-cli/faults".into(),
                    package: "busbar-cli".into(),
                    executable: "/w/target/debug/deps/faults-1".into(),
                    dir: "/w/crates/busbar-cli".into(),
                },
                TestBinary {
                    name: "busbar-operator/busbar_operator (lib)".into(),
                    package: "busbar-operator".into(),
                    executable: "/w/target/debug/deps/busbar_operator-2".into(),
                    dir: "/w/operator".into(),
                },
            ]
        );
    }

    #[test]
    fn the_longest_and_the_unknown_go_first() {
        let bin = |n: &str| TestBinary { name: n.into(), package: "p".into(), executable: n.into(), dir: "/".into() };
        let last = HashMap::from([("a".to_owned(), 5.0), ("b".to_owned(), 90.0), ("c".to_owned(), 20.0)]);
        let order: Vec<String> =
            schedule(vec![bin("a"), bin("b"), bin("c"), bin("new")], &last).into_iter().map(|b| b.name).collect();
        assert_eq!(order, ["new", "b", "c", "a"]);
    }
}
