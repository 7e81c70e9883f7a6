//! The repository's apps as `busbar up` runs them in tests: their programs built next to
//! `busbar`, and the blog's manifest on the ports a test chose.

use std::{collections::HashMap, path::Path, process::Command};

/// Builds these packages' programs (all their binaries) into `bin_dir`, the directory
/// `busbar` runs from, where `busbar up` and `busbar contract` look for a service's
/// program. Cargo builds only the tested package's own binaries for its tests, so the
/// apps' programs are built here, once per test binary (a nested cargo waits for the
/// build lock, it does not fight over it).
pub fn build_programs(bin_dir: &Path, packages: &[&str]) {
    static BUILT: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(vec![]);
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    let missing: Vec<&str> = packages.iter().copied().filter(|p| !built.iter().any(|b| b == p)).collect();
    if missing.is_empty() {
        return;
    }
    let target_dir = bin_dir.parent().expect("the profile directory is in the target directory");
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // What cargo sets for this test binary alone (its crate name, its package, its binaries)
    // differs from one test binary to the next; build scripts that watch such variables
    // would otherwise rebuild the dependencies for every test binary.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        let per_test =
            ["CARGO_PKG_", "CARGO_BIN_", "CARGO_MANIFEST_", "CARGO_CRATE_"].iter().any(|p| key.starts_with(p))
                || ["CARGO_PRIMARY_PACKAGE", "CARGO_TARGET_TMPDIR", "CARGO_RUSTC_CURRENT_DIR"].contains(&key.as_ref());
        if per_test {
            cmd.env_remove(key.as_ref());
        }
    }
    cmd.current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/../..")).arg("build").arg("--target-dir").arg(target_dir);
    if bin_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    // Every program of the workspace, as `cargo xtask bench --smoke` and `.ci/run` build
    // them: the same selection resolves to the same features, so this reuses what they
    // built instead of compiling the shared dependencies once more for a smaller set.
    cmd.args(["--workspace", "--bins"]);
    let status = cmd.status().expect("cargo runs");
    assert!(status.success(), "cargo build {missing:?} failed");
    built.extend(missing.iter().map(|p| p.to_string()));
}

/// The repository's blog manifest with the given ports, and fast retries.
pub fn blog_spec(ports: &HashMap<&str, u16>) -> String {
    let mut s = include_str!("../../../k8s/base/servicebus.yaml").to_owned();
    for (name, default) in [("posts", 4000), ("comments", 4001), ("query", 4002), ("moderation", 4003)] {
        // Whole lines only: a port already put in may begin with the digits of a later one
        // (posts on 40019, then "port: 4001" for comments).
        let line = format!("port: {default}\n");
        assert_eq!(s.matches(&line).count(), 1, "{line:?} in the manifest");
        s = s.replace(&line, &format!("port: {}\n", ports[name]));
    }
    s.replace("backoff: [1s, 5s, 30s]", "backoff: [50ms, 200ms]")
}
