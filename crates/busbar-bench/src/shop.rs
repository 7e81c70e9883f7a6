//! Scenario `shop`: the second app end to end, as a client sees it. Users and products are
//! created first; then orders are placed through `POST /orders` and awaited in
//! user-products' `GET /users/:id/products`, which learns of them only through events
//! (orders, the bus, user-products):
//!
//! - orders, closed loop: the most orders/s user-products makes visible;
//! - orders, open loop at fixed rates: order-to-visible latency percentiles;
//! - CPU per 10,000 orders of every process.
//!
//! Each (database, transport) pair gets a fresh system.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::task::JoinSet;

use crate::{
    blog::{self, applied, wait_applied},
    clock, load,
    stats::{self, Latency},
    system::{SHOP, System, Systems, on_fresh_system, transport_name},
};

const SCENARIO: &str = "shop";

#[derive(clap::Args, Debug)]
pub struct Args {
    #[command(flatten)]
    pub systems: Systems,

    /// Users to create before ordering.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub users: u32,

    /// Products to create before ordering.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub products: u32,

    /// Closed loop: concurrent clients, each ordering as soon as its previous order was
    /// answered.
    #[arg(long, default_value_t = 32, value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub concurrency: u16,

    /// Closed loop: seconds to order for.
    #[arg(long, default_value_t = 5.0, value_parser = crate::bus_raw::positive_secs)]
    pub duration: f64,

    /// Open loop: offered order rates (orders/s), comma-separated; one run per rate.
    #[arg(long, value_delimiter = ',', default_value = "500", value_parser = crate::bus_raw::positive_rate)]
    pub rates: Vec<f64>,

    /// Open loop: seconds to offer each rate for.
    #[arg(long, default_value_t = 4.0, value_parser = crate::bus_raw::positive_secs)]
    pub rate_duration: f64,

    /// Open loop: most requests outstanding.
    #[arg(long, default_value_t = 512, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub max_in_flight: u32,

    /// Milliseconds between polls of user-products while orders are awaited.
    #[arg(long, default_value_t = 2.0, value_parser = crate::bus_raw::positive_secs)]
    pub poll_ms: f64,

    /// Seconds to wait, after ordering stops, for every order to be visible. Any still
    /// missing then is a failure (exit status 1).
    #[arg(long, default_value_t = 120.0, value_parser = crate::bus_raw::positive_secs)]
    pub drain_timeout: f64,

    /// Tiny bounds so CI can prove the scenario works in seconds.
    #[arg(long)]
    pub smoke: bool,
}

#[derive(Debug, Serialize)]
pub struct OrderRow {
    /// `closed` or `open`.
    pub mode: &'static str,
    pub load: String,
    pub written: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub written_per_s: f64,
    pub visible_per_s: f64,
    /// Order (its scheduled time) to visible in user-products; open loop only.
    pub latency: Option<Latency>,
    /// Order to its 201.
    pub write_latency: Option<Latency>,
    pub missing: u64,
}

#[derive(Debug, Serialize)]
pub struct ShopRun {
    pub backend: &'static str,
    pub transport: &'static str,
    pub rows: Vec<OrderRow>,
    /// CPU seconds per 10,000 orders made visible in the closed loop, per process.
    pub cpu_s_per_10k_orders: Vec<(String, Option<f64>)>,
    pub load_average: String,
}

#[derive(Debug, Serialize)]
pub struct ShopSummary {
    pub runs: Vec<ShopRun>,
    pub ok: bool,
}

pub async fn run(mut args: Args) -> anyhow::Result<ShopSummary> {
    if args.smoke {
        (args.users, args.products, args.duration, args.rate_duration) = (3, 5, 1.0, 1.0);
        args.rates = vec![50.0];
        args.drain_timeout = args.drain_timeout.min(60.0);
    }
    let prepared = args.systems.prepare().await?;
    let client = blog::client(args.max_in_flight as usize)?;
    let mut runs = vec![];
    let mut result = Ok(());
    'all: for &backend in &args.systems.backends {
        for &transport in &args.systems.transports {
            let run_id = uuid::Uuid::now_v7().simple().to_string()[20..].to_owned();
            let opts = prepared.opts(&SHOP, &args.systems, backend, transport, &run_id);
            let who = format!("[{SCENARIO}] {}, {}", backend.name(), transport_name(opts.transport));
            eprintln!("{who}: starting the shop");
            let measured = on_fresh_system(&opts, &client, prepared.nats.as_ref(), async |s| {
                measure(&args, &who, &client, s).await
            });
            match measured.await {
                Ok((rows, cpu)) => runs.push(ShopRun {
                    backend: backend.name(),
                    transport: transport_name(opts.transport),
                    rows,
                    cpu_s_per_10k_orders: cpu,
                    load_average: crate::proc::load_average(),
                }),
                Err(e) => {
                    result = Err(e.context(who));
                    break 'all;
                }
            }
        }
    }
    if let Some(n) = prepared.nats {
        n.stop().await;
    }
    result?;
    let ok = runs.iter().flat_map(|r| &r.rows).all(|r| r.missing == 0);
    Ok(ShopSummary { runs, ok })
}

/// POSTs `body` to `url`; the created resource's `id`, or why not.
async fn create(client: &reqwest::Client, url: &str, body: serde_json::Value) -> Result<String, String> {
    let r = client.post(url).json(&body).send().await.map_err(|e| e.to_string())?;
    let status = r.status();
    let text = r.text().await.map_err(|e| e.to_string())?;
    if status.as_u16() != 201 {
        return Err(format!("HTTP {status}: {text}"));
    }
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| e.to_string())?;
    v["id"].as_str().map(str::to_owned).ok_or_else(|| format!("201 without an id: {v}"))
}

/// The (user, product) pair of order `i`: every user with every product before any pair
/// repeats, so an open loop of up to users × products orders awaits distinct pairs.
fn pair(i: u64, users: usize, products: usize) -> (usize, usize) {
    let i = i as usize % (users * products);
    (i % users, (i / users) % products)
}

type Cpu = Vec<(String, Option<f64>)>;

async fn measure(
    args: &Args,
    who: &str,
    client: &reqwest::Client,
    system: &mut System,
) -> anyhow::Result<(Vec<OrderRow>, Cpu)> {
    let users_url = system.get("users").url("/users");
    let products_url = system.get("products").url("/products");
    let orders_url = system.get("orders").url("/orders");
    let orders_base = system.get("orders").url("");
    let view_base = system.get("user-products").url("");
    let (u, p) = (args.users as usize, args.products as usize);

    eprintln!("{who}: creating {u} users and {p} products");
    let orders0 = applied(client, &orders_base).await?;
    let view0 = applied(client, &view_base).await?;
    let tag = uuid::Uuid::now_v7().simple().to_string();
    let mut users = vec![];
    for i in 0..u {
        let body = json!({"email": format!("u{i}-{tag}@bench.example"), "name": format!("user {i}")});
        users.push(create(client, &users_url, body).await.map_err(|e| anyhow::anyhow!("POST /users: {e}"))?);
    }
    let mut products = vec![];
    for i in 0..p {
        let body = json!({"name": format!("product {i}"), "price_cents": 100 + i});
        products.push(create(client, &products_url, body).await.map_err(|e| anyhow::anyhow!("POST /products: {e}"))?);
    }
    let known = (u + p) as u64;
    wait_applied(client, &orders_base, orders0 + known, args.drain_timeout)
        .await?
        .context("orders did not learn of the users and products in time")?;
    wait_applied(client, &view_base, view0 + known, args.drain_timeout)
        .await?
        .context("user-products did not learn of the users and products in time")?;
    let (users, products) = (Arc::new(users), Arc::new(products));
    let mut rows = vec![];

    // Closed loop.
    let k = args.concurrency as usize;
    eprintln!("{who}: orders, closed loop, {k} clients, {} s", args.duration);
    let view1 = applied(client, &view_base).await?;
    let cpu0 = system.cpu_secs();
    let next = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.duration);
    let first_ns = clock::now_ns();
    let mut tasks = JoinSet::new();
    for _ in 0..k {
        let (client, url, next, users, products) =
            (client.clone(), orders_url.clone(), next.clone(), users.clone(), products.clone());
        tasks.spawn(async move {
            let (mut ok, mut ack, mut last, mut errors, mut first_error) = (0u64, vec![], 0u64, 0u64, None);
            while tokio::time::Instant::now() < deadline {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let (a, b) = pair(i, users.len(), products.len());
                let sent = clock::now_ns();
                let body = json!({"user_id": users[a], "product_id": products[b], "quantity": 1});
                match create(&client, &url, body).await {
                    Ok(_) => {
                        last = clock::now_ns();
                        ack.push(last - sent);
                        ok += 1;
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert(e);
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                }
            }
            (ok, ack, last, errors, first_error)
        });
    }
    let (mut written, mut ack, mut last_ack, mut errors, mut first_error) = (0, vec![], 0, 0, None);
    while let Some(r) = tasks.join_next().await {
        let (ok, a, last, e, fe) = r?;
        written += ok;
        ack.extend(a);
        last_ack = last_ack.max(last);
        errors += e;
        first_error = first_error.or(fe);
    }
    let visible_at = wait_applied(client, &view_base, view1 + written, args.drain_timeout).await?;
    let cpu1 = system.cpu_secs();
    let cpu = system
        .procs
        .iter()
        .zip(cpu0.iter().zip(&cpu1))
        .map(|(proc, (a, b))| {
            let per = match (a, b) {
                (Some(a), Some(b)) if written > 0 => Some((b - a) / written as f64 * 1e4),
                _ => None,
            };
            (proc.name.clone(), per)
        })
        .collect();
    let n = written as f64;
    rows.push(OrderRow {
        mode: "closed",
        load: format!("{k} clients"),
        written,
        errors,
        first_error,
        written_per_s: n / clock::secs_between(first_ns, last_ack),
        visible_per_s: visible_at.map_or(0.0, |t| n / clock::secs_between(first_ns, t)),
        latency: None,
        write_latency: stats::latency(&mut ack),
        missing: if visible_at.is_some() { 0 } else { written },
    });
    progress(who, rows.last());
    system.check_alive()?;

    // Orders counted per (user, product) so far, which the open loop's orders add to: read
    // back from the view itself, now that it has caught up with the closed loop.
    let mut placed: HashMap<(usize, usize), u64> = HashMap::new();
    for (a, user) in users.iter().enumerate() {
        for v in view_of(client, &view_base, user).await?.products {
            if let Some(b) = products.iter().position(|id| *id == v.product_id) {
                placed.insert((a, b), v.orders);
            }
        }
    }

    for &rate in &args.rates {
        eprintln!("{who}: orders, open loop, {rate}/s, {} s", args.rate_duration);
        let row = open_orders(args, client, &orders_url, &view_base, &users, &products, &mut placed, rate).await?;
        rows.push(row);
        progress(who, rows.last());
        system.check_alive()?;
    }
    Ok((rows, cpu))
}

#[derive(Deserialize)]
struct View {
    products: Vec<ViewProduct>,
}

#[derive(Deserialize)]
struct ViewProduct {
    product_id: String,
    orders: u64,
}

async fn view_of(client: &reqwest::Client, base: &str, user: &str) -> anyhow::Result<View> {
    let url = format!("{base}/users/{user}/products");
    let r = client.get(&url).send().await.with_context(|| format!("GET {url}"))?;
    if !r.status().is_success() {
        bail!("GET {url}: HTTP {}", r.status());
    }
    r.json().await.with_context(|| format!("GET {url}: not the view"))
}

/// An order awaited in user-products: visible once the view counts `orders` on its pair.
struct Awaited {
    product: String,
    orders: u64,
    due_ns: u64,
}

#[allow(clippy::too_many_arguments)]
async fn open_orders(
    args: &Args,
    client: &reqwest::Client,
    orders_url: &str,
    view_base: &str,
    users: &Arc<Vec<String>>,
    products: &Arc<Vec<String>>,
    placed: &mut HashMap<(usize, usize), u64>,
    rate: f64,
) -> anyhow::Result<OrderRow> {
    // Awaited orders per user index; latencies of those seen.
    let awaited: Arc<Mutex<HashMap<usize, Vec<Awaited>>>> = Arc::default();
    let seen: Arc<Mutex<(Vec<u64>, u64)>> = Arc::default();
    let stop = stop_flag();
    let watcher = {
        let (client, base, users, awaited, seen, stop) =
            (client.clone(), view_base.to_owned(), users.clone(), awaited.clone(), seen.clone(), stop.clone());
        let every = Duration::from_secs_f64(args.poll_ms / 1e3);
        tokio::spawn(async move {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let waiting: Vec<usize> =
                    awaited.lock().unwrap().iter().filter(|(_, v)| !v.is_empty()).map(|(u, _)| *u).collect();
                let mut polls = JoinSet::new();
                for a in waiting {
                    let (client, base, user) = (client.clone(), base.clone(), users[a].clone());
                    polls.spawn(async move { (a, view_of(&client, &base, &user).await) });
                }
                while let Some(r) = polls.join_next().await {
                    let Ok((a, Ok(view))) = r else { continue };
                    let now = clock::now_ns();
                    let counts: HashMap<&str, u64> =
                        view.products.iter().map(|v| (v.product_id.as_str(), v.orders)).collect();
                    let mut g = awaited.lock().unwrap();
                    let Some(list) = g.get_mut(&a) else { continue };
                    let mut s = seen.lock().unwrap();
                    list.retain(|w| {
                        let visible = counts.get(w.product.as_str()).is_some_and(|&n| n >= w.orders);
                        if visible {
                            s.0.push(now.saturating_sub(w.due_ns));
                            s.1 = s.1.max(now);
                        }
                        !visible
                    });
                }
                tokio::time::sleep(every).await;
            }
        })
    };
    // Each order's pair and the count the view must reach, fixed before the run so that
    // concurrent orders on one pair never wait for each other's counts out of order.
    let total = (rate * args.rate_duration).round().max(1.0) as u64;
    let plan: Arc<Vec<(usize, usize, u64)>> = Arc::new(
        (0..total)
            .map(|i| {
                let (a, b) = pair(i, users.len(), products.len());
                let n = placed.entry((a, b)).or_default();
                *n += 1;
                (a, b, *n)
            })
            .collect(),
    );
    let paced =
        load::paced(rate, Duration::from_secs_f64(args.rate_duration), args.max_in_flight as usize, |i, due_ns| {
            let (client, url, users, products, plan, awaited) =
                (client.clone(), orders_url.to_owned(), users.clone(), products.clone(), plan.clone(), awaited.clone());
            async move {
                let Some(&(a, b, orders)) = plan.get(i as usize) else {
                    return (Err(format!("no order {i} planned")), due_ns, clock::now_ns());
                };
                let body = json!({"user_id": users[a], "product_id": products[b], "quantity": 1});
                let r = create(&client, &url, body).await;
                let ack = clock::now_ns();
                if r.is_ok() {
                    awaited.lock().unwrap().entry(a).or_default().push(Awaited {
                        product: products[b].clone(),
                        orders,
                        due_ns,
                    });
                }
                (r.map(|_| ()), due_ns, ack)
            }
        })
        .await?;
    let deadline = tokio::time::Instant::now() + Duration::from_secs_f64(args.drain_timeout);
    let missing = loop {
        let waiting: usize = awaited.lock().unwrap().values().map(Vec::len).sum();
        if waiting == 0 || tokio::time::Instant::now() >= deadline {
            break waiting;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    };
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let _ = watcher.await;
    let (mut ack, mut errors, mut first_error, mut last_ack) = (vec![], 0, None, 0);
    for (r, due, ack_ns) in &paced.results {
        match r {
            Ok(()) => {
                ack.push(ack_ns.saturating_sub(*due));
                last_ack = last_ack.max(*ack_ns);
            }
            Err(e) => {
                errors += 1;
                first_error.get_or_insert(e.clone());
            }
        }
    }
    let mut s = seen.lock().unwrap();
    let (n_seen, last_seen) = (s.0.len() as f64, s.1);
    let written = ack.len() as u64;
    Ok(OrderRow {
        mode: "open",
        load: format!("{rate}/s"),
        written,
        errors,
        first_error,
        written_per_s: written as f64 / clock::secs_between(paced.start_ns, last_ack.max(paced.scheduled_end_ns)),
        visible_per_s: n_seen / clock::secs_between(paced.start_ns, last_seen.max(paced.scheduled_end_ns)),
        latency: stats::latency(&mut s.0),
        write_latency: stats::latency(&mut ack),
        missing: missing as u64,
    })
}

fn stop_flag() -> Arc<std::sync::atomic::AtomicBool> {
    Arc::new(std::sync::atomic::AtomicBool::new(false))
}

fn progress(who: &str, row: Option<&OrderRow>) {
    let Some(r) = row else { return };
    let p = |f: fn(&Latency) -> f64| r.latency.as_ref().map_or("-".into(), |l| format!("{:.1}", f(l)));
    eprintln!(
        "{who}: orders {} {}: {} written ({:.0}/s), {:.0} visible/s, p50 {} p99 {} max {} ms, {} errors, {} missing",
        r.mode,
        r.load,
        r.written,
        r.written_per_s,
        r.visible_per_s,
        p(|l| l.p50_ms),
        p(|l| l.p99_ms),
        p(|l| l.max_ms),
        r.errors,
        r.missing
    );
}

/// The shop's tables.
pub fn markdown(s: &ShopSummary) -> String {
    use std::fmt::Write;
    let mut out = String::from(
        "## Shop pipeline\n\n| db | transport | load | orders | ordered/s | visible/s | p50 ms | p90 ms | p99 ms | \
         max ms | 201 p50 | 201 p99 | errors | missing |\n|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    let ms = |l: &Option<Latency>, f: fn(&Latency) -> f64| l.as_ref().map_or("-".into(), |l| format!("{:.1}", f(l)));
    for r in &s.runs {
        for o in &r.rows {
            let _ = writeln!(
                out,
                "| {} | {} | {} {} | {} | {:.0} | {:.0} | {} | {} | {} | {} | {} | {} | {} | {} |",
                r.backend,
                r.transport,
                o.mode,
                o.load,
                o.written,
                o.written_per_s,
                o.visible_per_s,
                ms(&o.latency, |l| l.p50_ms),
                ms(&o.latency, |l| l.p90_ms),
                ms(&o.latency, |l| l.p99_ms),
                ms(&o.latency, |l| l.max_ms),
                ms(&o.write_latency, |l| l.p50_ms),
                ms(&o.write_latency, |l| l.p99_ms),
                o.errors,
                o.missing
            );
        }
    }
    let _ = writeln!(
        out,
        "\np50..max: order (its scheduled time) to counted in user-products' `GET /users/:id/products`; 201: order \
         to its answer.\n\nCPU s per 10,000 orders (closed loop):\n"
    );
    for r in &s.runs {
        let cpu: Vec<String> = r
            .cpu_s_per_10k_orders
            .iter()
            .map(|(name, c)| format!("{name} {}", c.map_or("-".into(), |c| format!("{c:.2}"))))
            .collect();
        let _ = writeln!(out, "- {}, {}: {} (load average {})", r.backend, r.transport, cpu.join(", "), r.load_average);
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pairs_cover_every_user_and_product_before_repeating() {
        let pairs: std::collections::HashSet<_> = (0..6).map(|i| pair(i, 2, 3)).collect();
        assert_eq!(pairs.len(), 6);
        assert_eq!(pair(6, 2, 3), pair(0, 2, 3));
        assert_eq!((pair(1, 2, 3), pair(2, 2, 3)), ((1, 0), (0, 1)));
    }
}
