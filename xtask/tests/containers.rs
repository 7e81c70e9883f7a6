//! The container images build binaries the workspace really has.
//!
//! CI has no Docker engine, so nothing here builds an image. Instead each Dockerfile is
//! read and held against `cargo metadata`: a renamed package or binary, a Dockerfile that
//! lost its port or its non-root user, or a `.dockerignore` entry hiding a file the code
//! embeds fails here rather than in someone's `docker build` or `skaffold dev`.

use std::{
    path::{Component, Path, PathBuf},
    process::Command,
};

/// One image per deployable binary. The image is `ghcr.io/busbar-dev/<bin>`, the name the
/// charts, the manifests and skaffold.yaml use; the ports are the blog's contract.
struct Image {
    dockerfile: &'static str,
    bin: &'static str,
    port: u16,
}

const IMAGES: [Image; 6] = [
    Image { dockerfile: "services/blog/posts/Dockerfile", bin: "posts", port: 4000 },
    Image { dockerfile: "services/blog/comments/Dockerfile", bin: "comments", port: 4001 },
    Image { dockerfile: "services/blog/query/Dockerfile", bin: "query", port: 4002 },
    Image { dockerfile: "services/blog/moderation/Dockerfile", bin: "moderation", port: 4003 },
    Image { dockerfile: "services/event-bus/Dockerfile", bin: "event-bus", port: 4005 },
    Image { dockerfile: "operator/Dockerfile", bin: "busbar-operator", port: 8080 },
];

#[test]
fn every_dockerfile_builds_and_runs_a_binary_the_workspace_has() {
    let packages = workspace_packages();
    let mut problems = Vec::new();
    for image in &IMAGES {
        problems.extend(check_image(image, &read(image.dockerfile), &packages));
    }
    assert!(problems.is_empty(), "Dockerfiles out of step with the workspace:\n  {}", problems.join("\n  "));
}

#[test]
fn renaming_a_binary_breaks_its_image_check() {
    let mut packages = workspace_packages();
    let posts = packages.iter_mut().find(|p| p.name == "posts").expect("the workspace has a posts package");
    posts.bins = vec!["posts-server".into()];
    let problems = check_image(&IMAGES[0], &read(IMAGES[0].dockerfile), &packages);
    assert!(
        problems.iter().any(|p| p.contains("no binary `posts`")),
        "a Dockerfile building a binary that no longer exists must be reported, got {problems:?}"
    );
}

#[test]
fn every_service_binary_has_an_image_and_no_dockerfile_is_forgotten() {
    let packages = workspace_packages();
    let mut problems = Vec::new();
    // Every binary of a package under services/ is a deployable service, except the
    // shop's, which run under `busbar up` but have no images, charts or overlays yet
    // (issue 15: one parameterised Dockerfile and a generic chart are to come).
    for package in packages.iter().filter(|p| p.dir.starts_with("services") && !p.dir.starts_with("services/shop")) {
        for bin in &package.bins {
            if !IMAGES.iter().any(|i| i.bin == bin) {
                problems.push(format!("{} builds binary `{bin}` but no image is declared for it", package.name));
            }
        }
    }
    // A Dockerfile nobody checks would drift unnoticed.
    for package in &packages {
        let dockerfile = package.dir.join("Dockerfile");
        if root().join(&dockerfile).exists() && !IMAGES.iter().any(|i| Path::new(i.dockerfile) == dockerfile) {
            problems.push(format!("{} is not listed in IMAGES in this test", dockerfile.display()));
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn all_images_share_one_builder_and_one_runtime() {
    // Bumping the toolchain or the runtime in one Dockerfile only would make the images
    // disagree on glibc or on the compiler the workspace is tested with.
    let stages: Vec<(String, Vec<String>)> = IMAGES
        .iter()
        .map(|i| {
            let from = instructions(&read(i.dockerfile))
                .into_iter()
                .filter(|(k, _)| k == "FROM")
                .map(|(_, rest)| rest.split_whitespace().next().unwrap_or_default().to_owned())
                .collect();
            (i.dockerfile.to_owned(), from)
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

// ---- the checks -------------------------------------------------------------------------

/// What `cargo metadata` says about one workspace package.
#[derive(Debug, Clone)]
struct Package {
    name: String,
    /// The package's directory, relative to the workspace root.
    dir: PathBuf,
    bins: Vec<String>,
}

/// Everything wrong with one image's Dockerfile, one message per problem.
fn check_image(image: &Image, text: &str, packages: &[Package]) -> Vec<String> {
    let mut problems = Vec::new();
    let mut problem = |msg: String| problems.push(format!("{}: {msg}", image.dockerfile));
    let instructions = instructions(text);
    let last_from = instructions.iter().rposition(|(k, _)| k == "FROM").unwrap_or(0);
    let (build_stages, runtime) = instructions.split_at(last_from);

    // The build: one `cargo build --release --locked --package P --bin B`.
    let builds: Vec<CargoBuild> =
        build_stages.iter().filter(|(k, _)| k == "RUN").filter_map(|(_, run)| cargo_build(run)).collect();
    let [build] = builds.as_slice() else {
        problem(format!("expected one `cargo build` in the build stage, found {}", builds.len()));
        return problems;
    };
    for flag in ["--release", "--locked"] {
        if !build.flags.iter().any(|f| f == flag) {
            problem(format!("`cargo build` lacks {flag}"));
        }
    }
    let Some(package) = packages.iter().find(|p| Some(&p.name) == build.package.as_ref()) else {
        problem(format!("builds package {:?}, which is not in the workspace", build.package));
        return problems;
    };
    if Path::new(image.dockerfile).parent() != Some(package.dir.as_path()) {
        problem(format!("builds package {} from {}, not the crate it sits in", package.name, package.dir.display()));
    }
    if build.bins != [image.bin] {
        problem(format!("should build exactly `--bin {}`, builds {:?}", image.bin, build.bins));
    }
    // Every binary the Dockerfile names, wherever it names it, must be one the package has.
    let mut named: Vec<String> = build.bins.clone();
    named.extend(build_stages.iter().filter(|(k, _)| k == "RUN").flat_map(|(_, run)| release_binaries(run)));
    let entrypoint = runtime.iter().rev().find(|(k, _)| k == "ENTRYPOINT").map(|(_, e)| exec_form(e));
    let entrypoint = match entrypoint {
        Some(Some(argv)) if !argv.is_empty() => argv[0].clone(),
        _ => {
            problem("needs an exec-form ENTRYPOINT [\"/path/to/binary\"]".into());
            String::new()
        }
    };
    named.push(basename(&entrypoint).to_owned());
    for bin in named.iter().filter(|b| !b.is_empty()) {
        if !package.bins.contains(bin) {
            problem(format!(
                "names binary `{bin}`, but package {} has no binary `{bin}` (it has {:?})",
                package.name, package.bins
            ));
        }
    }
    // The runtime stage must copy that binary to where ENTRYPOINT runs it from.
    let copied = runtime.iter().filter(|(k, _)| k == "COPY").filter_map(|(_, c)| copy_from(c)).any(|(src, dest)| {
        basename(&src) == image.bin && (dest == entrypoint || dest.trim_end_matches('/') == parent(&entrypoint))
    });
    if !copied {
        problem(format!(
            "the final stage does not COPY --from the build stage the `{}` binary to {entrypoint}",
            image.bin
        ));
    }
    // Non-root by number: kubelet can only verify runAsNonRoot against a numeric USER.
    match runtime.iter().rev().find(|(k, _)| k == "USER").map(|(_, u)| u.trim()) {
        Some(user) if user.split(':').all(|id| id.parse::<u32>().is_ok_and(|n| n != 0)) => {}
        other => problem(format!("the final stage needs a numeric non-root USER (e.g. 65532:65532), has {other:?}")),
    }
    let exposed: Vec<&str> =
        runtime.iter().filter(|(k, _)| k == "EXPOSE").flat_map(|(_, e)| e.split_whitespace()).collect();
    if !exposed.iter().any(|p| p.split('/').next() == Some(&image.port.to_string())) {
        problem(format!("should EXPOSE {}, exposes {exposed:?}", image.port));
    }
    problems
}

struct CargoBuild {
    package: Option<String>,
    bins: Vec<String>,
    flags: Vec<String>,
}

/// The `cargo build` in a RUN line, up to the next `&&` or `;`.
fn cargo_build(run: &str) -> Option<CargoBuild> {
    let words: Vec<&str> = run.split_whitespace().collect();
    let start = words.windows(2).position(|w| w == ["cargo", "build"])? + 2;
    let args: Vec<&str> = words[start..].iter().copied().take_while(|w| !matches!(*w, "&&" | ";" | "||")).collect();
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

/// Binaries a RUN line takes out of cargo's output directory (`target/release/<bin>`).
fn release_binaries(run: &str) -> Vec<String> {
    run.split_whitespace()
        .filter_map(|w| w.split_once("target/release/").map(|(_, b)| b.trim_end_matches([';', '"', '\''])))
        .filter(|b| !b.is_empty() && !b.contains('/'))
        .map(str::to_owned)
        .collect()
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
    match json::parse(arg.trim()).ok()? {
        json::Value::Array(items) => items.into_iter().map(|v| v.as_str().map(str::to_owned)).collect(),
        _ => None,
    }
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
    let metadata = json::parse(std::str::from_utf8(&out.stdout).unwrap()).expect("cargo metadata prints JSON");
    let root = root();
    metadata["packages"]
        .items()
        .iter()
        .map(|p| {
            let manifest = Path::new(p["manifest_path"].as_str().unwrap());
            Package {
                name: p["name"].as_str().unwrap().to_owned(),
                dir: manifest.parent().unwrap().strip_prefix(&root).unwrap_or(manifest).to_path_buf(),
                bins: p["targets"]
                    .items()
                    .iter()
                    .filter(|t| t["kind"].items().iter().any(|k| k.as_str() == Some("bin")))
                    .map(|t| t["name"].as_str().unwrap().to_owned())
                    .collect(),
            }
        })
        .collect()
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
fn dockerfile_reading_follows_continuations_and_skips_comments() {
    let text = "# syntax=docker/dockerfile:1\nFROM a AS build\nRUN --mount=type=cache,target=/x \\\n    # a comment inside\n    cargo build --release --locked -p posts --bin=posts \\\n    && install target/release/posts /out/posts\nentrypoint [\"/usr/local/bin/posts\"]\n";
    let ins = instructions(text);
    assert_eq!(ins.iter().map(|(k, _)| k.as_str()).collect::<Vec<_>>(), ["FROM", "RUN", "ENTRYPOINT"]);
    let build = cargo_build(&ins[1].1).unwrap();
    assert_eq!(build.package.as_deref(), Some("posts"));
    assert_eq!(build.bins, ["posts"]);
    assert!(build.flags.contains(&"--locked".to_owned()));
    assert_eq!(release_binaries(&ins[1].1), ["posts"]);
    assert_eq!(exec_form(&ins[2].1).unwrap(), ["/usr/local/bin/posts"]);
}

/// Just enough JSON for `cargo metadata` and exec-form instructions: this test keeps xtask
/// free of dependencies beyond anyhow.
mod json {
    use std::{iter::Peekable, str::Chars};

    #[derive(Debug, Clone, PartialEq)]
    pub enum Value {
        Null,
        Bool(bool),
        Number(String),
        String(String),
        Array(Vec<Value>),
        Object(Vec<(String, Value)>),
    }

    static NULL: Value = Value::Null;

    impl Value {
        pub fn as_str(&self) -> Option<&str> {
            match self {
                Value::String(s) => Some(s),
                _ => None,
            }
        }

        pub fn items(&self) -> &[Value] {
            match self {
                Value::Array(items) => items,
                _ => &[],
            }
        }
    }

    impl std::ops::Index<&str> for Value {
        type Output = Value;
        fn index(&self, key: &str) -> &Value {
            match self {
                Value::Object(fields) => fields.iter().find(|(k, _)| k == key).map_or(&NULL, |(_, v)| v),
                _ => &NULL,
            }
        }
    }

    pub fn parse(text: &str) -> Result<Value, String> {
        let mut chars = text.chars().peekable();
        let value = parse_value(&mut chars)?;
        skip_ws(&mut chars);
        match chars.next() {
            None => Ok(value),
            Some(c) => Err(format!("unexpected `{c}` after the value")),
        }
    }

    fn skip_ws(chars: &mut Peekable<Chars>) {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
    }

    fn expect(chars: &mut Peekable<Chars>, word: &str) -> Result<(), String> {
        for w in word.chars() {
            if chars.next() != Some(w) {
                return Err(format!("expected `{word}`"));
            }
        }
        Ok(())
    }

    fn parse_value(chars: &mut Peekable<Chars>) -> Result<Value, String> {
        skip_ws(chars);
        match chars.peek().copied() {
            Some('n') => expect(chars, "null").map(|_| Value::Null),
            Some('t') => expect(chars, "true").map(|_| Value::Bool(true)),
            Some('f') => expect(chars, "false").map(|_| Value::Bool(false)),
            Some('"') => parse_string(chars).map(Value::String),
            Some('[') => {
                chars.next();
                let mut items = Vec::new();
                skip_ws(chars);
                if chars.next_if_eq(&']').is_some() {
                    return Ok(Value::Array(items));
                }
                loop {
                    items.push(parse_value(chars)?);
                    skip_ws(chars);
                    match chars.next() {
                        Some(',') => {}
                        Some(']') => return Ok(Value::Array(items)),
                        other => return Err(format!("expected `,` or `]`, found {other:?}")),
                    }
                }
            }
            Some('{') => {
                chars.next();
                let mut fields = Vec::new();
                skip_ws(chars);
                if chars.next_if_eq(&'}').is_some() {
                    return Ok(Value::Object(fields));
                }
                loop {
                    skip_ws(chars);
                    let key = parse_string(chars)?;
                    skip_ws(chars);
                    expect(chars, ":")?;
                    fields.push((key, parse_value(chars)?));
                    skip_ws(chars);
                    match chars.next() {
                        Some(',') => {}
                        Some('}') => return Ok(Value::Object(fields)),
                        other => return Err(format!("expected `,` or `}}`, found {other:?}")),
                    }
                }
            }
            Some(c) if c == '-' || c.is_ascii_digit() => {
                let mut n = String::new();
                while let Some(c) = chars.next_if(|c| c.is_ascii_digit() || "+-.eE".contains(*c)) {
                    n.push(c);
                }
                Ok(Value::Number(n))
            }
            other => Err(format!("unexpected {other:?}")),
        }
    }

    fn parse_string(chars: &mut Peekable<Chars>) -> Result<String, String> {
        expect(chars, "\"")?;
        let mut s = String::new();
        loop {
            match chars.next().ok_or("unterminated string")? {
                '"' => return Ok(s),
                '\\' => match chars.next().ok_or("unterminated escape")? {
                    'n' => s.push('\n'),
                    't' => s.push('\t'),
                    'r' => s.push('\r'),
                    'b' => s.push('\u{8}'),
                    'f' => s.push('\u{c}'),
                    'u' => {
                        let hex: String = chars.by_ref().take(4).collect();
                        let code = u32::from_str_radix(&hex, 16).map_err(|_| format!("bad escape \\u{hex}"))?;
                        // Surrogate halves (only for characters outside the BMP) are not needed here.
                        s.push(char::from_u32(code).unwrap_or(char::REPLACEMENT_CHARACTER));
                    }
                    c => s.push(c),
                },
                c => s.push(c),
            }
        }
    }

    #[test]
    fn parses_what_cargo_metadata_prints() {
        let v = parse(r#"{"a": [1, -2.5e3, true, null, "x\"\u0041\n"], "b": {}}"#).unwrap();
        assert_eq!(v["a"].items().len(), 5);
        assert_eq!(v["a"].items()[4].as_str(), Some("x\"A\n"));
        assert_eq!(v["missing"], Value::Null);
        assert!(parse("[1,]").is_err() && parse("{} x").is_err());
    }
}
