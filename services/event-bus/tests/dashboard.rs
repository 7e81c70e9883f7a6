//! The dashboard at `GET /`: over HTTP (the page, and the graph as SVG), then in a real
//! headless Chromium while events flow, a subscriber fails and is redriven, and the bus
//! restarts under the open page.

mod common;

use std::time::{Duration, Instant};

use busbar::credentials::{ADMIN, BusKey};
use common::{Bus, FAST, event, routes_yaml};
use serde_json::{Value, json};
use testkit::{
    browser::{Browser, artifacts_dir},
    subscriber::Subscriber,
};

const T: Duration = Duration::from_secs(30);

/// A bus with a key, so that the test shows which parts need the admin token.
async fn keyed_bus(dir: &std::path::Path, routes: &str) -> (Bus, String) {
    let key = BusKey::generate();
    let key_file = dir.join("bus.key");
    std::fs::write(&key_file, key.to_hex()).unwrap();
    let bus = Bus::start(dir, routes, None, &["--auth-key-file", key_file.to_str().unwrap()]).await;
    (bus, key.token(ADMIN))
}

async fn get(url: &str) -> (u16, String, String) {
    let r = reqwest::get(url).await.unwrap();
    let ct = r.headers().get("content-type").map(|v| v.to_str().unwrap().to_owned()).unwrap_or_default();
    (r.status().as_u16(), ct, r.text().await.unwrap())
}

/// The texts in an SVG document, failing if it is not well-formed SVG.
fn svg_texts(svg: &str) -> Vec<String> {
    let doc = roxmltree::Document::parse(svg).unwrap_or_else(|e| panic!("not XML: {e}\n{svg}"));
    assert_eq!(doc.root_element().tag_name().name(), "svg", "{svg}");
    assert_eq!(doc.root_element().tag_name().namespace(), Some("http://www.w3.org/2000/svg"));
    doc.descendants().filter(|n| n.is_text()).map(|n| n.text().unwrap().trim().to_owned()).collect()
}

#[tokio::test]
async fn the_page_and_the_graph_need_no_token_and_the_graph_follows_the_spec() {
    let dir = testkit::temp_dir();
    let (bus, admin) = keyed_bus(dir.path(), &routes_yaml(&[("ledger", 1, &["A"])], FAST)).await;

    let (status, ct, page) = get(&format!("{}/", bus.url)).await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("text/html"), "{ct}");
    assert!(page.contains("<title>busbar</title>") && page.contains("id=\"subscribers\""), "{page:.300}");

    let (status, ct, svg) = get(&format!("{}/graph.svg", bus.url)).await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("image/svg+xml"), "{ct}");
    let texts = svg_texts(&svg);
    for name in ["producer", "ledger", "A"] {
        assert!(texts.iter().any(|t| t == name), "{name} missing from the graph's texts {texts:?}");
    }

    // What the page fetches next still needs the admin token.
    assert_eq!(get(&format!("{}/subscribers", bus.url)).await.0, 401);
    let r = reqwest::Client::new().get(format!("{}/subscribers", bus.url)).bearer_auth(&admin).send().await.unwrap();
    assert_eq!(r.status(), 200);

    // The bus re-reads its manifest, and the graph with it.
    std::fs::write(&bus.routes, routes_yaml(&[("ledger", 1, &["A"]), ("audit", 2, &["B"])], FAST)).unwrap();
    testkit::wait_until(T, "the graph to show the new subscriber", || async {
        let (_, _, svg) = get(&format!("{}/graph.svg", bus.url)).await;
        svg_texts(&svg).iter().any(|t| t == "audit").then_some(())
    })
    .await;
}

/// An open page in a browser, with screenshots for people to look at afterwards.
struct Page {
    browser: Browser,
    shots: std::path::PathBuf,
}

impl Page {
    async fn screenshot(&self, name: &str) {
        self.browser.screenshot(&self.shots.join(format!("{name}.png"))).await;
    }

    /// Runs `script` until it returns something other than null or false, failing after
    /// `T` with a screenshot of the page as it was.
    async fn wait_for(&self, what: &str, script: &str) -> Value {
        let start = Instant::now();
        loop {
            let v = self.browser.execute(script, json!([])).await;
            if !v.is_null() && v != json!(false) {
                return v;
            }
            if start.elapsed() > T {
                self.screenshot("failure").await;
                panic!(
                    "timed out after {T:?} waiting for {what}; screenshot in {}/failure.png\nchromedriver:\n{}",
                    self.shots.display(),
                    self.browser.driver_log()
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The subscriber's delivered position as the page shows it, once it shows one above `above`.
    async fn delivered_above(&self, subscriber: &str, above: i64) -> i64 {
        let script = format!(
            "const c = document.querySelector('tr[data-sub=\"{subscriber}\"] [data-field=\"position\"]');\
             const n = c ? Number(c.textContent) : NaN; return n > {above} ? n : null;"
        );
        self.wait_for(&format!("{subscriber}'s delivered counter above {above}"), &script).await.as_i64().unwrap()
    }
}

async fn publish(bus: &Bus, token: &str, body: &Value) {
    let r = reqwest::Client::new().post(format!("{}/events", bus.url)).bearer_auth(token).json(body).send().await;
    let r = r.unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap_or_default());
}

#[tokio::test]
async fn in_a_browser_the_dashboard_follows_delivery_dead_letters_redrive_and_a_restart() {
    let dir = testkit::temp_dir();
    let sub = Subscriber::start().await;
    let (mut bus, admin) = keyed_bus(dir.path(), &routes_yaml(&[("ledger", sub.port(), &["A"])], FAST)).await;
    let shots = artifacts_dir("dashboard");
    let page = Page { browser: Browser::start(dir.path()).await, shots };
    page.browser.goto(&format!("{}/", bus.url)).await;

    // The graph is drawn inline, naming the services.
    let graph =
        page.wait_for("the graph", "const s = document.querySelector('#graph svg'); return s && s.textContent;").await;
    assert!(graph.as_str().unwrap().contains("producer") && graph.as_str().unwrap().contains("ledger"), "{graph}");

    // Without a token the page says what it needs; with the admin token it fills in.
    let msg = page
        .wait_for("the token message", "const a = document.querySelector('#auth.shown'); return a && a.textContent;")
        .await;
    assert!(msg.as_str().unwrap().to_lowercase().contains("admin token required"), "{msg}");
    page.browser.type_into("#token", &admin).await;
    page.browser.click("#save-token").await;
    page.wait_for("the subscriber's row", "return document.querySelector('tr[data-sub=\"ledger\"]') !== null;").await;

    // Events flow while the page is open: the delivered counter rises between two reads.
    let publisher = {
        let (url, admin) = (bus.url.clone(), admin.clone());
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for n in 0..60 {
                let r = client.post(format!("{url}/events")).bearer_auth(&admin).json(&event("A", n)).send().await;
                assert_eq!(r.unwrap().status(), 200);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let first = page.delivered_above("ledger", 0).await;
    let later = page.delivered_above("ledger", first).await;
    assert!(later > first);
    page.wait_for("the live tail", "return document.querySelectorAll('#tail tbody tr').length > 0;").await;
    page.screenshot("1-live").await;
    publisher.await.unwrap();

    // A subscriber that fails on one event: it becomes a dead letter on the page.
    let poison = event("A", 1000);
    sub.set(|b| b.poison_ids = vec![poison["id"].as_str().unwrap().to_owned()]);
    publish(&bus, &admin, &poison).await;
    let error = page
        .wait_for(
            "a dead letter",
            "const e = document.querySelector('#deadletters li .err'); return e && e.textContent;",
        )
        .await;
    assert!(!error.as_str().unwrap().is_empty());
    page.screenshot("2-dead-letter").await;

    // Fixed, then redriven from the page: the list empties and the event arrives.
    sub.set(|b| b.poison_ids.clear());
    page.browser.click("#deadletters li button.redrive").await;
    page.wait_for(
        "the dead-letter list to empty",
        "return document.querySelectorAll('#deadletters li').length === 0 && !document.querySelector('#dl-empty').hidden;",
    )
    .await;
    assert!(sub.ids().contains(&poison["id"].as_str().unwrap().to_owned()), "the redriven event arrived");
    page.screenshot("3-redriven").await;

    // The bus goes away: the page says so, then carries on by itself once it is back.
    bus.proc.kill9();
    page.wait_for("the unreachable banner", "return document.querySelector('#banner.shown') !== null;").await;
    page.screenshot("4-unreachable").await;
    let before = page.delivered_above("ledger", 0).await;
    bus.kill9_and_restart().await;
    publish(&bus, &admin, &Value::Array((2000..2005).map(|n| event("A", n)).collect())).await;
    page.delivered_above("ledger", before).await;
    page.wait_for("the banner to go", "return document.querySelector('#banner.shown') === null;").await;
    page.screenshot("5-back").await;
}
