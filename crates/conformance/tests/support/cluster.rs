//! The bus stream as a JetStream cluster reports it: replicas, leader, and whether the
//! replicas have caught up.

use busbar::names::stream_name;

use super::{TAKEOVER, world::World};

/// The bus stream's replica count and current leader (waits until it has one).
pub async fn stream_cluster(w: &World) -> (usize, String) {
    let js = w.js().await;
    let start = std::time::Instant::now();
    loop {
        if let Ok(mut stream) = js.context().get_stream(stream_name(&w.id)).await
            && let Ok(info) = stream.info().await
            && let Some(leader) = info.cluster.as_ref().and_then(|c| c.leader.clone())
        {
            return (info.config.num_replicas, leader);
        }
        assert!(
            start.elapsed() < TAKEOVER,
            "{}: stream {} has no leader\n{}",
            w.case,
            stream_name(&w.id),
            w.diagnostics()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// Waits until every replica of the bus stream is online and caught up, so that the next
/// kill leaves a quorum that has everything.
pub async fn stream_replicas_current(w: &World) {
    let js = w.js().await;
    let start = std::time::Instant::now();
    loop {
        if let Ok(mut stream) = js.context().get_stream(stream_name(&w.id)).await
            && let Ok(info) = stream.info().await
            && let Some(c) = &info.cluster
            && c.leader.is_some()
            && c.replicas.len() + 1 == info.config.num_replicas
            && c.replicas.iter().all(|p| p.current && !p.offline)
        {
            return;
        }
        assert!(
            start.elapsed() < TAKEOVER,
            "{}: the replicas of stream {} did not catch up within {TAKEOVER:?}\n{}",
            w.case,
            stream_name(&w.id),
            w.diagnostics()
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}
