//! Nonsense ServiceBus manifests given to `busbar graph -f` and `busbar up -f`: each exits
//! non-zero at once with a short message naming the problem, and never panics.

use std::{
    io::Read,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

const H: &str = "apiVersion: busbar.dev/v1alpha1\nkind: ServiceBus\nmetadata: {name: nonsense}\n";

/// Runs `busbar <args>`, killing it after `limit`; returns (exit code, stderr).
fn busbar(args: &[&str], file: &std::path::Path, data_dir: &std::path::Path, limit: Duration) -> (Option<i32>, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_busbar"));
    cmd.args(args).arg("-f").arg(file);
    if args[0] == "up" {
        // Ports no test uses, should a spec ever get as far as starting something.
        cmd.arg("--data-dir").arg(data_dir).args(["--bus-port", &testkit::free_port().to_string()]);
    }
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).env("RUST_BACKTRACE", "1").spawn().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    let started = Instant::now();
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("busbar {args:?} -f {} still running after {limit:?}", file.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    (status.code(), reader.join().unwrap())
}

#[test]
fn nonsense_manifests_get_a_short_clear_message_from_graph_and_up() {
    let dir = testkit::temp_dir();
    let huge_type = "A".repeat(10 << 20);
    let bomb = {
        let mut s = format!("{H}spec:\n  x0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]\n");
        for i in 1..9 {
            let p = i - 1;
            s.push_str(&format!("  x{i}: &a{i} [*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p},*a{p}]\n"));
        }
        s.push_str("  services: [{name: a}]\n");
        s
    };
    let junk_10mb: String = (0..400_000).map(|i| format!("k{i}: [{{{{\n")).collect();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("not YAML", b"{{{ : ][".to_vec(), "not valid YAML"),
        ("empty file", vec![], "the manifest is empty"),
        ("only a comment", b"# nothing here\n".to_vec(), "the manifest is empty"),
        ("a YAML list", b"- a\n- b\n".to_vec(), "expected a ServiceBus manifest"),
        ("not UTF-8", b"apiVersion: \xff\xfe\n".to_vec(), "UTF-8"),
        ("wrong kind", b"apiVersion: busbar.dev/v1alpha1\nkind: Deployment\nspec: {}\n".to_vec(), "expected kind `ServiceBus`, found `Deployment`"),
        ("wrong apiVersion", b"apiVersion: apps/v1\nkind: ServiceBus\nspec: {services: [{name: a}]}\n".to_vec(), "expected apiVersion `busbar.dev/v1alpha1`, found `apps/v1`"),
        ("no spec", H.as_bytes().to_vec(), "no `spec`"),
        ("unknown field", format!("{H}spec: {{services: [{{name: a, colour: red}}]}}").into_bytes(), "services[0].colour: unknown field `colour`"),
        ("unknown spec field", format!("{H}spec: {{services: [{{name: a}}], retries: 3}}").into_bytes(), "unknown field `retries`"),
        ("duplicate names", format!("{H}spec: {{services: [{{name: a}}, {{name: a}}]}}").into_bytes(), "duplicate service name `a`"),
        ("bad service name", format!("{H}spec: {{services: [{{name: My_Service}}]}}").into_bytes(), "lower-case DNS label"),
        ("bad event types", format!("{H}spec: {{services: [{{name: a, publishes: ['has space', '>']}}]}}").into_bytes(), "`has space` is not a valid event type"),
        ("negative port", format!("{H}spec: {{services: [{{name: a, port: -80}}]}}").into_bytes(), "services[0].port: invalid value: integer `-80`"),
        ("huge port", format!("{H}spec: {{services: [{{name: a, port: 99999999999999999999999}}]}}").into_bytes(), "port"),
        ("port 0", format!("{H}spec: {{services: [{{name: a, port: 0}}]}}").into_bytes(), "port must be between 1 and 65535"),
        ("both transports", format!("{H}spec: {{transport: {{builtin: {{}}, jetstream: {{url: 'nats://127.0.0.1:4222'}}}}, services: [{{name: a}}]}}").into_bytes(), "choose one of `builtin` or `jetstream`, not both"),
        ("bad durations", format!("{H}spec: {{delivery: {{backoff: [1x, 5s], ackWait: forever}}, services: [{{name: a}}]}}").into_bytes(), "delivery.backoff[0]: `1x` is not a duration"),
        ("zero maxDeliver", format!("{H}spec: {{delivery: {{maxDeliver: 0}}, services: [{{name: a}}]}}").into_bytes(), "maxDeliver must be at least 1"),
        ("subscriber without port", format!("{H}spec: {{services: [{{name: a, subscribes: [{{type: X}}]}}]}}").into_bytes(), "needs a `port`"),
        ("self-referencing anchor", format!("{H}spec: &s {{services: *s}}").into_bytes(), "not valid YAML"),
        ("alias bomb", bomb.into_bytes(), "not valid YAML"),
        ("a long event type", format!("{H}spec: {{services: [{{name: a, publishes: [{}]}}]}}", &huge_type[..500_000]).into_bytes(), "is not a valid event type"),
        ("10 MB event type", format!("{H}spec: {{services: [{{name: a, publishes: [{huge_type}]}}]}}").into_bytes(), "at most 1048576"),
        ("10 MB of junk", format!("{H}{junk_10mb}").into_bytes(), "at most 1048576"),
    ];
    let mut failures = vec![];
    for (what, text, want) in &cases {
        let file = dir.path().join("sb.yaml");
        std::fs::write(&file, text).unwrap();
        for cmd in ["graph", "up"] {
            let (code, err) = busbar(&[cmd], &file, &dir.path().join("data"), Duration::from_secs(60));
            let short = err.len() < 3000 && err.lines().count() <= 25;
            let ok = code.is_some_and(|c| c != 0)
                && err.contains(want)
                && err.contains("sb.yaml")
                && short
                && !err.contains("panicked")
                && !err.contains("backtrace");
            if !ok {
                failures.push(format!("{what} ({cmd}): exit {code:?}, wanted {want:?} in:\n{err:.600}"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n\n"));
    // `up` refused before starting anything: it left no databases or processes behind.
    let data = dir.path().join("data");
    let left: Vec<_> =
        std::fs::read_dir(&data).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(!left.iter().any(|n| n.to_string_lossy().ends_with(".db")), "up created {left:?}");
}
