//! One test's world: its transport (a built-in bus, two bus processes behind a forwarder,
//! a private nats-server, or a three-node JetStream cluster), its databases (SQLite files
//! in a temp dir, or throwaway PostgreSQL databases), its ServiceBus manifest, and the
//! admin side of dead letters. Everything it started stops, and every database it created
//! is dropped, when it is dropped, also when the test fails.

use std::path::PathBuf;

use busbar::{
    bus_api::{DeadLetter, SubscriberStatus},
    credentials::{ADMIN, BusKey},
    names::{durable, stream_name},
    transport::jetstream::JetStream,
};
use busbar_client::bus::BusClient;
use busbar_conformance::events::{ItemAdded, ItemEvent, TYPES};
use testkit::{TempDir, nats_cluster::NatsCluster, pg::TempDb};

use super::{
    Combo, STARTUP, Store, Transport,
    bus::Bus,
    forwarder::Forwarder,
    manifest::{Delivery, Manifest, ServiceDecl},
    probe::Probe,
};

/// How the transport is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Topology {
    /// One bus process, or one nats-server.
    Single,
    /// Two bus processes on one database behind a [`Forwarder`] (built-in bus only).
    TwoBuses,
    /// Three nats-servers in a JetStream cluster, streams with 3 replicas.
    Cluster3,
}

/// The publishing service every case declares.
pub const PUBLISHER: &str = "pub";

/// Longest a second bus process may take to settle as the standby.
const STANDBY: std::time::Duration = std::time::Duration::from_secs(10);

pub struct World {
    pub case: String,
    pub combo: Combo,
    /// A short unique token: the bus's name and a part of every database's name.
    pub id: String,
    pub dir: TempDir,
    pub manifest: Manifest,
    routes: PathBuf,
    key: BusKey,
    pub buses: Vec<Bus>,
    pub forwarder: Option<Forwarder>,
    pub nats: Option<testkit::Nats>,
    pub cluster: Option<NatsCluster>,
    extra_env: Vec<(String, String)>,
    js: tokio::sync::OnceCell<JetStream>,
    // Last: dropped (with FORCE) after the processes above are gone.
    pg: Vec<TempDb>,
}

impl World {
    pub async fn new(case: &str, combo: Combo) -> World {
        Self::with(case, combo, Delivery::default(), Topology::Single).await
    }

    /// Starts the transport for `combo` laid out as `topology`, with `PUBLISHER` declared.
    pub async fn with(case: &str, combo: Combo, delivery: Delivery, topology: Topology) -> World {
        let id = format!("c{}", &uuid::Uuid::now_v7().simple().to_string()[24..]);
        println!("{case}: world {id}");
        let dir = testkit::temp_dir();
        let manifest = Manifest {
            bus: id.clone(),
            transport: combo.transport,
            nats_url: None,
            delivery,
            services: vec![ServiceDecl {
                name: PUBLISHER.into(),
                port: None,
                publishes: TYPES.iter().map(|t| t.to_string()).collect(),
                subscribes: vec![],
                start_from_now: false,
            }],
        };
        let key = BusKey::generate();
        let mut w = World {
            case: case.to_owned(),
            combo,
            id,
            routes: dir.path().join("servicebus.json"),
            dir,
            manifest,
            key,
            buses: vec![],
            forwarder: None,
            nats: None,
            cluster: None,
            extra_env: vec![],
            js: tokio::sync::OnceCell::new(),
            pg: vec![],
        };
        match (combo.transport, topology) {
            (Transport::Builtin, Topology::Cluster3) | (Transport::JetStream, Topology::TwoBuses) => {
                panic!("{case}: {topology:?} does not exist on {combo}")
            }
            (Transport::Builtin, _) => {
                w.write_routes();
                let key_path = w.dir.path().join("bus.key");
                std::fs::write(&key_path, w.key.to_hex()).unwrap();
                let db = w.database("bus").await;
                let a = Bus::start("bus-a", w.dir.path(), &db, &w.routes, &key_path).await;
                let mut a = a;
                wait_bus_ready(&mut a).await;
                w.buses.push(a);
                if topology == Topology::TwoBuses {
                    let b = Bus::start("bus-b", w.dir.path(), &db, &w.routes, &key_path).await;
                    w.buses.push(b);
                    w.forwarder = Some(Forwarder::start(w.buses.iter().map(Bus::addr).collect()).await);
                }
            }
            (Transport::JetStream, Topology::Single) => {
                let mut nats = testkit::Nats::new();
                // No case kills this server, so an fsync per message would only slow it down.
                nats.sync_always = false;
                nats.start().await;
                w.manifest.nats_url = Some(nats.url());
                w.nats = Some(nats);
            }
            (Transport::JetStream, Topology::Cluster3) => {
                let mut cluster = NatsCluster::new(3);
                cluster.start().await;
                w.manifest.nats_url = Some(cluster.url());
                w.cluster = Some(cluster);
                // The SDK creates the streams with this many replicas (issue 13).
                w.extra_env.push(("BUSBAR_JETSTREAM_REPLICAS".into(), "3".into()));
            }
        }
        w
    }

    /// The one URL services are given for their transport.
    pub fn transport_url(&self) -> String {
        match self.combo.transport {
            Transport::Builtin => match &self.forwarder {
                Some(f) => f.url(),
                None => self.buses[0].url.clone(),
            },
            Transport::JetStream => self.manifest.nats_url.clone().expect("NATS started"),
        }
    }

    /// A database for `service`: a SQLite file in the world's directory, or a fresh
    /// PostgreSQL database (dropped with the world). Replicas of a service share one.
    pub async fn database(&mut self, service: &str) -> String {
        match self.combo.store {
            Store::Sqlite => format!("sqlite://{}/{service}.db", self.dir.path().display()),
            Store::Postgres => {
                let db = TempDb::create_named(&format!("conf_{}_{}", self.id, service.replace('-', "_"))).await;
                let url = db.url.clone();
                self.pg.push(db);
                url
            }
        }
    }

    /// Declares subscriber `name` of `types` on a fresh port (and tells the bus).
    pub fn declare_subscriber(&mut self, name: &str, types: &[&str], start_from_now: bool) -> u16 {
        let port = testkit::free_port();
        self.manifest.services.push(ServiceDecl {
            name: name.into(),
            port: Some(port),
            publishes: vec![],
            subscribes: types.iter().map(|t| t.to_string()).collect(),
            start_from_now,
        });
        self.write_routes();
        port
    }

    fn write_routes(&self) {
        if self.combo.transport == Transport::Builtin {
            // Written whole and renamed, so the bus never reads half a file.
            let tmp = self.routes.with_extension("tmp");
            std::fs::write(&tmp, self.manifest.json().to_string()).unwrap();
            std::fs::rename(&tmp, &self.routes).unwrap();
        }
    }

    /// Starts a probe process for declared `service`, named `replica`, on `db_url`.
    /// Sets `key=value` in the environment of every probe started from now on.
    pub fn set_probe_env(&mut self, key: &str, value: &str) {
        self.extra_env.push((key.to_owned(), value.to_owned()));
    }

    pub async fn start_probe(&self, service: &str, replica: &str, db_url: &str) -> Probe {
        let decl = self.manifest.services.iter().find(|s| s.name == service).expect("declared service");
        let port = decl.port.unwrap_or_else(testkit::free_port);
        let mut env = self.manifest.env(service, &self.transport_url());
        env.push(("DATABASE_URL".into(), db_url.to_owned()));
        if self.combo.transport == Transport::Builtin {
            env.push(("BUSBAR_TOKEN".into(), self.key.token(service)));
        }
        env.extend(self.extra_env.iter().cloned());
        Probe::start(service, replica, port, env, self.dir.path().join(format!("{replica}.log"))).await
    }

    /// Declares the publisher's database and starts one publisher process.
    pub async fn start_publisher(&mut self) -> Probe {
        let db = self.database(PUBLISHER).await;
        self.start_probe(PUBLISHER, PUBLISHER, &db).await
    }

    /// Declares subscriber `name`, starts it on a database of its own, and waits until its
    /// subscription is live on the transport.
    pub async fn start_subscriber(&mut self, name: &str, types: &[&str], start_from_now: bool) -> Probe {
        self.declare_subscriber(name, types, start_from_now);
        if self.combo.transport == Transport::Builtin {
            // The bus refuses a service its routes do not list yet (403 on replay).
            let admin = self.admin();
            testkit::wait_until(STARTUP, &format!("the bus to load the route of {name}"), || async {
                admin.subscribers().await.ok()?.iter().any(|s| s.name == name).then_some(())
            })
            .await;
        }
        let db = self.database(name).await;
        let p = self.start_probe(name, name, &db).await;
        self.await_subscription(name, &p).await;
        p
    }

    /// Waits until the transport delivers to `name`: the bus has its route and cursor, or
    /// its durable JetStream consumer exists.
    pub async fn await_subscription(&self, name: &str, p: &Probe) {
        let from_now = self.manifest.services.iter().any(|s| s.name == name && s.start_from_now);
        let start = std::time::Instant::now();
        loop {
            let live = match self.combo.transport {
                Transport::Builtin => self.admin().subscribers().await.ok().is_some_and(|subs| {
                    // Before its cursor exists the bus shows position 0 and the whole log as
                    // lag; a subscriber from now is live once its cursor starts at the head.
                    subs.iter().any(|s| s.name == name && (!from_now || s.position > 0 || s.lag == 0))
                }),
                Transport::JetStream => {
                    let js = self.js().await;
                    match js.context().get_stream(stream_name(js.bus())).await {
                        Ok(stream) => stream.consumer_info(durable(name)).await.is_ok(),
                        Err(_) => false,
                    }
                }
            };
            if live {
                return;
            }
            assert!(
                start.elapsed() < STARTUP,
                "{}: subscription of {name} not live after {STARTUP:?}\n{}\n{}",
                self.case,
                p.log_tail(),
                self.diagnostics()
            );
            tokio::time::sleep(std::time::Duration::from_millis(25)).await;
        }
    }

    /// The admin client of the built-in bus (through the forwarder when there is one).
    pub fn admin(&self) -> BusClient {
        BusClient::new(&self.transport_url(), Some(self.key.token(ADMIN)))
    }

    /// An admin connection to JetStream.
    pub async fn js(&self) -> &JetStream {
        self.js
            .get_or_init(|| async {
                let url = self.manifest.nats_url.clone().expect("NATS started");
                JetStream::connect(&url, &self.id).await.unwrap_or_else(|e| panic!("connect to NATS at {url}: {e}"))
            })
            .await
    }

    /// `subscriber`'s dead letters, through the transport's own API.
    pub async fn dead_letters(&self, subscriber: &str) -> Result<Vec<DeadLetter>, String> {
        match self.combo.transport {
            Transport::Builtin => self.admin().dead_letters(Some(subscriber), 1000).await.map_err(|e| e.to_string()),
            Transport::JetStream => {
                self.js().await.list_dead_letters(Some(subscriber), 0, 1000).await.map_err(|e| e.to_string())
            }
        }
    }

    /// Each subscriber's row, as `busbar status` shows it, through the transport's own API.
    pub async fn subscriber_status(&self) -> Result<Vec<SubscriberStatus>, String> {
        match self.combo.transport {
            Transport::Builtin => self.admin().subscribers().await.map_err(|e| e.to_string()),
            Transport::JetStream => self.js().await.subscriber_status().await.map_err(|e| e.to_string()),
        }
    }

    /// Waits until `sub`'s status row shows `n` events parked, and returns the row.
    pub async fn await_status_parked(&self, sub: &Probe, n: u64, timeout: std::time::Duration) -> SubscriberStatus {
        let start = std::time::Instant::now();
        loop {
            let rows = self.subscriber_status().await;
            let row = rows.as_ref().ok().and_then(|r| r.iter().find(|r| r.name == sub.service));
            if let Some(row) = row.filter(|r| r.parked.is_some_and(|p| p.count == n)) {
                return row.clone();
            }
            assert!(
                start.elapsed() < timeout,
                "{} [{}]: the status of {} does not show {n} parked after {timeout:?}; last seen: {:?}\n{}\n{}",
                self.case,
                self.combo,
                sub.service,
                rows.map(|r| r.into_iter().find(|r| r.name == sub.service)),
                sub.log_tail(),
                self.diagnostics()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Waits until `subscriber`'s dead letters satisfy `done`, and returns them; fails with
    /// what it saw and the logs after `timeout`.
    pub async fn await_dead_letters(
        &self,
        sub: &Probe,
        timeout: std::time::Duration,
        what: &str,
        done: impl Fn(&[DeadLetter]) -> bool,
    ) -> Vec<DeadLetter> {
        let start = std::time::Instant::now();
        let mut last = Ok(vec![]);
        while start.elapsed() < timeout {
            last = self.dead_letters(&sub.service).await;
            if let Ok(d) = &last
                && done(d)
            {
                return d.clone();
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        let seen = match last {
            Ok(d) => d.iter().map(|d| format!("\n  {:?} {:?}: {}", d.ty, d.event_id, d.last_error)).collect::<String>(),
            Err(e) => format!(" cannot list them: {e}"),
        };
        panic!(
            "{} [{}]: timed out after {timeout:?} waiting for {what}; dead letters of {}:{seen}\n{}\n{}",
            self.case,
            self.combo,
            sub.service,
            sub.log_tail(),
            self.diagnostics()
        )
    }

    /// Redrives every dead letter of `subscriber`; returns how many.
    pub async fn redrive_all(&self, subscriber: &str) -> usize {
        match self.combo.transport {
            Transport::Builtin => {
                self.admin().redrive_all(Some(subscriber)).await.expect("redrive dead letters").redriving as usize
            }
            Transport::JetStream => {
                self.js().await.redrive_all(Some(subscriber)).await.expect("redrive dead letters").len()
            }
        }
    }

    /// Whether the transport has nothing left to deliver to `subscriber`: the bus's cursor
    /// is at the head with no failed attempt pending, or the durable has nothing pending
    /// or unacknowledged.
    pub async fn caught_up(&self, subscriber: &str) -> Result<bool, String> {
        let (backlog, retrying) = self.delivery_state(subscriber).await?;
        Ok(backlog == 0 && !retrying)
    }

    /// What the transport still holds for `subscriber` (undelivered plus unacknowledged):
    /// a subscriber working through duplicates applies nothing new but shrinks this.
    pub async fn backlog(&self, subscriber: &str) -> Result<u64, String> {
        Ok(self.delivery_state(subscriber).await?.0)
    }

    /// The transport's backlog for `subscriber`, and whether the bus is retrying a failed
    /// push to it (JetStream counts a message being retried in its backlog).
    async fn delivery_state(&self, subscriber: &str) -> Result<(u64, bool), String> {
        match self.combo.transport {
            Transport::Builtin => {
                let subs = self.admin().subscribers().await.map_err(|e| e.to_string())?;
                let s = subs.iter().find(|s| s.name == subscriber).ok_or(format!("no subscriber {subscriber}"))?;
                Ok((s.lag as u64, s.attempts != 0))
            }
            Transport::JetStream => {
                let js = self.js().await;
                let stream = js.context().get_stream(stream_name(js.bus())).await.map_err(|e| e.to_string())?;
                let info = stream.consumer_info(durable(subscriber)).await.map_err(|e| e.to_string())?;
                Ok((info.num_pending + info.num_ack_pending as u64, false))
            }
        }
    }

    /// Waits until `sub` has applied event `id`.
    pub async fn wait_applied(&self, sub: &Probe, id: &str, timeout: std::time::Duration) {
        let start = std::time::Instant::now();
        while !sub.applied().await.iter().any(|a| a.id == id) {
            assert!(
                start.elapsed() < timeout,
                "{}: event {id} not applied within {timeout:?}\n{}\n{}",
                self.case,
                sub.log_tail(),
                self.diagnostics()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Waits until bus `i` answers `/readyz` with 503, as a standby must while the other
    /// bus process holds the database.
    pub async fn await_standby(&self, i: usize) {
        let start = std::time::Instant::now();
        loop {
            let status = self.buses[i].readyz().await;
            if status == Some(503) {
                return;
            }
            assert!(
                start.elapsed() < STANDBY,
                "{} [{}]: {} answers /readyz {status:?} while {} holds the database: a standby must answer 503\n{}",
                self.case,
                self.combo,
                self.buses[i].name,
                self.buses[1 - i].name,
                self.diagnostics()
            );
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }

    /// Publishes one valid event straight to bus `i`, bypassing the forwarder; returns
    /// the HTTP status.
    pub async fn publish_to_bus(&self, i: usize) -> u16 {
        let ev = busbar::envelope::build(PUBLISHER, &ItemAdded::new("direct".into(), None), 1);
        let r = reqwest::Client::new()
            .post(format!("{}/events", self.buses[i].url))
            .bearer_auth(self.key.token(PUBLISHER))
            .json(&ev)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{} does not answer: {e}", self.buses[i].name));
        r.status().as_u16()
    }

    /// The logs of the transport's processes, for failure messages.
    pub fn diagnostics(&self) -> String {
        let mut out = vec![];
        for b in &self.buses {
            out.push(b.log_tail());
        }
        if let Some(n) = &self.nats
            && let Some(p) = &n.proc
        {
            out.push(format!("--- nats-server log ---\n{}", p.log_tail()));
        }
        if let Some(c) = &self.cluster {
            for i in 0..c.nodes.len() {
                out.push(format!("--- nats-server {} log ---\n{}", c.nodes[i].name, c.log_tail(i)));
            }
        }
        out.join("\n")
    }
}

async fn wait_bus_ready(bus: &mut Bus) {
    let start = std::time::Instant::now();
    while bus.readyz().await != Some(200) {
        assert!(start.elapsed() < STARTUP, "{} not ready after {STARTUP:?}\n{}", bus.name, bus.log_tail());
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
}
