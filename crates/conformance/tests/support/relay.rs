//! Which replica's outbox relay leads. A relay says so with the gauge
//! `busbar_outbox_relay_leader` on `/metrics` (1 leading, 0 standing by), or else in its
//! log, where the last line about it says "outbox relay leading" or "outbox relay
//! standing by".

use super::{TAKEOVER, probe::Probe};

/// Waits until exactly one of `replicas` (those not in `dead`) says its relay leads, and
/// returns its index.
pub async fn one_leader(case: &str, replicas: &[Probe], dead: &[usize]) -> usize {
    let start = std::time::Instant::now();
    loop {
        let mut says = vec![];
        for (i, r) in replicas.iter().enumerate().filter(|(i, _)| !dead.contains(i)) {
            says.push((i, relay_leads(r).await));
        }
        let leaders: Vec<usize> = says.iter().filter(|(_, s)| *s == Some(true)).map(|(i, _)| *i).collect();
        if let [one] = leaders.as_slice() {
            return *one;
        }
        if start.elapsed() > TAKEOVER {
            let shown: Vec<String> = says.iter().map(|(i, s)| format!("{}: {s:?}", replicas[*i].replica)).collect();
            let logs: Vec<String> = replicas.iter().map(Probe::log_tail).collect();
            panic!(
                "{case}: expected exactly one replica whose outbox relay leads (one writer per database), within \
                 {TAKEOVER:?}; each says (Some(true) leads, Some(false) stands by, None says nothing: no \
                 busbar_outbox_relay_leader gauge and no 'outbox relay leading'/'standing by' log line): {}\n{}",
                shown.join(", "),
                logs.join("\n")
            );
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

/// What `p`'s relay says about itself, if anything.
pub async fn relay_leads(p: &Probe) -> Option<bool> {
    if let Some(v) = p.metric("busbar_outbox_relay_leader").await {
        return Some(v == 1.0);
    }
    let log = p.log();
    let since_start = log.rsplit("===== harness: start").next().unwrap_or_default();
    since_start.lines().rev().find_map(|l| {
        if l.contains("outbox relay leading") {
            Some(true)
        } else if l.contains("outbox relay standing by") {
            Some(false)
        } else {
            None
        }
    })
}
