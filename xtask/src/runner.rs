//! Runs the workspace's test binaries a few at a time instead of one after another.
//!
//! `cargo test` runs each test binary to completion before starting the next, and most of
//! this suite's time is spent waiting (on child processes starting, on retries, on
//! backoff), not computing, so one binary at a time leaves the machine idle. Here cargo
//! only builds (`--no-run`); the binaries then run `jobs` at a time, longest first by the
//! durations the previous run recorded, each with the working directory and environment
//! `cargo test` would give it. A binary that alone would take longer than the rest of the
//! run is split into shards, each a process running a share of its tests by exact name,
//! so that it does not hold the run up on its own. Every binary's output is printed whole
//! when it finishes, so the log reads like cargo's. Tests keep out of each other's way across processes:
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
    /// When the binary runs in shards: this shard's tests (exact names) and which shard
    /// of how many it is.
    pub shard: Option<Shard>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Shard {
    pub tests: Vec<String>,
    pub index: usize,
    pub of: usize,
}

impl TestBinary {
    /// The name the run prints: with the shard, e.g. `busbar-conformance/delivery_shapes [2/3]`.
    pub fn label(&self) -> String {
        match &self.shard {
            Some(s) => format!("{} [{}/{}]", self.name, s.index, s.of),
            None => self.name.clone(),
        }
    }
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
        out.push(TestBinary { name, package, executable: exe.into(), dir, shard: None });
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
        let t = |x: &TestBinary| {
            let whole = last.get(&x.name).copied().unwrap_or(f64::INFINITY);
            x.shard.as_ref().map_or(whole, |s| whole / s.of as f64)
        };
        t(b).total_cmp(&t(a)).then_with(|| a.label().cmp(&b.label()))
    });
    bins
}

/// How many shards a binary that took `took` seconds last time should run in, when the
/// whole run took `total` seconds of binaries over `jobs` slots: enough that no shard is
/// much longer than a quarter of a slot's fair share, at most two per slot.
pub fn shard_count(took: f64, total: f64, jobs: usize) -> usize {
    let jobs = jobs.max(1);
    if jobs == 1 || total <= 0.0 {
        return 1;
    }
    let chunk = total / (2 * jobs) as f64;
    ((took / chunk).ceil() as usize).clamp(1, 2 * jobs)
}

/// Deals `tests` (sorted first, so similar names spread across shards) into `n` shards.
pub fn deal(mut tests: Vec<String>, n: usize) -> Vec<Vec<String>> {
    tests.sort();
    let mut shards = vec![vec![]; n.max(1)];
    for (i, t) in tests.into_iter().enumerate() {
        shards[i % n.max(1)].push(t);
    }
    shards.retain(|s| !s.is_empty());
    shards
}

/// Splits the binaries that would hold the run up on their own into shards (see
/// [`shard_count`]), by listing their tests. A binary whose tests cannot be listed runs
/// whole.
pub fn split_long(bins: Vec<TestBinary>, last: &HashMap<String, f64>, jobs: usize) -> Vec<TestBinary> {
    let total: f64 = bins.iter().filter_map(|b| last.get(&b.name)).sum();
    let mut out = vec![];
    for bin in bins {
        let n = last.get(&bin.name).map_or(1, |&t| shard_count(t, total, jobs));
        let tests = if n > 1 { list_tests(&bin) } else { None };
        match tests.map(|t| deal(t, n)) {
            Some(shards) if shards.len() > 1 => {
                let of = shards.len();
                out.extend(
                    shards
                        .into_iter()
                        .enumerate()
                        .map(|(i, tests)| TestBinary { shard: Some(Shard { tests, index: i + 1, of }), ..bin.clone() }),
                );
            }
            _ => out.push(bin),
        }
    }
    out
}

/// The binary's tests, by asking it (`--list --format terse`: `name: test` lines).
fn list_tests(bin: &TestBinary) -> Option<Vec<String>> {
    let out = Command::new(&bin.executable)
        .args(["--list", "--format", "terse"])
        .current_dir(&bin.dir)
        .output()
        .ok()
        .filter(|o| o.status.success())?;
    Some(parse_list(&String::from_utf8_lossy(&out.stdout)))
}

/// The test names in libtest's terse list.
fn parse_list(text: &str) -> Vec<String> {
    text.lines().filter_map(|l| l.strip_suffix(": test")).map(str::to_owned).collect()
}

/// What a finished binary did.
pub struct Outcome {
    /// The binary's name; its shards share it.
    pub name: String,
    /// The name with the shard, as printed.
    pub label: String,
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
                loop {
                    // The queue's lock is let go before the binary runs (a `while let` on the
                    // lock would hold it for the whole loop body, one binary at a time).
                    let next = queue.lock().expect("queue").pop_front();
                    let Some(bin) = next else { break };
                    let started = Instant::now();
                    let mut cmd = Command::new(&bin.executable);
                    cmd.args(&args);
                    if let Some(shard) = &bin.shard {
                        cmd.args(&shard.tests).arg("--exact");
                    }
                    let out = cmd
                        .current_dir(&bin.dir)
                        .env("CARGO_MANIFEST_DIR", &bin.dir)
                        .env("CARGO_PKG_NAME", &bin.package)
                        .output();
                    let took = started.elapsed();
                    let ok = matches!(&out, Ok(o) if o.status.success());
                    {
                        let _guard = print.lock().expect("print");
                        println!("\n     Running {} ({})", bin.label(), bin.executable.display());
                        match &out {
                            Ok(o) => {
                                print!("{}", String::from_utf8_lossy(&o.stdout));
                                eprint!("{}", String::from_utf8_lossy(&o.stderr));
                                if !o.status.success() {
                                    println!(
                                        "{}: FAILED ({}) after {:.1} s",
                                        bin.label(),
                                        o.status,
                                        took.as_secs_f64()
                                    );
                                }
                            }
                            Err(e) => println!("{}: could not start {}: {e}", bin.label(), bin.executable.display()),
                        }
                    }
                    outcomes.lock().expect("outcomes").push(Outcome {
                        name: bin.name.clone(),
                        label: bin.label(),
                        ok,
                        took,
                    });
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

/// Records this run's durations for the next one's schedule, keeping binaries it did not
/// run. A binary run in shards is recorded whole: the sum of its shards.
pub fn save_times(path: &Path, outcomes: &[Outcome]) {
    let mut times = load_times(path);
    let mut this_run: HashMap<&str, f64> = HashMap::new();
    for o in outcomes {
        *this_run.entry(o.name.as_str()).or_default() += o.took.as_secs_f64();
    }
    for (name, took) in this_run {
        times.insert(name.to_owned(), took);
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
                    shard: None,
                },
                TestBinary {
                    name: "busbar-operator/busbar_operator (lib)".into(),
                    package: "busbar-operator".into(),
                    executable: "/w/target/debug/deps/busbar_operator-2".into(),
                    dir: "/w/operator".into(),
                    shard: None,
                },
            ]
        );
    }

    #[test]
    fn the_longest_and_the_unknown_go_first() {
        let bin = |n: &str| TestBinary {
            name: n.into(),
            package: "p".into(),
            executable: n.into(),
            dir: "/".into(),
            shard: None,
        };
        let last = HashMap::from([("a".to_owned(), 5.0), ("b".to_owned(), 90.0), ("c".to_owned(), 20.0)]);
        let order: Vec<String> =
            schedule(vec![bin("a"), bin("b"), bin("c"), bin("new")], &last).into_iter().map(|b| b.name).collect();
        assert_eq!(order, ["new", "b", "c", "a"]);
    }

    #[test]
    fn a_binary_longer_than_the_rest_is_split_and_short_ones_are_not() {
        // 180 s of 330 s over two slots: alone it would be the whole run.
        assert_eq!(shard_count(180.0, 330.0, 2), 3);
        assert_eq!(shard_count(40.0, 330.0, 2), 1);
        // Never more than two per slot, and never with one slot.
        assert_eq!(shard_count(1000.0, 1001.0, 2), 4);
        assert_eq!(shard_count(180.0, 330.0, 1), 1);
        assert_eq!(shard_count(5.0, 0.0, 2), 1);
    }

    #[test]
    fn tests_are_dealt_sorted_so_each_shard_gets_every_kind() {
        let names = ["b__x", "a__y", "a__x", "b__y", "c__x"].map(String::from).to_vec();
        assert_eq!(deal(names.clone(), 2), [vec!["a__x", "b__x", "c__x"], vec!["a__y", "b__y"]]);
        // More shards than tests: no empty shard.
        assert_eq!(deal(names[..1].to_vec(), 3), [vec!["b__x"]]);
    }

    #[test]
    fn the_terse_list_gives_test_names_only() {
        let list = "mod::a: test\nb__x: test\nsome_bench: benchmark\n\n3 tests, 0 benchmarks\n";
        assert_eq!(parse_list(list), ["mod::a", "b__x"]);
    }

    #[test]
    fn a_sharded_binary_is_scheduled_by_its_share_and_recorded_whole() {
        let whole = TestBinary {
            name: "big".into(),
            package: "p".into(),
            executable: "big".into(),
            dir: "/".into(),
            shard: None,
        };
        let shard = |i| TestBinary { shard: Some(Shard { tests: vec![], index: i, of: 3 }), ..whole.clone() };
        let mid = TestBinary { name: "mid".into(), ..whole.clone() };
        let last = HashMap::from([("big".to_owned(), 90.0), ("mid".to_owned(), 40.0)]);
        let order: Vec<String> =
            schedule(vec![shard(1), mid, shard(2), shard(3)], &last).into_iter().map(|b| b.label()).collect();
        assert_eq!(order, ["mid", "big [1/3]", "big [2/3]", "big [3/3]"]);

        let dir = tempfile_dir("times");
        let file = dir.join("times.json");
        let took = |s| Duration::from_secs(s);
        let outcomes = [
            Outcome { name: "big".into(), label: "big [1/3]".into(), ok: true, took: took(30) },
            Outcome { name: "big".into(), label: "big [2/3]".into(), ok: true, took: took(31) },
            Outcome { name: "mid".into(), label: "mid".into(), ok: true, took: took(40) },
        ];
        save_times(&file, &outcomes);
        let saved = load_times(&file);
        assert_eq!(saved.get("big"), Some(&61.0));
        assert_eq!(saved.get("mid"), Some(&40.0));
        let _ = std::fs::remove_dir_all(dir);
    }

    /// A fresh directory of this test's own (xtask keeps its dependencies few).
    fn tempfile_dir(test: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("xtask-runner-{}-{test}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    /// Two binaries that can only finish together (each waits, bounded, for the other to
    /// have started) pass only if they really run at the same time.
    #[test]
    fn binaries_run_at_the_same_time() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile_dir("together");
        let script = |me: &str, other: &str| {
            let path = dir.join(me);
            let body = format!(
                "#!/bin/sh\ntouch '{d}/{me}.started'\ni=0\nwhile [ ! -e '{d}/{other}.started' ]; do\n  i=$((i+1)); [ $i -gt 100 ] && exit 1\n  sleep 0.05\ndone\n",
                d = dir.display()
            );
            std::fs::write(&path, body).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            TestBinary { name: me.into(), package: "p".into(), executable: path, dir: dir.clone(), shard: None }
        };
        let outcomes = run_all(vec![script("a", "b"), script("b", "a")], &[], 2);
        let _ = std::fs::remove_dir_all(&dir);
        assert_eq!(outcomes.len(), 2);
        assert!(
            outcomes.iter().all(|o| o.ok),
            "each binary waited for the other in vain: they ran one after the other"
        );
    }
}
