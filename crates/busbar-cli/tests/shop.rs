//! The shop end to end through `busbar up`, black-box, on SQLite, PostgreSQL and
//! JetStream. Renames and price changes interleave on the same products, so both partial
//! subscribers see version gaps (orders takes no renames, user-products no price changes);
//! orders are placed and cancelled; every user's `GET /users/:id/products` must equal the
//! truth kept here. Then the data survives a restart, and user-products rebuilt from an
//! empty database shows the identical view.

mod common;

use std::{collections::BTreeMap, collections::HashMap, path::Path, process::Command, time::Duration};

use common::{SHOP, T, busbar_up};
use serde_json::{Value, json};
use testkit::{pg::TempDb, process::Proc};

/// The repository's shop manifest with these ports and fast retries, named `bus`.
fn shop_spec(ports: &HashMap<&'static str, u16>, bus: &str) -> String {
    let mut s = include_str!("../../../k8s/shop/servicebus.yaml").to_owned();
    for (name, default) in [("users", 4100), ("products", 4101), ("orders", 4102), ("user-products", 4103)] {
        // Whole lines only: a port already put in may begin with the digits of a later one
        // (posts on 40019, then "port: 4001" for comments).
        let line = format!("port: {default}\n");
        assert_eq!(s.matches(&line).count(), 1, "{line:?} in the manifest");
        s = s.replace(&line, &format!("port: {}\n", ports[name]));
    }
    s.replace("backoff: [1s, 5s, 30s]", "backoff: [50ms, 200ms]").replace("name: shop\n", &format!("name: {bus}\n"))
}

/// Runs the shop as a user does: its manifest and its local-run declaration (the programs
/// are found next to busbar, where cargo builds them).
async fn shop_up(dir: &Path, extra: &[String], bus: &str) -> (Proc, HashMap<&'static str, u16>) {
    common::build_programs(&SHOP);
    std::fs::copy(
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../k8s/shop/busbar.local.yaml"),
        dir.join(busbar_cli::local::FILE),
    )
    .unwrap();
    busbar_up(dir, &SHOP, |ports| shop_spec(ports, bus), extra).await
}

/// `busbar up` again on the manifest already in `dir`, with the same ports and data.
async fn up_again(dir: &Path, ports: &HashMap<&'static str, u16>, extra: &[String], log: &str) -> Proc {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_busbar"));
    cmd.arg("up").arg("-f").arg(dir.join("servicebus.yaml")).arg("--data-dir").arg(dir.join("data"));
    cmd.args(["--bus-port", &ports["event-bus"].to_string()]).args(extra);
    let mut p = Proc::spawn("busbar up (again)", cmd, &dir.join(log));
    let deadline = std::time::Instant::now() + 2 * T;
    while !p.log().contains("All ready") {
        if let Some(status) = p.exited() {
            panic!("busbar up exited ({status}):\n{}", p.log_tail());
        }
        assert!(std::time::Instant::now() < deadline, "busbar up not ready again:\n{}", p.log_tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    p
}

/// What the test knows is true: the source of truth for every view.
#[derive(Default)]
struct Truth {
    users: BTreeMap<String, String>,
    /// id → (name, price)
    products: BTreeMap<String, (String, i64)>,
    /// id → (user, product, quantity, cancelled)
    orders: BTreeMap<String, (String, String, i64, bool)>,
}

impl Truth {
    /// `GET /users/:id/products` as it must read.
    fn view(&self, user: &str) -> Value {
        let mut lines: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        for (u, p, q, cancelled) in self.orders.values() {
            if u == user && !cancelled {
                let line = lines.entry(p).or_default();
                line.0 += q;
                line.1 += 1;
            }
        }
        let products: Vec<Value> = lines
            .into_iter()
            .map(|(p, (quantity, orders))| {
                json!({"product_id": p, "name": self.products[p].0, "quantity": quantity, "orders": orders})
            })
            .collect();
        json!({"user": {"id": user, "name": self.users[user]}, "products": products})
    }
}

struct Shop {
    client: reqwest::Client,
    ports: HashMap<&'static str, u16>,
}

impl Shop {
    fn url(&self, service: &str, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports[service])
    }

    async fn send(&self, method: reqwest::Method, url: String, body: Option<Value>) -> (u16, Value) {
        let mut r = self.client.request(method, &url).timeout(Duration::from_secs(10));
        if let Some(b) = body {
            r = r.json(&b);
        }
        let r = r.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = r.status().as_u16();
        (status, r.json().await.unwrap_or(Value::Null))
    }

    async fn ok(&self, method: reqwest::Method, service: &str, path: &str, body: Value, want: u16) -> Value {
        let (status, v) = self.send(method, self.url(service, path), Some(body)).await;
        assert_eq!(status, want, "{service} {path}: {v}");
        v
    }

    async fn sign_up(&self, truth: &mut Truth, email: &str, name: &str) -> String {
        let v = self.ok(reqwest::Method::POST, "users", "/users", json!({"email": email, "name": name}), 201).await;
        assert_eq!((v["email"].as_str(), v["name"].as_str()), (Some(email), Some(name)));
        let id = v["id"].as_str().unwrap().to_owned();
        truth.users.insert(id.clone(), name.to_owned());
        id
    }

    async fn rename_user(&self, truth: &mut Truth, id: &str, name: &str) {
        let v = self.ok(reqwest::Method::PATCH, "users", &format!("/users/{id}"), json!({"name": name}), 200).await;
        assert_eq!(v["name"], name);
        truth.users.insert(id.to_owned(), name.to_owned());
    }

    async fn add_product(&self, truth: &mut Truth, name: &str, price: i64) -> String {
        let body = json!({"name": name, "price_cents": price});
        let v = self.ok(reqwest::Method::POST, "products", "/products", body, 201).await;
        let id = v["id"].as_str().unwrap().to_owned();
        truth.products.insert(id.clone(), (name.to_owned(), price));
        id
    }

    async fn patch_product(&self, truth: &mut Truth, id: &str, name: Option<&str>, price: Option<i64>) {
        let mut body = json!({});
        if let Some(n) = name {
            body["name"] = json!(n);
        }
        if let Some(p) = price {
            body["price_cents"] = json!(p);
        }
        let v = self.ok(reqwest::Method::PATCH, "products", &format!("/products/{id}"), body, 200).await;
        let p = truth.products.get_mut(id).unwrap();
        if let Some(n) = name {
            p.0 = n.to_owned();
        }
        if let Some(c) = price {
            p.1 = c;
        }
        assert_eq!(v, json!({"id": id, "name": p.0, "price_cents": p.1}));
    }

    /// Places an order, retrying (bounded) while orders has not heard of the user or
    /// product yet (422). Returns the order as placed.
    async fn place(&self, truth: &mut Truth, user: &str, product: &str, quantity: i64) -> Value {
        let body = json!({"user_id": user, "product_id": product, "quantity": quantity});
        let v = testkit::wait_until(T, "orders to know the user and the product", || async {
            let (status, v) = self.send(reqwest::Method::POST, self.url("orders", "/orders"), Some(body.clone())).await;
            match status {
                201 => Some(v),
                422 => None,
                other => panic!("placing an order: {other} {v}"),
            }
        })
        .await;
        assert_eq!((v["status"].as_str(), v["quantity"].as_i64()), (Some("placed"), Some(quantity)), "{v}");
        truth
            .orders
            .insert(v["id"].as_str().unwrap().to_owned(), (user.to_owned(), product.to_owned(), quantity, false));
        v
    }

    async fn cancel(&self, truth: &mut Truth, order: &str) {
        let path = format!("/orders/{order}/cancel");
        let v = self.ok(reqwest::Method::POST, "orders", &path, json!({}), 200).await;
        assert_eq!(v["status"], "cancelled");
        truth.orders.get_mut(order).unwrap().3 = true;
        let (status, again) = self.send(reqwest::Method::POST, self.url("orders", &path), None).await;
        assert_eq!(status, 409, "a second cancel: {again}");
    }

    async fn view(&self, user: &str) -> (u16, Value) {
        self.send(reqwest::Method::GET, self.url("user-products", &format!("/users/{user}/products")), None).await
    }

    /// Waits (bounded) until every user's view equals the truth; returns the views.
    async fn converged(&self, truth: &Truth) -> BTreeMap<String, Value> {
        testkit::wait_until(2 * T, "user-products to equal the truth", || async {
            let mut views = BTreeMap::new();
            for user in truth.users.keys() {
                let (status, v) = self.view(user).await;
                if status != 200 || v != truth.view(user) {
                    return None;
                }
                views.insert(user.clone(), v);
            }
            Some(views)
        })
        .await
    }
}

/// Bad input gets a 4xx JSON error naming the problem.
async fn bad_input_is_refused(shop: &Shop, user: &str, product: &str) {
    let u = shop.url("users", "/users");
    testkit::expect_json_error("POST", &u, "{\"email\": ", 400, "invalid JSON").await;
    testkit::expect_json_error("POST", &u, r#"{"email": "a@b"}"#, 400, "name").await;
    testkit::expect_json_error("POST", &u, r#"{"email": "a@b", "name": " "}"#, 400, "`name` must not be empty").await;
    testkit::expect_json_error("POST", &u, r#"{"email": "nobody", "name": "N"}"#, 400, "@").await;
    testkit::expect_json_error("PATCH", &shop.url("users", "/users/nope"), r#"{"name": "N"}"#, 404, "not found").await;
    let p = shop.url("products", "/products");
    testkit::expect_json_error("POST", &p, r#"{"name": "x", "price_cents": -1}"#, 400, "negative").await;
    testkit::expect_json_error("PATCH", &format!("{p}/{product}"), "{}", 400, "nothing to change").await;
    let o = shop.url("orders", "/orders");
    for q in [0, 1001] {
        let body = json!({"user_id": user, "product_id": product, "quantity": q}).to_string();
        testkit::expect_json_error("POST", &o, &body, 400, "between 1 and 1000").await;
    }
    let body = json!({"user_id": "nope", "product_id": product, "quantity": 1}).to_string();
    testkit::expect_json_error("POST", &o, &body, 422, "user nope").await;
    let body = json!({"user_id": user, "product_id": "nope", "quantity": 1}).to_string();
    testkit::expect_json_error("POST", &o, &body, 422, "product nope").await;
    testkit::expect_json_error("POST", &shop.url("orders", "/orders/nope/cancel"), "", 404, "not found").await;
    let up = shop.url("user-products", "/users/nope/products");
    let (status, v) = shop.send(reqwest::Method::GET, up, None).await;
    assert_eq!(status, 404, "{v}");
}

/// The scenario; returns the truth and the converged views.
async fn scenario(shop: &Shop) -> (Truth, BTreeMap<String, Value>) {
    let mut truth = Truth::default();
    let mut users = vec![];
    for (i, name) in ["Ada", "Brian", "Chloe", "Dev"].into_iter().enumerate() {
        users.push(shop.sign_up(&mut truth, &format!("{}-{i}@shop.test", name.to_lowercase()), name).await);
    }
    let (status, taken) = shop
        .send(
            reqwest::Method::POST,
            shop.url("users", "/users"),
            Some(json!({"email": "ada-0@shop.test", "name": "A"})),
        )
        .await;
    assert_eq!(status, 409, "{taken}");
    let mut products = vec![];
    for (i, name) in ["tea", "coffee", "cocoa", "mate", "chai"].into_iter().enumerate() {
        products.push(shop.add_product(&mut truth, name, 100 + 50 * i as i64).await);
    }

    // Rounds of renames and price changes on the same products (sometimes both in one
    // PATCH), user renames, and orders in between.
    let mut placed = vec![];
    for round in 0..6i64 {
        for (i, p) in products.iter().enumerate() {
            let name = format!("{} v{round}", truth.products[p].0.split(' ').next().unwrap());
            let price = 100 + 10 * round + i as i64;
            match (round + i as i64) % 3 {
                0 => shop.patch_product(&mut truth, p, Some(&name), None).await,
                1 => shop.patch_product(&mut truth, p, None, Some(price)).await,
                _ => shop.patch_product(&mut truth, p, Some(&name), Some(price)).await,
            }
        }
        let u = &users[round as usize % users.len()];
        let name = format!("{} ({round})", truth.users[u].split(' ').next().unwrap());
        shop.rename_user(&mut truth, u, &name).await;
        for (j, u) in users.iter().enumerate() {
            let p = &products[(round as usize + j) % products.len()];
            let o = shop.place(&mut truth, u, p, 1 + (round + j as i64) % 4).await;
            placed.push(o["id"].as_str().unwrap().to_owned());
        }
    }
    // Orders knows users[0] and products[0] by now (it priced orders for them), so an
    // unknown product is the only thing wrong with an order for them.
    bad_input_is_refused(shop, &users[0], &products[0]).await;
    for o in placed.iter().step_by(3) {
        shop.cancel(&mut truth, o).await;
    }
    // A user whose only order is cancelled: known, with no products.
    let eve = shop.sign_up(&mut truth, "eve@shop.test", "Eve").await;
    let only = shop.place(&mut truth, &eve, &products[4], 2).await;
    shop.cancel(&mut truth, only["id"].as_str().unwrap()).await;

    // Orders takes up a price change that follows a rename it never sees: once its copy
    // has the new price, an order is priced at it (orders placed meanwhile at the old
    // price are real orders too, and counted).
    let product = &products[0];
    shop.patch_product(&mut truth, product, Some("green tea"), None).await;
    shop.patch_product(&mut truth, product, None, Some(777)).await;
    let mut priced = None;
    let deadline = std::time::Instant::now() + T;
    while priced.is_none() {
        assert!(std::time::Instant::now() < deadline, "orders never priced at 777 after the rename");
        let o = shop.place(&mut truth, &users[1], product, 1).await;
        if o["unit_price_cents"] == 777 {
            priced = Some(o);
        } else {
            assert!(o["unit_price_cents"].as_i64().unwrap() < 777, "an old price: {o}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    let views = shop.converged(&truth).await;
    let names: Vec<&str> = views
        .values()
        .flat_map(|v| v["products"].as_array().unwrap().iter().map(|p| p["name"].as_str().unwrap()))
        .collect();
    assert!(names.contains(&"green tea"), "user-products took the rename after price changes it never saw");
    assert_eq!(views[&eve]["products"], json!([]), "a product whose orders are all cancelled is omitted");
    (truth, views)
}

fn sqlite_files(dir: &Path, service: &str) -> Vec<std::path::PathBuf> {
    ["", "-wal", "-shm"].iter().map(|s| dir.join("data").join(format!("{service}.db{s}"))).collect()
}

/// The whole story on one backend: scenario, restart, user-products rebuilt from history.
/// `rebuild` empties user-products' database while everything is stopped.
async fn story(extra: Vec<String>, bus: &str, rebuild: impl AsyncFnOnce(&Path)) {
    let dir = testkit::temp_dir();
    let (mut p, ports) = shop_up(dir.path(), &extra, bus).await;
    let shop = Shop { client: reqwest::Client::new(), ports: ports.clone() };
    let (truth, views) = scenario(&shop).await;
    assert_eq!(p.terminate(Duration::from_secs(20)), Some(0), "a clean stop:\n{}", p.log_tail());

    let mut again = up_again(dir.path(), &ports, &extra, "up-again.log").await;
    assert_eq!(shop.converged(&truth).await, views, "the same views after a restart");
    for (id, name) in &truth.users {
        let v = shop.ok(reqwest::Method::GET, "users", &format!("/users/{id}"), Value::Null, 200).await;
        assert_eq!(&v["name"], name, "users kept its data");
    }
    assert_eq!(again.terminate(Duration::from_secs(20)), Some(0), "{}", again.log_tail());

    rebuild(dir.path()).await;
    let mut rebuilt = up_again(dir.path(), &ports, &extra, "up-rebuilt.log").await;
    // Ready means backfilled: the view is complete at once, no waiting.
    for (user, view) in &views {
        assert_eq!(&shop.view(user).await.1, view, "user-products rebuilt from history shows the same view");
    }
    let log = rebuilt.log();
    let replayed = log
        .lines()
        .filter(|l| l.contains("user-products |") && l.contains("backfill complete"))
        .find_map(|l| l.split("events=").nth(1)?.split_whitespace().next()?.parse::<usize>().ok());
    assert!(replayed.is_some_and(|n| n > 0), "user-products backfilled from history:\n{}", rebuilt.log_tail());
    assert_eq!(rebuilt.terminate(Duration::from_secs(20)), Some(0), "{}", rebuilt.log_tail());
    println!(
        "shop on {bus}: {} users, {} products, {} orders ({} cancelled); identical views after a restart and a rebuild",
        truth.users.len(),
        truth.products.len(),
        truth.orders.len(),
        truth.orders.values().filter(|o| o.3).count()
    );
}

#[tokio::test]
async fn shop_end_to_end_on_sqlite() {
    story(vec![], "shop", async |dir: &Path| {
        for f in sqlite_files(dir, "user-products") {
            let _ = std::fs::remove_file(f);
        }
        assert!(!sqlite_files(dir, "user-products")[0].exists());
    })
    .await;
}

#[tokio::test]
async fn shop_end_to_end_on_postgres() {
    let prefix = format!("busbar_shop_{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let mut dbs = HashMap::new();
    for name in ["event_bus", "users", "products", "orders", "user_products"] {
        dbs.insert(name, TempDb::create_named(&format!("{prefix}_{name}")).await);
    }
    let template = format!("{}/{prefix}_{{name}}", testkit::pg::server_url());
    let recreate = format!("{prefix}_user_products");
    let old = dbs.remove("user_products").unwrap();
    let dbs = std::sync::Mutex::new((dbs, Some(old)));
    story(vec!["--database-url-template".into(), template], "shop", async |dir: &Path| {
        assert!(!dir.join("data/users.db").exists(), "no SQLite file when PostgreSQL is used");
        // Dropping the TempDb drops the database; an empty one takes its name.
        let old = dbs.lock().unwrap().1.take();
        drop(old);
        let fresh = TempDb::create_named(&recreate).await;
        dbs.lock().unwrap().1 = Some(fresh);
    })
    .await;
}

#[tokio::test]
async fn shop_end_to_end_on_jetstream() {
    use busbar::{
        names::{dead_letter_stream_name, stream_name},
        transport::jetstream::JetStream,
    };
    let bus = format!("shop-{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    let nats = testkit::nats_url();
    let extra = vec!["--transport".into(), "jetstream".into(), "--nats-url".into(), nats.clone()];
    story(extra, &bus, async |dir: &Path| {
        for f in sqlite_files(dir, "user-products") {
            let _ = std::fs::remove_file(f);
        }
    })
    .await;
    let js = JetStream::connect(&nats, &bus).await.unwrap();
    js.context().delete_stream(stream_name(&bus)).await.unwrap();
    let _ = js.context().delete_stream(dead_letter_stream_name(&bus)).await;
}

/// user-products killed with SIGKILL while orders are placed and prices change: `busbar up`
/// restarts it, and every user's view still equals the truth (nothing lost, nothing
/// counted twice, the gaps in product versions still told apart from lost events).
#[tokio::test]
async fn user_products_killed_under_load_is_restarted_and_converges() {
    let dir = testkit::temp_dir();
    let (mut p, ports) = shop_up(dir.path(), &[], "shop").await;
    let shop = Shop { client: reqwest::Client::new(), ports: ports.clone() };
    let mut truth = Truth::default();
    let mut users = vec![];
    for i in 0..3 {
        users.push(shop.sign_up(&mut truth, &format!("u{i}@shop.test"), &format!("user {i}")).await);
    }
    let mut products = vec![];
    for i in 0..3 {
        products.push(shop.add_product(&mut truth, &format!("product {i}"), 100 + i).await);
    }
    let load = tokio::spawn({
        let (users, products) = (users.clone(), products.clone());
        async move {
            let shop = Shop { client: reqwest::Client::new(), ports };
            for i in 0..400usize {
                let product = &products[(i / users.len()) % products.len()];
                if i % 10 == 0 {
                    shop.patch_product(&mut truth, product, None, Some(200 + i as i64)).await;
                }
                shop.place(&mut truth, &users[i % users.len()], product, 1 + (i % 3) as i64).await;
            }
            truth
        }
    });
    let up_url = shop.url("user-products", &format!("/users/{}/products", users[0]));
    testkit::wait_until(T, "some orders in user-products", || async {
        let v: Value = reqwest::get(&up_url).await.ok()?.json().await.ok()?;
        let orders: i64 = v["products"].as_array()?.iter().filter_map(|l| l["orders"].as_i64()).sum();
        (orders >= 10).then_some(())
    })
    .await;
    assert!(!load.is_finished(), "the load is still running when user-products is killed");
    common::kill9(common::logged_pid(&p.log(), "user-products").unwrap());
    let truth = load.await.unwrap();
    testkit::wait_until(T, "user-products to come back", || async {
        p.log().contains("busbar: user-products is ready again (restart 1)").then_some(())
    })
    .await;
    shop.converged(&truth).await;
    assert_eq!(p.terminate(Duration::from_secs(20)), Some(0), "{}", p.log_tail());
    println!("user-products killed under load: {} orders, views equal the truth", truth.orders.len());
}
