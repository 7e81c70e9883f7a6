//! Giving up on an event is decided once: live delivery and a backfill may both exhaust
//! their attempts at the same event, at the same moment, and exactly one of them may record
//! the dead letter. A claim that its holder never finished (the process died) is taken over
//! once it is old.

mod common;

use busbar::attempts::{self, Attempt, Claim};
use common::{database, notes_db};

async fn claims_are_exclusive(backend: &str) {
    let (url, _keep) = database(backend).await;
    let db = notes_db(&url).await;
    assert_eq!(attempts::begin(&db, "e1").await.unwrap(), Attempt::Number(1));

    // Two paths give up together: one claims, the other learns it is taken.
    let (a, b) = tokio::join!(attempts::claim(&db, "e1"), attempts::claim(&db, "e1"));
    let mut got = [a.unwrap(), b.unwrap()];
    got.sort_by_key(|c| format!("{c:?}"));
    assert_eq!(got, [Claim::Mine, Claim::Taken], "{backend}");
    // While claimed, attempts still count (the holder may yet fail to record it).
    assert_eq!(attempts::begin(&db, "e1").await.unwrap(), Attempt::Number(2));

    // Recorded: every later look says so, and nobody claims it again.
    attempts::dead_lettered(&db, "e1").await.unwrap();
    assert_eq!(attempts::claim(&db, "e1").await.unwrap(), Claim::Done);
    assert_eq!(attempts::begin(&db, "e1").await.unwrap(), Attempt::DeadLettered);

    // A claim left behind by a holder that died is taken over once it is stale.
    assert_eq!(attempts::claim(&db, "e2").await.unwrap(), Claim::Mine);
    assert_eq!(attempts::claim(&db, "e2").await.unwrap(), Claim::Taken);
    assert_eq!(attempts::claim_if_older(&db, "e2", std::time::Duration::ZERO).await.unwrap(), Claim::Mine);

    // A holder that could not record it lets go, and the next one may try.
    attempts::release(&db, "e2").await.unwrap();
    assert_eq!(attempts::claim(&db, "e2").await.unwrap(), Claim::Mine);

    // A redriven copy starts over.
    attempts::clear(&db, "e1").await.unwrap();
    assert_eq!(attempts::begin(&db, "e1").await.unwrap(), Attempt::Number(1));
}

#[tokio::test]
async fn claims_are_exclusive_on_sqlite() {
    claims_are_exclusive("sqlite").await;
}

#[tokio::test]
async fn claims_are_exclusive_on_postgres() {
    claims_are_exclusive("postgres").await;
}
