//! A process killed (SIGKILL) after its transaction committed but before the relay
//! published: the events go out after a restart. Covers SQLite and PostgreSQL.
//!
//! This test binary is its own child: run with `--writer <url>`, it commits events while
//! its relay cannot reach the bus, prints their ids, and waits to be killed. It uses a
//! plain `main` (harness = false) so that the child role is not itself a test.

mod common;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Duration,
};

use busbar::{
    HttpTransport,
    outbox::{RelayOptions, spawn_relay},
};
use common::{Recording, database, notes_db};
use tokio_util::sync::CancellationToken;

const EVENTS: usize = 25;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let rt = tokio::runtime::Runtime::new().unwrap();
    if let Some(i) = args.iter().position(|a| a == "--writer") {
        rt.block_on(writer(&args[i + 1]));
        return;
    }
    let mut passed = 0;
    for backend in ["sqlite", "postgres"] {
        rt.block_on(killed_after_commit_publishes_after_restart(backend));
        println!("test outbox_crash::{backend} ... ok");
        passed += 1;
    }
    println!("\noutbox_crash: {passed} passed, 0 failed");
}

async fn writer(url: &str) {
    let db = notes_db(url).await;
    // Nothing listens on this port: every publish attempt fails, as if the bus were down
    // or the process died just after commit.
    let dead_bus = HttpTransport::new(&format!("http://127.0.0.1:{}", testkit::free_port()), None);
    let _relay =
        spawn_relay(db.clone(), std::sync::Arc::new(dead_bus), RelayOptions::default(), CancellationToken::new());
    for i in 0..EVENTS {
        let mut tx = db.begin().await.unwrap();
        sqlx::query("INSERT INTO notes (id, text) VALUES ($1, 'x')")
            .bind(format!("n{i}"))
            .execute(&mut *tx)
            .await
            .unwrap();
        let ev = tx.emit(&common::NoteWritten { id: format!("n{i}"), text: "x".into() }, 1).await.unwrap();
        tx.commit().await.unwrap();
        use busbar::AttributesReader;
        println!("committed {}", ev.id());
    }
    println!("done");
    std::future::pending::<()>().await;
}

async fn killed_after_commit_publishes_after_restart(backend: &str) {
    let (url, _keep) = database(backend).await;
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--writer", &url])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn writer");
    let mut committed = vec![];
    for line in BufReader::new(child.stdout.take().unwrap()).lines() {
        let line = line.unwrap();
        if line == "done" {
            break;
        }
        if let Some(id) = line.strip_prefix("committed ") {
            committed.push(id.to_owned());
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert_eq!(committed.len(), EVENTS, "{backend}: the writer committed everything before the kill");

    // "Restart": a new process opens the same database with a working bus.
    let db = notes_db(&url).await;
    let transport = Recording::new();
    let stop = CancellationToken::new();
    let relay = spawn_relay(db.clone(), transport.clone(), RelayOptions::default(), stop.clone());
    testkit::wait_until(Duration::from_secs(20), "the committed events to be published after restart", || async {
        (transport.ids().len() >= EVENTS).then_some(())
    })
    .await;
    assert_eq!(transport.ids(), committed, "{backend}: every committed event, in order, once");
    stop.cancel();
    relay.await.unwrap();
    db.close().await;
}
