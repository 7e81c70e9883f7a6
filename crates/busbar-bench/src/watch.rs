//! Seeing writes become visible in query's `GET /posts`, as a client would: the watcher
//! polls the view and notes when each awaited post (or comment status) first shows up.
//!
//! The view only grows, so polling all of it would cost more with every post and load
//! the very service being measured. The watcher asks for one page instead,
//! `GET /posts?after=<id>&limit=<n>`, starting just below the oldest thing it still
//! waits for. Post ids are UUIDv7, which sort by creation time, so even a post whose id
//! the benchmark has not heard back yet lies above the id floor of the moment its request
//! was sent.
//!
//! [`WatchState`] is the pure part (what to ask for, what a page settles); [`Watcher`]
//! is the polling loop around it.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use crate::clock;
use serde::Deserialize;

/// Posts per poll request.
pub const PAGE: usize = 1000;

/// What the benchmark waits to see for one post.
#[derive(Debug, Clone, PartialEq)]
pub enum Want {
    /// The post itself.
    Post,
    /// A comment with this content, in this status.
    Comment { content: String, status: &'static str },
}

#[derive(Debug)]
struct Pending {
    sent_ns: u64,
    want: Want,
}

/// One post of query's view, as far as the watcher reads it.
#[derive(Debug, Deserialize)]
pub struct ViewPost {
    #[serde(default)]
    pub comments: Vec<ViewComment>,
}

#[derive(Debug, Deserialize)]
pub struct ViewComment {
    pub content: String,
    pub status: String,
}

#[derive(Debug, Default)]
pub struct WatchState {
    /// Awaited posts by id.
    pending: BTreeMap<String, Pending>,
    /// Post requests without an answer yet (so without a known id), by the wall-clock
    /// millisecond they were sent: a multiset.
    in_flight: BTreeMap<u64, u32>,
    /// Posts seen before the benchmark learnt their id (visible before the 201 arrived).
    early: HashMap<String, u64>,
    /// Written-to-visible time of everything seen, in ns.
    pub latencies_ns: Vec<u64>,
    /// When the last awaited thing became visible.
    pub last_seen_ns: u64,
    pub polls: u64,
    pub poll_errors: u64,
    pub first_error: Option<String>,
}

impl WatchState {
    /// A post request sent at wall-clock `ms` whose answer has not come yet.
    pub fn sending(&mut self, ms: u64) {
        *self.in_flight.entry(ms).or_default() += 1;
    }

    /// The request sent at `ms` finished: `id` when it created the post. `sent_ns` is
    /// the write's stamp (its scheduled time in an open loop).
    pub fn answered(&mut self, ms: u64, id: Option<String>, sent_ns: u64) {
        if let Some(n) = self.in_flight.get_mut(&ms) {
            *n -= 1;
            if *n == 0 {
                self.in_flight.remove(&ms);
            }
        }
        let Some(id) = id else { return };
        match self.early.remove(&id) {
            Some(seen_ns) => self.record(sent_ns, seen_ns),
            None => {
                self.pending.insert(id, Pending { sent_ns, want: Want::Post });
            }
        }
    }

    /// Awaits `want` on the known post `post_id`, written at `sent_ns`.
    pub fn expect(&mut self, post_id: String, want: Want, sent_ns: u64) {
        self.pending.insert(post_id, Pending { sent_ns, want });
    }

    /// Gives up on a write that failed (it will never show).
    pub fn forget(&mut self, post_id: &str) {
        self.pending.remove(post_id);
    }

    pub fn waiting(&self) -> usize {
        self.pending.len() + self.in_flight.values().sum::<u32>() as usize
    }

    /// Where the next poll starts (exclusive), or `None` when nothing is awaited.
    pub fn poll_from(&self) -> Option<String> {
        let below_pending = self.pending.keys().next().map(|id| predecessor(id));
        // A millisecond of slack for the server's clock reading before the client's.
        let below_in_flight = self.in_flight.keys().next().map(|ms| uuid_v7_floor(ms.saturating_sub(1)));
        match (below_pending, below_in_flight) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Settles what `page` (posts in id order) shows, seen at `now_ns`. Returns the id to
    /// continue after when the page was full and more may be awaited beyond it.
    pub fn absorb(&mut self, page: &BTreeMap<String, ViewPost>, now_ns: u64) -> Option<String> {
        self.polls += 1;
        let track_early = !self.in_flight.is_empty();
        for (id, post) in page {
            match self.pending.get(id) {
                Some(p) => {
                    let visible = match &p.want {
                        Want::Post => true,
                        Want::Comment { content, status } => {
                            post.comments.iter().any(|c| &c.content == content && c.status == *status)
                        }
                    };
                    if visible {
                        let sent = p.sent_ns;
                        self.pending.remove(id);
                        self.record(sent, now_ns);
                    }
                }
                None if track_early => {
                    self.early.entry(id.clone()).or_insert(now_ns);
                }
                None => {}
            }
        }
        let last = page.keys().next_back()?;
        let beyond = (std::ops::Bound::Excluded(last.clone()), std::ops::Bound::Unbounded);
        let more = page.len() >= PAGE
            && (!self.in_flight.is_empty() || self.pending.range::<String, _>(beyond).next().is_some());
        more.then(|| last.clone())
    }

    fn record(&mut self, sent_ns: u64, seen_ns: u64) {
        self.latencies_ns.push(seen_ns.saturating_sub(sent_ns));
        self.last_seen_ns = self.last_seen_ns.max(seen_ns);
    }

    /// Starts a new measurement: forgets latencies and leftovers.
    pub fn reset(&mut self) {
        *self = WatchState::default();
    }
}

/// The smallest id a UUIDv7 created at wall-clock millisecond `ms` or later can have,
/// minus one: its 48 timestamp bits, then zeros (every real v7 id has version bits 0111
/// there, so it sorts above).
pub fn uuid_v7_floor(ms: u64) -> String {
    uuid::Uuid::from_u128(((ms as u128) & 0xffff_ffff_ffff) << 80).hyphenated().to_string()
}

/// The id just below `id` in sort order, so that `after=<it>` includes `id`.
pub fn predecessor(id: &str) -> String {
    match uuid::Uuid::parse_str(id) {
        Ok(u) => uuid::Uuid::from_u128(u.as_u128().saturating_sub(1)).hyphenated().to_string(),
        // Not a UUID: any string just below it in byte order would do; this is one.
        Err(_) => id.chars().take(id.chars().count().saturating_sub(1)).collect(),
    }
}

/// Milliseconds since the Unix epoch, the clock UUIDv7 ids carry.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// How the watcher reads the view.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Read {
    /// One page from just below the oldest awaited post (see the module's doc).
    Paged,
    /// The whole `GET /posts`, as the course's React client reads it, however large.
    Full,
}

/// Polls query's view every `interval` while anything is awaited; stopped when dropped.
pub struct Watcher {
    state: Arc<Mutex<WatchState>>,
    task: tokio::task::JoinHandle<()>,
}

impl Watcher {
    pub fn start(client: reqwest::Client, query_url: String, interval: Duration, read: Read) -> Watcher {
        let state = Arc::new(Mutex::new(WatchState::default()));
        let s = state.clone();
        let task = tokio::spawn(async move {
            loop {
                let mut from = s.lock().expect("watch lock poisoned").poll_from();
                while let Some(after) = from.take() {
                    let url = match read {
                        Read::Paged => format!("{query_url}/posts?after={after}&limit={PAGE}"),
                        Read::Full => format!("{query_url}/posts"),
                    };
                    let page = async {
                        let r = client.get(&url).send().await.map_err(|e| e.to_string())?;
                        if !r.status().is_success() {
                            return Err(format!("HTTP {}", r.status()));
                        }
                        r.json::<BTreeMap<String, ViewPost>>().await.map_err(|e| e.to_string())
                    };
                    let page = page.await;
                    let now = clock::now_ns();
                    let mut g = s.lock().expect("watch lock poisoned");
                    match page {
                        // The whole view needs no next page.
                        Ok(page) => from = g.absorb(&page, now).filter(|_| read == Read::Paged),
                        Err(e) => {
                            g.poll_errors += 1;
                            g.first_error.get_or_insert(format!("GET {url}: {e}"));
                        }
                    }
                }
                tokio::time::sleep(interval).await;
            }
        });
        Watcher { state, task }
    }

    /// The state, for load generators that report their writes from their own tasks.
    pub fn shared(&self) -> Arc<Mutex<WatchState>> {
        self.state.clone()
    }

    pub fn lock(&self) -> MutexGuard<'_, WatchState> {
        self.state.lock().expect("watch lock poisoned")
    }

    /// Waits until nothing is awaited, or `timeout`. Returns how many were never seen.
    pub async fn drain(&self, timeout: Duration) -> usize {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let waiting = self.lock().waiting();
            if waiting == 0 || tokio::time::Instant::now() >= deadline {
                return waiting;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for Watcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn page(ids: &[(&str, &[(&str, &str)])]) -> BTreeMap<String, ViewPost> {
        ids.iter()
            .map(|(id, cs)| {
                let comments =
                    cs.iter().map(|(c, s)| ViewComment { content: c.to_string(), status: s.to_string() }).collect();
                (id.to_string(), ViewPost { comments })
            })
            .collect()
    }

    #[test]
    fn a_v7_floor_sorts_below_every_id_of_that_millisecond() {
        let ms = 0x0190_1234_5678;
        let floor = uuid_v7_floor(ms);
        assert_eq!(floor, "01901234-5678-0000-0000-000000000000");
        // The smallest v7 id of that millisecond: version 7, variant 10, all else zero.
        let id = "01901234-5678-7000-8000-000000000000";
        assert!(id > floor.as_str());
        assert!(uuid_v7_floor(ms + 1).as_str() > id);
    }

    #[test]
    fn predecessors_sort_just_below() {
        let id = "01901234-5678-7abc-8def-000000000000";
        let p = predecessor(id);
        assert_eq!(p, "01901234-5678-7abc-8dee-ffffffffffff");
        assert!(p.as_str() < id);
    }

    #[test]
    fn posts_are_seen_once_answered_or_early() {
        let mut w = WatchState::default();
        w.sending(1000);
        w.sending(1000);
        assert_eq!(w.poll_from(), Some(uuid_v7_floor(999)));
        // One post shows before its 201 arrives.
        w.absorb(&page(&[("b", &[])]), 50);
        w.answered(1000, Some("b".into()), 10);
        w.answered(1000, Some("c".into()), 20);
        assert_eq!(w.latencies_ns, [40]);
        assert_eq!(w.poll_from(), Some(predecessor("c")));
        w.absorb(&page(&[("c", &[])]), 80);
        assert_eq!(w.latencies_ns, [40, 60]);
        assert_eq!((w.waiting(), w.poll_from()), (0, None));
    }

    #[test]
    fn comments_wait_for_their_status() {
        let mut w = WatchState::default();
        w.expect("p".into(), Want::Comment { content: "hi".into(), status: "approved" }, 5);
        w.absorb(&page(&[("p", &[("hi", "pending")])]), 10);
        assert_eq!(w.waiting(), 1);
        w.absorb(&page(&[("p", &[("hi", "approved")])]), 30);
        assert_eq!((w.waiting(), w.latencies_ns.as_slice()), (0, &[25][..]));
    }

    #[test]
    fn full_pages_continue_only_while_something_lies_beyond() {
        let mut w = WatchState::default();
        let ids: Vec<String> = (0..PAGE).map(|i| format!("{i:06}")).collect();
        let full: BTreeMap<String, ViewPost> = ids.iter().map(|i| (i.clone(), ViewPost { comments: vec![] })).collect();
        w.expect("zzz".into(), Want::Post, 0);
        assert_eq!(w.absorb(&full, 1), Some(ids[PAGE - 1].clone()));
        w.forget("zzz");
        assert_eq!(w.absorb(&full, 1), None);
    }
}
