//! The container images build binaries the workspace really has, and every service has one.
//!
//! CI has no Docker engine, so nothing here builds an image. Instead skaffold.yaml's
//! artifacts (every image, with the build arguments that say which service the one service
//! Dockerfile builds) are read with their Dockerfiles and held against `cargo metadata`, the
//! ServiceBus manifests, the kustomize manifests and the app chart's values: a renamed
//! package or binary, a service without an image, a port that differs from the manifests, a
//! Dockerfile that lost its port or its non-root user, or a `.dockerignore` entry hiding a
//! file the code embeds fails here rather than in someone's `docker build` or `skaffold dev`.

use std::{
    collections::BTreeMap,
    path::{Component, Path, PathBuf},
    process::Command,
};

use serde_json::Value as Json;
use serde_yaml_ng::Value as Yaml;

/// Where every image is published; the charts, the manifests and skaffold.yaml use these names.
const REGISTRY: &str = "ghcr.io/busbar-dev";

#[test]
fn every_image_builds_and_runs_a_binary_the_workspace_has() {
    let packages = workspace_packages();
    let mut problems = Vec::new();
    for artifact in skaffold_artifacts() {
        problems.extend(check_artifact(&artifact, &read(&artifact.dockerfile), &packages));
    }
    assert!(problems.is_empty(), "images out of step with the workspace:\n  {}", problems.join("\n  "));
}

#[test]
fn renaming_a_binary_breaks_its_image_check() {
    let mut packages = workspace_packages();
    let posts = packages.iter_mut().find(|p| p.name == "posts").expect("the workspace has a posts package");
    posts.bins = vec!["posts-server".into()];
    let artifact = artifact_of("posts");
    let problems = check_artifact(&artifact, &read(&artifact.dockerfile), &packages);
    assert!(
        problems.iter().any(|p| p.contains("no binary `posts`")),
        "an image building a binary that no longer exists must be reported, got {problems:?}"
    );
}

#[test]
fn a_build_argument_a_stage_does_not_declare_is_reported() {
    // Docker scopes ARG to its stage: a runtime stage that forgets `ARG BIN` gets an empty one.
    let artifact = artifact_of("posts");
    let text = read(&artifact.dockerfile);
    let runtime = text.rfind("\nFROM ").expect("a runtime stage");
    let (build, run) = text.split_at(runtime);
    let broken = format!("{build}{}", run.replacen("\nARG BIN", "\n", 1));
    let problems = check_artifact(&artifact, &broken, &workspace_packages());
    assert!(problems.iter().any(|p| p.contains("${BIN}")), "got {problems:?}");
}

#[test]
fn every_service_binary_has_exactly_one_image() {
    let packages = workspace_packages();
    let problems = one_image_per_service(&packages, &skaffold_artifacts());
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_service_built_twice_or_never_is_reported() {
    let packages = workspace_packages();
    let mut artifacts = skaffold_artifacts();
    let posts = artifacts.iter().position(|a| a.image.ends_with("/posts")).expect("posts has an artifact");
    let twice = artifacts[posts].clone();
    artifacts.push(twice);
    artifacts.retain(|a| !a.image.ends_with("/query"));
    let problems = one_image_per_service(&packages, &artifacts);
    assert!(problems.iter().any(|p| p.contains("posts") && p.contains("2 skaffold artifacts")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("query") && p.contains("no skaffold artifact")), "{problems:?}");
}

#[test]
fn every_image_serves_the_port_the_charts_and_manifests_declare() {
    let declared = declared_ports();
    let mut problems = Vec::new();
    for artifact in skaffold_artifacts() {
        problems.extend(check_port(&artifact, &declared));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn a_port_the_manifests_do_not_declare_is_reported() {
    let mut artifact = artifact_of("orders");
    artifact.args.insert("PORT".into(), "4999".into());
    let problems = check_port(&artifact, &declared_ports());
    assert!(problems.iter().any(|p| p.contains("k8s/shop/servicebus.yaml") && p.contains("4102")), "{problems:?}");
    assert!(problems.iter().any(|p| p.contains("values-shop.yaml")), "{problems:?}");
}

#[test]
fn all_images_share_one_builder_and_one_runtime() {
    // Bumping the toolchain or the runtime in one Dockerfile only would make the images
    // disagree on glibc or on the compiler the workspace is tested with.
    let mut dockerfiles: Vec<String> = skaffold_artifacts().into_iter().map(|a| a.dockerfile).collect();
    dockerfiles.sort();
    dockerfiles.dedup();
    let stages: Vec<(String, Vec<String>)> = dockerfiles
        .iter()
        .map(|d| {
            let from = instructions(&read(d))
                .into_iter()
                .filter(|(k, _)| k == "FROM")
                .map(|(_, rest)| rest.split_whitespace().next().unwrap_or_default().to_owned())
                .collect();
            (d.clone(), from)
        })
        .collect();
    let (first, expected) = &stages[0];
    for (dockerfile, from) in &stages[1..] {
        assert_eq!(from, expected, "{dockerfile} and {first} must build from the same images");
    }
    let builder = &expected[0];
    let version = builder.strip_prefix("rust:").and_then(|t| t.split('-').next()).unwrap_or_default();
    assert!(
        version.split('.').count() == 3 && version.split('.').all(|n| n.parse::<u32>().is_ok()),
        "the builder `{builder}` must pin an exact Rust release (rust:X.Y.Z-...), so that images are reproducible"
    );
}

#[test]
fn every_dockerfile_is_built_by_an_artifact() {
    // A Dockerfile nobody builds would drift unnoticed (.ci/check-containers says the same
    // from skaffold's side).
    let artifacts = skaffold_artifacts();
    let mut problems = Vec::new();
    for dir in [".", "services", "operator", "crates"] {
        for file in dockerfiles_under(&root().join(dir), dir != ".") {
            let rel = file.strip_prefix(root()).unwrap().to_string_lossy().into_owned();
            if !artifacts.iter().any(|a| a.dockerfile == rel) {
                problems.push(format!("{rel} is built by no skaffold artifact"));
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_build_context_keeps_every_file_the_code_embeds() {
    let ignored = dockerignore_literals(&read(".dockerignore"));
    let mut problems = Vec::new();
    for dir in ["crates", "services", "operator", "xtask"] {
        for file in rust_sources(&root().join(dir)) {
            let text = std::fs::read_to_string(&file).unwrap();
            for embedded in embedded_paths(&text) {
                let path = normalize(&file.parent().unwrap().join(embedded));
                let Ok(rel) = path.strip_prefix(root()) else { continue };
                if let Some(pattern) = ignored.iter().find(|p| p.matches(rel)) {
                    problems.push(format!(
                        "{} embeds {} but .dockerignore leaves it out of the build context ({})",
                        file.strip_prefix(root()).unwrap().display(),
                        rel.display(),
                        pattern.text
                    ));
                }
            }
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

// ---- skaffold.yaml ----------------------------------------------------------------------

/// One image skaffold builds: from `build.artifacts`, or put there by a profile's patch.
#[derive(Debug, Clone, PartialEq)]
struct Artifact {
    image: String,
    /// Relative to the workspace root.
    dockerfile: String,
    /// `docker.buildArgs`.
    args: BTreeMap<String, String>,
    /// Where skaffold.yaml declares it, for messages.
    origin: String,
}

impl Artifact {
    /// The binary the image runs: its BIN build argument, else the image's name.
    fn bin(&self) -> String {
        self.args.get("BIN").cloned().unwrap_or_else(|| self.image.rsplit('/').next().unwrap_or_default().to_owned())
    }
}

/// Every artifact skaffold.yaml declares, in `build.artifacts` and in the profiles' patches
/// (`add`/`replace` of `/build/artifacts...` with one artifact or a list of them).
fn skaffold_artifacts() -> Vec<Artifact> {
    let config: Yaml = serde_yaml_ng::from_str(&read("skaffold.yaml")).expect("skaffold.yaml is YAML");
    let mut out = Vec::new();
    let mut collect = |value: &Yaml, origin: &str| {
        let list = match value {
            Yaml::Sequence(items) => items.clone(),
            single => vec![single.clone()],
        };
        for a in list {
            let context = a["context"].as_str().unwrap_or(".");
            let dockerfile = a["docker"]["dockerfile"].as_str().unwrap_or("Dockerfile");
            let args = match &a["docker"]["buildArgs"] {
                Yaml::Mapping(m) => m.iter().map(|(k, v)| (scalar(k), scalar(v))).collect::<BTreeMap<String, String>>(),
                _ => BTreeMap::new(),
            };
            out.push(Artifact {
                image: a["image"].as_str().expect("every artifact names its image").to_owned(),
                dockerfile: normalize(&Path::new(context).join(dockerfile)).to_string_lossy().into_owned(),
                args,
                origin: origin.to_owned(),
            });
        }
    };
    collect(&config["build"]["artifacts"], "build.artifacts");
    for profile in config["profiles"].as_sequence().into_iter().flatten() {
        for patch in profile["patches"].as_sequence().into_iter().flatten() {
            let path = patch["path"].as_str().unwrap_or_default();
            let op = patch["op"].as_str().unwrap_or("replace");
            if path.starts_with("/build/artifacts") && matches!(op, "add" | "replace") {
                collect(&patch["value"], &format!("profile {}", profile["name"].as_str().unwrap_or("?")));
            }
        }
    }
    out
}

fn artifact_of(bin: &str) -> Artifact {
    skaffold_artifacts().into_iter().find(|a| a.bin() == bin).unwrap_or_else(|| panic!("no artifact builds {bin}"))
}

fn scalar(v: &Yaml) -> String {
    match v {
        Yaml::String(s) => s.clone(),
        Yaml::Number(n) => n.to_string(),
        Yaml::Bool(b) => b.to_string(),
        other => panic!("a build argument must be a scalar, got {other:?}"),
    }
}

// ---- the checks -------------------------------------------------------------------------

/// What `cargo metadata` says about one workspace package.
#[derive(Debug, Clone)]
struct Package {
    name: String,
    /// The package's directory, relative to the workspace root.
    dir: PathBuf,
    bins: Vec<String>,
}

/// Every binary of a package under services/ is a deployable service: it needs exactly one
/// artifact, `ghcr.io/busbar-dev/<bin>`, whose build arguments name its package and binary.
fn one_image_per_service(packages: &[Package], artifacts: &[Artifact]) -> Vec<String> {
    let mut problems = Vec::new();
    for package in packages.iter().filter(|p| p.dir.starts_with("services")) {
        for bin in &package.bins {
            let builds: Vec<&Artifact> = artifacts
                .iter()
                .filter(|a| a.args.get("PACKAGE") == Some(&package.name) && a.args.get("BIN") == Some(bin))
                .collect();
            match builds.as_slice() {
                [] => problems.push(format!(
                    "{} builds binary `{bin}` but no skaffold artifact has build args PACKAGE={} BIN={bin}",
                    package.name, package.name
                )),
                [one] if one.image != format!("{REGISTRY}/{bin}") => {
                    problems.push(format!("the image of {bin} is {}, not {REGISTRY}/{bin}", one.image))
                }
                [_] => {}
                many => problems.push(format!(
                    "{} binary `{bin}` is built by {} skaffold artifacts ({}): keep one",
                    package.name,
                    many.len(),
                    many.iter().map(|a| a.origin.as_str()).collect::<Vec<_>>().join(", ")
                )),
            }
        }
    }
    problems
}

/// Everything wrong with one artifact's image, one message per problem.
fn check_artifact(artifact: &Artifact, text: &str, packages: &[Package]) -> Vec<String> {
    let bin = artifact.bin();
    let mut problems = Vec::new();
    let label = if artifact.args.is_empty() {
        format!("{} ({})", artifact.dockerfile, artifact.image)
    } else {
        format!("{} with {:?} ({})", artifact.dockerfile, artifact.args, artifact.image)
    };
    let mut problem = |msg: String| problems.push(format!("{label}: {msg}"));
    let (instructions, unresolved) = expand(&instructions(text), &artifact.args);
    for u in unresolved {
        problem(u);
    }
    let last_from = instructions.iter().rposition(|(k, _)| k == "FROM").unwrap_or(0);
    let (build_stages, runtime) = instructions.split_at(last_from);

    // The build: one `cargo build --release --locked --package P --bin B`, with the cache
    // mounts every image shares.
    let runs: Vec<&String> = build_stages.iter().filter(|(k, _)| k == "RUN").map(|(_, r)| r).collect();
    let builds: Vec<(CargoBuild, &String)> =
        runs.iter().filter_map(|run| cargo_build(run).map(|b| (b, *run))).collect();
    let [(build, run)] = builds.as_slice() else {
        problem(format!("expected one `cargo build` in the build stage, found {}", builds.len()));
        return problems;
    };
    for flag in ["--release", "--locked"] {
        if !build.flags.iter().any(|f| f == flag) {
            problem(format!("`cargo build` lacks {flag}"));
        }
    }
    for cache in ["id=busbar-cargo-registry,", "id=busbar-target,target=/src/target"] {
        if !run.contains(&format!("--mount=type=cache,{cache}")) {
            problem(format!("`cargo build` does not use the shared cache mount {cache}"));
        }
    }
    let Some(package) = packages.iter().find(|p| Some(&p.name) == build.package.as_ref()) else {
        problem(format!("builds package {:?}, which is not in the workspace", build.package));
        return problems;
    };
    if let Some(expected) = artifact.args.get("PACKAGE").filter(|p| **p != package.name) {
        problem(format!("builds package {}, not PACKAGE={expected}", package.name));
    }
    // A Dockerfile inside a crate builds that crate; the service Dockerfile at the root builds any.
    let dir = Path::new(&artifact.dockerfile).parent().unwrap_or(Path::new(""));
    if dir != Path::new("") && dir != package.dir {
        problem(format!("builds package {} from {}, not the crate it sits in", package.name, package.dir.display()));
    }
    if build.bins != [bin.clone()] {
        problem(format!("should build exactly `--bin {bin}`, builds {:?}", build.bins));
    }
    // Every binary the Dockerfile names, wherever it names it, must be one the package has.
    let mut named: Vec<String> = build.bins.clone();
    named.extend(runs.iter().flat_map(|run| release_binaries(run)));
    for b in named.iter().filter(|b| !b.is_empty()) {
        if !package.bins.contains(b) {
            problem(format!(
                "names binary `{b}`, but package {} has no binary `{b}` (it has {:?})",
                package.name, package.bins
            ));
        }
    }
    // The runtime stage copies that binary, from where the build stage installed it, to where
    // ENTRYPOINT runs it from.
    let entrypoint = match runtime.iter().rev().find(|(k, _)| k == "ENTRYPOINT").map(|(_, e)| exec_form(e)) {
        Some(Some(argv)) if !argv.is_empty() => argv[0].clone(),
        _ => {
            problem("needs an exec-form ENTRYPOINT [\"/path/to/binary\"]".into());
            String::new()
        }
    };
    let installed: Vec<String> = runs.iter().filter_map(|run| installed_as(run, &bin)).collect();
    let copied = runtime.iter().filter(|(k, _)| k == "COPY").filter_map(|(_, c)| copy_from(c)).any(|(src, dest)| {
        (installed.contains(&src) || basename(&src) == bin)
            && (dest == entrypoint || dest.trim_end_matches('/') == parent(&entrypoint))
    });
    if !copied {
        problem(format!(
            "the final stage does not COPY --from the build stage the `{bin}` binary (installed as {installed:?}) to {entrypoint}"
        ));
    }
    // Non-root by number: kubelet can only verify runAsNonRoot against a numeric USER.
    match runtime.iter().rev().find(|(k, _)| k == "USER").map(|(_, u)| u.trim()) {
        Some(user) if user.split(':').all(|id| id.parse::<u32>().is_ok_and(|n| n != 0)) => {}
        other => problem(format!("the final stage needs a numeric non-root USER (e.g. 65532:65532), has {other:?}")),
    }
    if let Some(port) = artifact.args.get("PORT") {
        let exposed: Vec<&str> =
            runtime.iter().filter(|(k, _)| k == "EXPOSE").flat_map(|(_, e)| e.split_whitespace()).collect();
        if !exposed.iter().any(|p| p.split('/').next() == Some(port)) {
            problem(format!("should EXPOSE {port}, exposes {exposed:?}"));
        }
    }
    let has = |keyword: &str, value: &str| runtime.iter().any(|(k, v)| k == keyword && v.contains(value));
    if !has("LABEL", &format!("org.opencontainers.image.title=\"{bin}\"")) {
        problem(format!("the image's title label should be {bin}"));
    }
    // A service keeps its SQLite database under /data unless DATABASE_URL says otherwise.
    if package.dir.starts_with("services") {
        if !has("ENV", &format!("DATABASE_URL=sqlite:///data/{bin}.db")) {
            problem(format!("a service image should default DATABASE_URL to sqlite:///data/{bin}.db"));
        }
        if !runtime.iter().any(|(k, v)| k == "WORKDIR" && v == "/data") {
            problem("a service image should work in /data, where it writes".into());
        }
    }
    problems
}

/// The ports an image's service is declared with, by where they are declared.
type DeclaredPorts = Vec<(String, String, u16)>; // (image or service name, where, port)

/// Every port declared for a service or an image: the ServiceBus manifests' services (by
/// name), the kustomize manifests' Deployments (by image), the app chart's values (by image),
/// and the port the operator runs the built-in bus on (by the bus image the operator chart runs).
fn declared_ports() -> DeclaredPorts {
    let mut out = Vec::new();
    for file in yaml_files(&root().join("k8s")) {
        let rel = file.strip_prefix(root()).unwrap().display().to_string();
        for doc in yaml_documents(&std::fs::read_to_string(&file).unwrap()) {
            match doc["kind"].as_str() {
                Some("ServiceBus") => {
                    let bus = doc["metadata"]["name"].as_str().unwrap_or("?");
                    for s in doc["spec"]["services"].as_sequence().into_iter().flatten() {
                        if let (Some(name), Some(port)) = (s["name"].as_str(), s["port"].as_u64()) {
                            out.push((name.to_owned(), format!("{rel} (ServiceBus {bus})"), port as u16));
                        }
                    }
                }
                Some("Deployment") => {
                    for c in doc["spec"]["template"]["spec"]["containers"].as_sequence().into_iter().flatten() {
                        let image = c["image"].as_str().unwrap_or_default();
                        let repo =
                            image.split('@').next().unwrap_or_default().rsplit_once(':').map_or(image, |(r, _)| r);
                        for p in c["ports"].as_sequence().into_iter().flatten() {
                            if let Some(port) = p["containerPort"].as_u64() {
                                let name = doc["metadata"]["name"].as_str().unwrap_or("?");
                                out.push((repo.to_owned(), format!("{rel} (Deployment {name})"), port as u16));
                            }
                        }
                    }
                }
                _ => {}
            }
        }
    }
    for file in
        yaml_files(&root().join("helm")).into_iter().filter(|f| basename(&f.to_string_lossy()).starts_with("values"))
    {
        let rel = file.strip_prefix(root()).unwrap().display().to_string();
        let values: Yaml = serde_yaml_ng::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        for (name, s) in values["services"].as_mapping().into_iter().flatten() {
            if let (Some(repo), Some(port)) = (s["image"]["repository"].as_str(), s["port"].as_u64()) {
                out.push((repo.to_owned(), format!("{rel} (services.{})", scalar(name)), port as u16));
            }
        }
    }
    // The operator, not a manifest, runs the built-in bus: on its `bus_port`, from the image
    // the operator chart gives it.
    let operator: Yaml = serde_yaml_ng::from_str(&read("helm/busbar/values.yaml")).unwrap();
    let settings = read("operator/src/settings.rs");
    let bus_port =
        settings.lines().find_map(|l| l.trim().strip_prefix("bus_port: ")?.trim_end_matches(',').parse().ok());
    if let (Some(repo), Some(port)) = (operator["busImage"]["repository"].as_str(), bus_port) {
        out.push((repo.to_owned(), "operator/src/settings.rs (bus_port)".into(), port));
    }
    out
}

/// The port an image serves on (its PORT build argument, else what its Dockerfile EXPOSEs)
/// against every port declared for it: all must agree. A service of an app must be declared by
/// the app's ServiceBus, its kustomize manifests and the app chart's values alike; the bus by
/// the operator; any other image (the operator) by a Deployment under k8s/.
fn check_port(artifact: &Artifact, declared: &DeclaredPorts) -> Vec<String> {
    let bin = artifact.bin();
    let mine: Vec<&(String, String, u16)> =
        declared.iter().filter(|(key, _, _)| *key == artifact.image || *key == bin).collect();
    let port = match artifact.args.get("PORT") {
        Some(port) => port.clone(),
        None => {
            let (instructions, _) = expand(&instructions(&read(&artifact.dockerfile)), &artifact.args);
            let exposed = instructions.iter().rev().find(|(k, _)| k == "EXPOSE").map(|(_, e)| e.clone());
            exposed.unwrap_or_default().split(['/', ' ']).next().unwrap_or_default().to_owned()
        }
    };
    let Ok(port) = port.parse::<u16>() else {
        return vec![format!("{}: serves on {port:?}, which is not a port number", artifact.image)];
    };
    let mut problems = Vec::new();
    for (_, place, declared) in &mine {
        if *declared != port {
            problems.push(format!(
                "{} ({}) serves on {port}, but {place} says {declared}",
                artifact.image, artifact.origin
            ));
        }
    }
    let needed: &[(&str, &str)] = if mine.iter().any(|(_, place, _)| place.starts_with("operator/")) {
        &[]
    } else if artifact.args.contains_key("PORT") {
        &[
            ("its app's ServiceBus manifest", "(ServiceBus "),
            ("a Deployment under k8s/", "(Deployment "),
            ("the app chart's values (helm/*/values-*.yaml)", "(services."),
        ]
    } else {
        &[("a Deployment under k8s/", "(Deployment ")]
    };
    for (what, marker) in needed {
        if !mine.iter().any(|(_, place, _)| place.contains(marker)) {
            problems.push(format!("{}: {what} does not declare {bin}", artifact.image));
        }
    }
    problems
}

// ---- reading Dockerfiles ----------------------------------------------------------------

/// The instructions as docker reads them with these build arguments: in each stage, `$NAME`,
/// `${NAME}`, `${NAME:?message}` and `${NAME:-default}` of an `ARG` declared in that stage are
/// replaced by the value given or the ARG's default (in RUN the shell does the same from the
/// environment). Returns what could not be resolved: a variable outside RUN that the stage
/// does not declare (docker would make it empty), or a required one not given.
fn expand(instructions: &[(String, String)], args: &BTreeMap<String, String>) -> (Vec<(String, String)>, Vec<String>) {
    let mut problems = Vec::new();
    let mut declared: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut out = Vec::new();
    for (keyword, rest) in instructions {
        match keyword.as_str() {
            "FROM" => declared.clear(),
            "ARG" => {
                let (name, default) = match rest.split_once('=') {
                    Some((n, d)) => (n.trim(), Some(d.trim().trim_matches('"').to_owned())),
                    None => (rest.trim(), None),
                };
                declared.insert(name.to_owned(), args.get(name).cloned().or(default));
            }
            _ => {}
        }
        let mut text = String::new();
        let mut rest = rest.as_str();
        while let Some(at) = rest.find('$') {
            text.push_str(&rest[..at]);
            let after = &rest[at + 1..];
            let Some((name, modifier, len)) = variable(after) else {
                text.push('$');
                rest = after;
                continue;
            };
            match declared.get(name) {
                Some(value) => {
                    match (value.as_deref().filter(|v| !v.is_empty()), modifier) {
                        (Some(v), _) => text.push_str(v),
                        (None, m) if m.starts_with(":-") => text.push_str(&m[2..]),
                        (None, m) if m.starts_with(":?") => {
                            problems.push(format!("needs --build-arg {name} ({})", m[2..].trim()))
                        }
                        (None, _) => problems.push(format!("{keyword} uses ${{{name}}}, which is given no value")),
                    }
                    rest = &after[len..];
                    continue;
                }
                // In RUN the shell expands its own variables.
                None if keyword != "RUN" => problems.push(format!(
                    "{keyword} uses ${{{name}}}, which no ARG declares in its stage (docker makes it empty)"
                )),
                None => {}
            }
            text.push('$');
            rest = after;
        }
        text.push_str(rest);
        out.push((keyword.clone(), text));
    }
    for name in args.keys() {
        if !instructions.iter().any(|(k, rest)| k == "ARG" && rest.split('=').next().map(str::trim) == Some(name)) {
            problems.push(format!("the build argument {name} is declared by no ARG (docker would ignore it)"));
        }
    }
    (out, problems)
}

/// The variable at the start of `after` (what follows a `$`): its name, its modifier
/// (`:?message`, `:-default`, ...) and how many characters it spans; None if none is there.
fn variable(after: &str) -> Option<(&str, &str, usize)> {
    let name_len = |s: &str| s.find(|c: char| !(c.is_ascii_alphanumeric() || c == '_')).unwrap_or(s.len());
    let (name, modifier, len) = match after.strip_prefix('{') {
        Some(braced) => {
            let inner = &braced[..braced.find('}')?];
            let n = name_len(inner);
            (&inner[..n], &inner[n..], inner.len() + 2)
        }
        None => {
            let n = name_len(after);
            (&after[..n], "", n)
        }
    };
    name.starts_with(|c: char| c.is_ascii_alphabetic() || c == '_').then_some((name, modifier, len))
}

struct CargoBuild {
    package: Option<String>,
    bins: Vec<String>,
    flags: Vec<String>,
}

/// The `cargo build` in a RUN line, up to the next `&&` or `;`.
fn cargo_build(run: &str) -> Option<CargoBuild> {
    let words: Vec<String> = run.split_whitespace().map(unquote).collect();
    let start = words.windows(2).position(|w| w == ["cargo", "build"])? + 2;
    let args: Vec<&str> =
        words[start..].iter().map(String::as_str).take_while(|w| !matches!(*w, "&&" | ";" | "||")).collect();
    let mut build = CargoBuild { package: None, bins: Vec::new(), flags: Vec::new() };
    let mut i = 0;
    while i < args.len() {
        let (flag, inline) = match args[i].split_once('=') {
            Some((f, v)) if f.starts_with("--") => (f, Some(v.to_owned())),
            _ => (args[i], None),
        };
        let value = || inline.clone().or_else(|| args.get(i + 1).map(|v| v.to_string()));
        match flag {
            "-p" | "--package" => {
                build.package = value();
                i += usize::from(inline.is_none());
            }
            "--bin" => {
                build.bins.extend(value());
                i += usize::from(inline.is_none());
            }
            _ => build.flags.push(flag.to_owned()),
        }
        i += 1;
    }
    Some(build)
}

fn unquote(word: &str) -> String {
    word.trim_matches(|c| c == '"' || c == '\'').to_owned()
}

/// Binaries a RUN line takes out of cargo's output directory (`target/release/<bin>`).
fn release_binaries(run: &str) -> Vec<String> {
    run.split_whitespace()
        .filter_map(|w| w.split_once("target/release/").map(|(_, b)| b.trim_end_matches([';', '"', '\''])))
        .filter(|b| !b.is_empty() && !b.contains('/'))
        .map(str::to_owned)
        .collect()
}

/// Where a RUN line installs `target/release/<bin>` (the word after it).
fn installed_as(run: &str, bin: &str) -> Option<String> {
    let words: Vec<String> = run.split_whitespace().map(unquote).collect();
    let at = words.iter().position(|w| w.ends_with(&format!("target/release/{bin}")))?;
    words.get(at + 1).filter(|w| w.starts_with('/')).cloned()
}

/// (source, destination) of a `COPY --from=...` with one source.
fn copy_from(copy: &str) -> Option<(String, String)> {
    let words: Vec<&str> = copy.split_whitespace().collect();
    words.iter().find(|w| w.starts_with("--from="))?;
    let paths: Vec<&str> = words.into_iter().filter(|w| !w.starts_with("--")).collect();
    match paths.as_slice() {
        [src, dest] => Some((src.to_string(), dest.to_string())),
        _ => None,
    }
}

fn exec_form(arg: &str) -> Option<Vec<String>> {
    serde_json::from_str::<Vec<String>>(arg.trim()).ok()
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn parent(path: &str) -> &str {
    path.rsplit_once('/').map_or("", |(dir, _)| dir)
}

/// A Dockerfile as (INSTRUCTION, arguments) pairs: continuation lines joined, comments
/// (and parser directives, which look like comments) dropped.
fn instructions(text: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut current = String::new();
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with('#') || (trimmed.is_empty() && current.is_empty()) {
            continue;
        }
        match trimmed.strip_suffix('\\') {
            Some(head) => {
                current.push_str(head);
                current.push(' ');
            }
            None => {
                current.push_str(trimmed);
                let (keyword, rest) = current.trim().split_once(char::is_whitespace).unwrap_or((current.trim(), ""));
                out.push((keyword.to_ascii_uppercase(), rest.trim().to_owned()));
                current.clear();
            }
        }
    }
    out
}

// ---- the workspace ----------------------------------------------------------------------

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("xtask sits in the workspace root").to_path_buf()
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(root().join(rel)).unwrap_or_else(|e| panic!("reading {rel}: {e}"))
}

fn workspace_packages() -> Vec<Package> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["metadata", "--format-version", "1", "--no-deps", "--manifest-path"])
        .arg(root().join("Cargo.toml"))
        .output()
        .expect("running cargo metadata");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let metadata: Json = serde_json::from_slice(&out.stdout).expect("cargo metadata prints JSON");
    let root = root();
    let items = |v: &Json| v.as_array().cloned().unwrap_or_default();
    items(&metadata["packages"])
        .iter()
        .map(|p| {
            let manifest = Path::new(p["manifest_path"].as_str().unwrap());
            Package {
                name: p["name"].as_str().unwrap().to_owned(),
                dir: manifest.parent().unwrap().strip_prefix(&root).unwrap_or(manifest).to_path_buf(),
                bins: items(&p["targets"])
                    .iter()
                    .filter(|t| items(&t["kind"]).iter().any(|k| k.as_str() == Some("bin")))
                    .map(|t| t["name"].as_str().unwrap().to_owned())
                    .collect(),
            }
        })
        .collect()
}

/// Every document of a (multi-document) YAML file; one that is not YAML is left out.
fn yaml_documents(text: &str) -> Vec<Yaml> {
    let mut docs = vec![String::new()];
    for line in text.lines() {
        if line == "---" || line.starts_with("--- ") {
            docs.push(String::new());
        } else {
            let doc = docs.last_mut().unwrap();
            doc.push_str(line);
            doc.push('\n');
        }
    }
    docs.iter().filter_map(|d| serde_yaml_ng::from_str(d).ok()).filter(|d: &Yaml| !d.is_null()).collect()
}

/// The `.yaml` files below `dir`.
fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    files_below(dir, &|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"), true)
}

/// The Dockerfiles in `dir` (and below it when `deep`).
fn dockerfiles_under(dir: &Path, deep: bool) -> Vec<PathBuf> {
    let is_dockerfile = |p: &Path| {
        let name = p.file_name().unwrap_or_default().to_string_lossy();
        name == "Dockerfile" || name.starts_with("Dockerfile.") || name.ends_with(".Dockerfile")
    };
    files_below(dir, &is_dockerfile, deep)
}

fn files_below(dir: &Path, keep: &dyn Fn(&Path) -> bool, deep: bool) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if deep && entry.file_name() != "target" && !entry.file_name().to_string_lossy().starts_with('.') {
                    stack.push(path);
                }
            } else if keep(&path) {
                out.push(path);
            }
        }
    }
    out.sort();
    out
}

/// The `.rs` files under each `src/` below `dir`: what goes into the binaries.
fn rust_sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_path_buf(), false)];
    while let Some((dir, in_src)) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            let name = entry.file_name();
            if path.is_dir() {
                if name != "target" && name != "tests" {
                    stack.push((path, in_src || name == "src"));
                }
            } else if in_src && path.extension().is_some_and(|e| e == "rs") {
                out.push(path);
            }
        }
    }
    out
}

/// Paths given to `include_str!` / `include_bytes!` outside comments.
fn embedded_paths(source: &str) -> Vec<String> {
    source
        .lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .flat_map(|l| l.split("include_str!(\"").skip(1).chain(l.split("include_bytes!(\"").skip(1)))
        .filter_map(|rest| rest.split_once('"').map(|(path, _)| path.to_owned()))
        .collect()
}

fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::ParentDir => {
                out.pop();
            }
            Component::CurDir => {}
            other => out.push(other),
        }
    }
    out
}

/// A `.dockerignore` pattern simple enough to apply here: a literal path (`helm/`), or a
/// literal name anywhere (`**/target/`). Wildcard patterns are skipped.
struct Ignored {
    text: String,
    anywhere: bool,
    path: PathBuf,
}

impl Ignored {
    fn matches(&self, rel: &Path) -> bool {
        if self.anywhere {
            rel.components().any(|c| Path::new(c.as_os_str()) == self.path)
        } else {
            rel.starts_with(&self.path)
        }
    }
}

fn dockerignore_literals(text: &str) -> Vec<Ignored> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#') && !l.starts_with('!'))
        .filter_map(|l| {
            let (anywhere, rest) = match l.strip_prefix("**/") {
                Some(rest) => (true, rest),
                None => (false, l.trim_start_matches('/')),
            };
            let rest = rest.trim_end_matches('/');
            let skipped = rest.contains(['*', '?', '[']) || (anywhere && rest.contains('/'));
            (!skipped).then(|| Ignored { text: l.to_owned(), anywhere, path: PathBuf::from(rest) })
        })
        .collect()
}

#[test]
fn dockerignore_patterns_match_like_docker() {
    let ignored = dockerignore_literals("# c\nhelm/\n**/target/\n*.md\n!keep\n");
    let hits = |p: &str| ignored.iter().any(|i| i.matches(Path::new(p)));
    assert!(hits("helm/busbar-app/values.yaml"));
    assert!(hits("crates/x/target/debug/y"));
    assert!(!hits("k8s/base/servicebus.yaml"));
    assert!(!hits("helmet/x"));
}

#[test]
fn dockerfile_reading_follows_continuations_skips_comments_and_expands_arguments() {
    let text = "# syntax=docker/dockerfile:1\nFROM a AS build\nARG PACKAGE\nARG BIN=posts\nRUN --mount=type=cache,target=/x \\\n    # a comment inside\n    : \"${PACKAGE:?say which}\" && cargo build --release --locked -p \"$PACKAGE\" --bin=${BIN} \\\n    && install target/release/$BIN /out/service\nFROM b\nARG BIN\nentrypoint [\"/usr/local/bin/service\"]\nCOPY --from=build /out/service /usr/local/bin/service\nENV X=${BIN}.db\n";
    let ins = instructions(text);
    let keywords: Vec<&str> = ins.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keywords, ["FROM", "ARG", "ARG", "RUN", "FROM", "ARG", "ENTRYPOINT", "COPY", "ENV"]);

    let args = BTreeMap::from([("PACKAGE".to_owned(), "posts".to_owned()), ("BIN".to_owned(), "posts".to_owned())]);
    let (expanded, problems) = expand(&ins, &args);
    assert!(problems.is_empty(), "{problems:?}");
    let build = cargo_build(&expanded[3].1).unwrap();
    assert_eq!(build.package.as_deref(), Some("posts"));
    assert_eq!(build.bins, ["posts"]);
    assert!(build.flags.contains(&"--locked".to_owned()));
    assert_eq!(release_binaries(&expanded[3].1), ["posts"]);
    assert_eq!(installed_as(&expanded[3].1, "posts").as_deref(), Some("/out/service"));
    assert_eq!(exec_form(&expanded[6].1).unwrap(), ["/usr/local/bin/service"]);
    assert_eq!(expanded[8].1, "X=posts.db");

    // Without PACKAGE the build stage's guard fails, as `docker build` would.
    let (_, problems) = expand(&ins, &BTreeMap::from([("BIN".to_owned(), "posts".to_owned())]));
    assert!(problems.iter().any(|p| p.contains("needs --build-arg PACKAGE (say which)")), "{problems:?}");
    // A build argument no ARG takes.
    let (_, problems) = expand(&ins, &BTreeMap::from([("PORT".to_owned(), "1".to_owned())]));
    assert!(problems.iter().any(|p| p.contains("PORT is declared by no ARG")), "{problems:?}");
}
