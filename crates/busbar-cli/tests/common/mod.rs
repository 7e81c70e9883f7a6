//! The blog across real processes, for end-to-end tests: either `busbar up` as a user
//! runs it, or each service as its own process (the bus as `busbar __serve event-bus`) so
//! a test can kill and restart one of them.

#![allow(dead_code)]

use std::{collections::HashMap, path::PathBuf, process::Command, time::Duration};

use serde_json::{Value, json};
use testkit::{pg::TempDb, process::Proc};

pub const SERVICES: [&str; 4] = ["posts", "comments", "moderation", "query"];
/// The shop's services: each a package whose program has the same name.
pub const SHOP: [&str; 4] = ["users", "products", "orders", "user-products"];
pub const T: Duration = Duration::from_secs(30);

/// Ports for the bus and each service, free at the time of asking.
pub fn ports() -> HashMap<&'static str, u16> {
    ports_for(&SERVICES)
}

/// Ports for the bus and these services, held for this test process (see `testkit::free_port`).
pub fn ports_for(services: &[&'static str]) -> HashMap<&'static str, u16> {
    std::iter::once("event-bus").chain(services.iter().copied()).map(|n| (n, testkit::free_port())).collect()
}

/// `busbar up` as a user runs it, on the manifest `spec(ports)` (written to
/// `dir/servicebus.yaml`, with `dir/data` as the data directory), until it says all are
/// ready.
pub async fn busbar_up(
    dir: &std::path::Path,
    services: &[&'static str],
    spec: impl Fn(&HashMap<&'static str, u16>) -> String,
    extra: &[String],
) -> (Proc, HashMap<&'static str, u16>) {
    busbar_up_with_env(dir, services, spec, extra, &[]).await
}

/// [`busbar_up`] with `env` set for busbar up (its processes inherit it).
pub async fn busbar_up_with_env(
    dir: &std::path::Path,
    services: &[&'static str],
    spec: impl Fn(&HashMap<&'static str, u16>) -> String,
    extra: &[String],
    env: &[(&str, &str)],
) -> (Proc, HashMap<&'static str, u16>) {
    let ports = ports_for(services);
    std::fs::write(dir.join("servicebus.yaml"), spec(&ports)).unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_busbar"));
    cmd.arg("up").arg("-f").arg(dir.join("servicebus.yaml")).arg("--data-dir").arg(dir.join("data"));
    cmd.args(["--bus-port", &ports["event-bus"].to_string()]).args(extra).envs(env.iter().copied());
    let mut p = Proc::spawn("busbar up", cmd, &dir.join("up.log"));
    let deadline = std::time::Instant::now() + 2 * T;
    while !p.log().contains("All ready") {
        if let Some(status) = p.exited() {
            panic!("busbar up exited ({status}) before it was ready:\n{}", p.log_tail());
        }
        assert!(std::time::Instant::now() < deadline, "busbar up not ready after {:?}:\n{}", 2 * T, p.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let last = services.last().expect("a service");
    p.wait_ready(&format!("http://127.0.0.1:{}/readyz", ports[last]), T).await;
    (p, ports)
}

/// The pid `busbar up` last logged for `service` ("busbar: NAME started (pid N)").
pub fn logged_pid(log: &str, service: &str) -> Option<i32> {
    let marker = format!("busbar: {service} started (pid ");
    let at = log.rfind(&marker)? + marker.len();
    log[at..].split(')').next()?.parse().ok()
}

/// SIGKILL to a process `busbar up` started (the test's own grandchild).
pub fn kill9(pid: i32) {
    // SAFETY: kill(2) on a pid read from the log of the busbar up this test started.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGKILL) }, 0, "kill -9 {pid}");
}

/// Comments on `post`, one at a time; a request that fails while comments is down is
/// retried. Returns the contents comments acknowledged with 201.
pub fn comment_load(url: String, post: String, n: usize) -> tokio::task::JoinHandle<Vec<String>> {
    tokio::spawn(async move {
        let client = reqwest::Client::new();
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        let mut acknowledged = vec![];
        for i in 0..n {
            let content = if i % 4 == 0 { format!("c{i} orange") } else { format!("c{i}") };
            loop {
                assert!(tokio::time::Instant::now() < deadline, "could not create comment {i} within 90 s");
                let r = client
                    .post(format!("{url}/posts/{post}/comments"))
                    .json(&json!({"content": content}))
                    .timeout(Duration::from_secs(5))
                    .send()
                    .await;
                match r {
                    Ok(r) if r.status().as_u16() == 201 => break,
                    _ => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            acknowledged.push(content);
        }
        acknowledged
    })
}

pub use testkit::apps::blog_spec;

pub enum Backend {
    Sqlite,
    Postgres,
}

/// How [`Blog::start_with`] runs the built-in bus; the default is what [`Blog::start`] uses.
#[derive(Clone, Debug)]
pub struct Options {
    /// Where the bus pushes each subscriber's events (`{name}` and `{port}` come from the
    /// spec), e.g. a fault-injecting proxy's address.
    pub endpoint_template: String,
    /// `maxDeliver` in the spec. With the fast test backoff (50 ms, 200 ms), the default
    /// 10 attempts give up on a subscriber that is down for about 2 s.
    pub max_deliver: u32,
}

impl Default for Options {
    fn default() -> Self {
        Options { endpoint_template: "http://127.0.0.1:{port}/events".into(), max_deliver: 10 }
    }
}

/// Each service as its own process, started and killed individually.
pub struct Blog {
    pub dir: testkit::TempDir,
    pub ports: HashMap<&'static str, u16>,
    pub procs: HashMap<String, Proc>,
    pub db_urls: HashMap<String, String>,
    _dbs: Vec<TempDb>,
    /// (NATS URL, bus name) when on JetStream.
    nats: Option<(String, String)>,
    endpoint_template: String,
}

impl Blog {
    pub async fn start(backend: Backend) -> Blog {
        Blog::start_with(backend, Options::default()).await
    }

    pub async fn start_with(backend: Backend, options: Options) -> Blog {
        let dir = testkit::temp_dir();
        let ports = ports();
        let mut spec = blog_spec(&ports);
        assert!(spec.contains("maxDeliver: 10"), "the blog manifest's delivery policy changed; update the harness");
        spec = spec.replace("maxDeliver: 10", &format!("maxDeliver: {}", options.max_deliver));
        std::fs::write(dir.path().join("servicebus.yaml"), spec).unwrap();
        let mut dbs = vec![];
        let mut db_urls = HashMap::new();
        for name in ["event-bus", "posts", "comments", "moderation", "query"] {
            let url = match backend {
                Backend::Sqlite => format!("sqlite://{}/{name}.db", dir.path().display()),
                Backend::Postgres => {
                    let db = TempDb::create().await;
                    let url = db.url.clone();
                    dbs.push(db);
                    url
                }
            };
            db_urls.insert(name.to_owned(), url);
        }
        let mut blog = Blog {
            dir,
            ports,
            procs: HashMap::new(),
            db_urls,
            _dbs: dbs,
            nats: None,
            endpoint_template: options.endpoint_template,
        };
        blog.start_process("event-bus").await;
        for s in SERVICES {
            blog.start_process(s).await;
        }
        blog
    }

    /// The blog on JetStream at `nats_url` (bus `bus`), SQLite per service. The services
    /// are started but not waited for: NATS may not be up yet.
    pub fn start_on_jetstream(nats_url: &str, bus: &str) -> Blog {
        let dir = testkit::temp_dir();
        let ports = ports();
        let db_urls =
            SERVICES.iter().map(|n| (n.to_string(), format!("sqlite://{}/{n}.db", dir.path().display()))).collect();
        let mut blog = Blog {
            dir,
            ports,
            procs: HashMap::new(),
            db_urls,
            _dbs: vec![],
            nats: Some((nats_url.into(), bus.into())),
            endpoint_template: Options::default().endpoint_template,
        };
        for s in SERVICES {
            let p = blog.spawn(s);
            blog.procs.insert(s.to_owned(), p);
        }
        blog
    }

    pub async fn wait_all_ready(&mut self) {
        for s in SERVICES {
            let url = format!("{}/readyz", self.url(s));
            self.procs.get_mut(s).unwrap().wait_ready(&url, T).await;
        }
    }

    pub fn url(&self, name: &str) -> String {
        format!("http://127.0.0.1:{}", self.ports[name])
    }

    pub async fn start_process(&mut self, name: &str) {
        let mut p = self.spawn(name);
        p.wait_ready(&format!("{}/readyz", self.url(name)), T).await;
        self.procs.insert(name.to_owned(), p);
    }

    fn spawn(&self, name: &str) -> Proc {
        let mut cmd = if name == "event-bus" {
            let mut c = Command::new(env!("CARGO_BIN_EXE_busbar"));
            c.args(["__serve", name]);
            c
        } else {
            Command::new(build_programs(&SERVICES).join(name))
        };
        if name == "event-bus" {
            cmd.args(["--listen", &format!("127.0.0.1:{}", self.ports[name]), "--database-url", &self.db_urls[name]])
                .arg("--routes")
                .arg(self.dir.path().join("servicebus.yaml"))
                .args(["--endpoint-template", &self.endpoint_template]);
        } else {
            cmd.env("HOST", "127.0.0.1")
                .env("PORT", self.ports[name].to_string())
                .env("DATABASE_URL", &self.db_urls[name])
                .env("BUSBAR_SERVICE", name)
                .env("BUSBAR_BACKOFF", "50ms,200ms")
                .env("BUSBAR_ACK_WAIT", "2s");
            match &self.nats {
                None => cmd.env("BUSBAR_URL", self.url("event-bus")),
                Some((url, bus)) => {
                    cmd.env("BUSBAR_TRANSPORT", "jetstream").env("BUSBAR_URL", url).env("BUSBAR_BUS", bus)
                }
            };
        }
        Proc::spawn(name, cmd, &self.dir.path().join(format!("{name}.log")))
    }

    pub fn kill9(&mut self, name: &str) {
        self.procs.get_mut(name).expect("running").kill9();
    }

    pub fn sqlite_file(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.db"))
    }
}

pub async fn create_post(base: &str, title: &str) -> String {
    let r = reqwest::Client::new().post(format!("{base}/posts")).json(&json!({"title": title})).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 201);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["title"], title);
    v["id"].as_str().unwrap().to_owned()
}

/// Posts a comment, retrying while comments has not yet heard of the post (404).
pub async fn create_comment(base: &str, post_id: &str, content: &str) -> Value {
    let client = reqwest::Client::new();
    testkit::wait_until(T, "comments to know the post", || async {
        let r = client
            .post(format!("{base}/posts/{post_id}/comments"))
            .json(&json!({"content": content}))
            .send()
            .await
            .ok()?;
        match r.status().as_u16() {
            201 => Some(r.json::<Value>().await.unwrap()),
            404 => None,
            other => panic!("unexpected {other}: {}", r.text().await.unwrap_or_default()),
        }
    })
    .await
}

pub async fn get(url: &str) -> Value {
    reqwest::get(url).await.unwrap().json().await.unwrap()
}

/// The course scenario: a post, an approved and a rejected comment, seen alike by query
/// and comments.
pub async fn blog_scenario(posts: &str, comments: &str, query: &str) {
    let post = create_post(posts, "Hello world").await;
    let after_first = create_comment(comments, &post, "hello").await;
    assert_eq!(after_first.as_array().unwrap().len(), 1);
    assert_eq!(after_first[0]["status"], "pending");
    let all = create_comment(comments, &post, "I like orange").await;
    assert_eq!(all.as_array().unwrap().len(), 2, "201 carries the post's whole comment array");

    let view = testkit::wait_until(T, "query to show both comments moderated", || async {
        let v = get(&format!("{query}/posts")).await;
        let c = v[&post]["comments"].as_array()?.clone();
        (c.len() == 2 && c.iter().all(|c| c["status"] != "pending")).then_some(v)
    })
    .await;
    let p = &view[&post];
    assert_eq!(p["id"], post.as_str());
    assert_eq!(p["title"], "Hello world");
    let statuses: Vec<(&str, &str)> = p["comments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["content"].as_str().unwrap(), c["status"].as_str().unwrap()))
        .collect();
    assert_eq!(statuses, [("hello", "approved"), ("I like orange", "rejected")]);

    let from_comments = get(&format!("{comments}/posts/{post}/comments")).await;
    assert_eq!(from_comments, p["comments"], "comments and query agree");
}

/// Builds these packages' programs into the directory `busbar` runs from (see
/// [`testkit::apps::build_programs`]), and returns that directory.
pub fn build_programs(packages: &[&str]) -> PathBuf {
    let busbar = PathBuf::from(env!("CARGO_BIN_EXE_busbar"));
    let bin_dir = busbar.parent().expect("busbar is in a directory").to_path_buf();
    testkit::apps::build_programs(&bin_dir, packages);
    bin_dir
}
