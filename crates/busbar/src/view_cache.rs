//! An in-memory copy of a view that is served whole as one JSON object
//! (`{"<id>": <doc>, ...}`), kept current from the database by *change stamps*.
//!
//! Why: a read model like the blog's `GET /posts` is read whole, often (the course's
//! client polls it), and changes a little at a time. Reading it from the database on every
//! request costs a scan of every row and, on a small machine, competes for the CPU with
//! applying the events that change it. With stamps, a read asks the database only for the
//! rows changed since the last one (usually none: one indexed lookup), then answers from
//! memory.
//!
//! The contract with the writer: each write of a row sets its `stamp` inside the writing
//! transaction, and a read can tell which stamps may still appear below what it has seen.
//! - Where writers take stamps one transaction at a time (SQLite's one writer bumping a
//!   counter row), stamps become visible in the order they were taken: a reader that has
//!   seen stamp `n` has seen every stamp below it, and resumes after the last row it read.
//! - Where writers run side by side (PostgreSQL), the stamp is the writing transaction's
//!   id, and each read also answers its *horizon*, the oldest transaction still running in
//!   its snapshot ([`Changes::horizon`]). Every transaction below it had finished, so its
//!   rows were in the read; the next read reads again from the horizon on. Writers share
//!   no lock (a counter row would be one more lock to deadlock on), and a read re-reads
//!   the few rows of transactions that were in flight.
//!
//! Either way a row written before a read begins is in that read, whichever process or
//! replica wrote it: *an event applied is visible to the next read*.
//!
//! The copy is held in chunks of members (`"<id>":<doc>` joined by commas) in id order,
//! each one immutable [`Bytes`] that a response shares without copying; a change rebuilds
//! only its chunk. Memory is about one copy of the view.

use std::{borrow::Cow, future::Future};

use bytes::Bytes;

/// One row of the view as the database holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub stamp: i64,
    pub id: String,
    /// The row's JSON document, as stored.
    pub doc: String,
}

/// What one read of the rows past a [`Watermark`] answers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Changes {
    /// Up to the asked number of rows, in `(stamp, id)` order.
    pub rows: Vec<Row>,
    /// Where stamps are transaction ids: the oldest transaction still running when these
    /// rows were read, in the same snapshot. Rows stamped from it on are read again next
    /// time. `None` where stamps are taken in commit order.
    pub horizon: Option<i64>,
}

/// Where a refresh resumes: the last `(stamp, id)` read. Rows are read in that order, so
/// rows sharing a stamp (e.g. those written before stamps existed, all 0) page correctly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Watermark {
    pub stamp: i64,
    pub id: String,
}

impl Watermark {
    /// Before every row: stamps start at 0.
    pub fn start() -> Self {
        Self { stamp: -1, id: String::new() }
    }
}

/// Members per chunk while the view grows at its end; a chunk that grows in the middle
/// (ids arriving out of order) splits when it reaches twice this.
const CHUNK: usize = 1000;

/// Rows asked for per round trip while refreshing. A page's rows exist three times while
/// it is read (the driver's row, its conversion, [`Row`]) before they join the copy, so
/// this bounds what a large refresh (the first read after a restart, or after many writes
/// with no read) holds on top of the copy: 5,000 cost query about 3 MiB more peak RSS at
/// 50,000 posts than 1,000, and a round trip per 1,000 rows is nothing beside reading them.
pub const PAGE: i64 = 1000;

#[derive(Debug, Clone, Default)]
struct Chunk {
    /// Where each member ends in `body`; member `i` starts after member `i - 1`'s comma.
    /// Members are in id order. Their ids are read back from `body` rather than kept apart:
    /// one allocation per member less, kept and cloned at every rebuild of its chunk.
    ends: Vec<usize>,
    /// `"<id>":<doc>` members joined by commas.
    body: Bytes,
}

impl Chunk {
    fn len(&self) -> usize {
        self.ends.len()
    }

    fn member(&self, i: usize) -> &[u8] {
        let start = if i == 0 { 0 } else { self.ends[i - 1] + 1 };
        &self.body[start..self.ends[i]]
    }

    /// Member `i`'s id, read from its quoted key: as written when nothing in it needed
    /// escaping (ids are usually plain), decoded when something did.
    fn id(&self, i: usize) -> Cow<'_, str> {
        let member = self.member(i);
        // The key's closing quote: the first one not escaped by a backslash.
        let (mut at, mut escaped) = (1, false);
        while member[at] != b'"' {
            if member[at] == b'\\' {
                escaped = true;
                at += 1;
            }
            at += 1;
        }
        if escaped {
            Cow::Owned(serde_json::from_slice(&member[..=at]).expect("a key this cache wrote is a JSON string"))
        } else {
            Cow::Borrowed(std::str::from_utf8(&member[1..at]).expect("a key this cache wrote is UTF-8"))
        }
    }

    /// How many members have ids at or before `after`: ids are in order, so a binary search.
    fn count_through(&self, after: &str) -> usize {
        let (mut lo, mut hi) = (0, self.len());
        while lo < hi {
            let mid = (lo + hi) / 2;
            if *self.id(mid) <= *after {
                lo = mid + 1;
            } else {
                hi = mid;
            }
        }
        lo
    }

    /// This chunk with `changes` (sorted by id, ids unique) applied: replaced where the id
    /// is here, inserted in order where it is not.
    fn with(&self, changes: &[(&str, &str)]) -> Chunk {
        let mut ends = Vec::with_capacity(self.len() + changes.len());
        let grow: usize = changes.iter().map(|(id, doc)| id.len() + doc.len() + 8).sum();
        let mut body = Vec::with_capacity(self.body.len() + grow);
        let push = |body: &mut Vec<u8>, ends: &mut Vec<usize>, member: &dyn Fn(&mut Vec<u8>)| {
            if !body.is_empty() {
                body.push(b',');
            }
            member(body);
            ends.push(body.len());
        };
        let (mut i, mut c) = (0, 0);
        while i < self.len() || c < changes.len() {
            let take_change = match (i < self.len(), changes.get(c)) {
                (true, Some((new, _))) => (**new).cmp(&*self.id(i)),
                (false, Some(_)) => std::cmp::Ordering::Less,
                _ => std::cmp::Ordering::Greater,
            };
            match take_change {
                std::cmp::Ordering::Greater => {
                    let old = self.member(i);
                    push(&mut body, &mut ends, &|b| b.extend_from_slice(old));
                    i += 1;
                }
                order => {
                    let (id, doc) = changes[c];
                    push(&mut body, &mut ends, &|b| write_member(b, id, doc));
                    c += 1;
                    // The same id: the change replaces the member.
                    if order == std::cmp::Ordering::Equal {
                        i += 1;
                    }
                }
            }
        }
        Chunk { ends, body: Bytes::from(body) }
    }

    /// Splits a chunk that grew past twice [`CHUNK`] into chunks of [`CHUNK`].
    fn split(self) -> Vec<Chunk> {
        if self.len() < 2 * CHUNK {
            return vec![self];
        }
        (0..self.len())
            .step_by(CHUNK)
            .map(|first| {
                let last = (first + CHUNK).min(self.len()) - 1;
                let start = if first == 0 { 0 } else { self.ends[first - 1] + 1 };
                let ends = self.ends[first..=last].iter().map(|e| e - start).collect();
                Chunk { ends, body: self.body.slice(start..self.ends[last]) }
            })
            .collect()
    }
}

/// `"<id>":<doc>`, the id quoted as a JSON string.
fn write_member(out: &mut Vec<u8>, id: &str, doc: &str) {
    serde_json::to_writer(&mut *out, id).expect("a string serialises");
    out.push(b':');
    out.extend_from_slice(doc.as_bytes());
}

/// The view in memory; see the module docs.
#[derive(Debug, Clone)]
pub struct ViewCache {
    seen: Watermark,
    chunks: Vec<Chunk>,
}

impl Default for ViewCache {
    fn default() -> Self {
        Self { seen: Watermark::start(), chunks: vec![] }
    }
}

impl ViewCache {
    /// The last row this copy has read; the next refresh reads past it.
    pub fn watermark(&self) -> &Watermark {
        &self.seen
    }

    /// Number of members held.
    pub fn len(&self) -> usize {
        self.chunks.iter().map(Chunk::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }

    /// Applies rows read past the watermark, in `(stamp, id)` order as read. A row seen
    /// twice (rewritten since) keeps its last document.
    pub fn apply(&mut self, rows: Vec<Row>) {
        let Some(last) = rows.last() else { return };
        self.seen = Watermark { stamp: last.stamp, id: last.id.clone() };
        // Sorted by id, the later copy of an id winning: then each chunk takes its run.
        let mut changes: Vec<(&str, &str)> = rows.iter().rev().map(|r| (r.id.as_str(), r.doc.as_str())).collect();
        changes.sort_by(|a, b| a.0.cmp(b.0));
        changes.dedup_by(|later, earlier| later.0 == earlier.0);
        let chunks = std::mem::take(&mut self.chunks);
        let count = chunks.len();
        // Each chunk takes the changes below the next chunk's first id (the last chunk, all
        // that are left).
        let bounds: Vec<String> = chunks.iter().skip(1).map(|c| c.id(0).into_owned()).collect();
        let mut rest = &changes[..];
        let mut out = Vec::with_capacity(count + 1);
        for (n, chunk) in chunks.into_iter().enumerate() {
            let take = match bounds.get(n) {
                Some(next) => rest.partition_point(|(id, _)| *id < &**next),
                None => rest.len(),
            };
            let (mine, later) = rest.split_at(take);
            rest = later;
            if mine.is_empty() {
                out.push(chunk);
                continue;
            }
            // The view growing at its end (new ids sort last): fill the last chunk to
            // CHUNK, then start new ones, rather than rebuilding one ever larger chunk.
            if n + 1 == count && chunk.len() > 0 && *chunk.id(chunk.len() - 1) < *mine[0].0 {
                let room = CHUNK.saturating_sub(chunk.len()).min(mine.len());
                out.push(if room > 0 { chunk.with(&mine[..room]) } else { chunk });
                out.extend(mine[room..].chunks(CHUNK).map(|part| Chunk::default().with(part)));
            } else {
                out.extend(chunk.with(mine).split());
            }
        }
        if out.is_empty() {
            out.extend(rest.chunks(CHUNK).map(|part| Chunk::default().with(part)));
        }
        self.chunks = out;
    }

    /// The whole view as one JSON object, in parts to send one after another: `{`, each
    /// chunk with commas between, `}`. The chunks are shared, not copied.
    pub fn body(&self) -> Vec<Bytes> {
        let mut parts = Vec::with_capacity(2 * self.chunks.len() + 1);
        parts.push(Bytes::from_static(b"{"));
        for (n, c) in self.chunks.iter().enumerate() {
            if n > 0 {
                parts.push(Bytes::from_static(b","));
            }
            parts.push(c.body.clone());
        }
        parts.push(Bytes::from_static(b"}"));
        parts
    }

    /// A page of the view as one JSON object: the members whose ids sort after `after` (all,
    /// for `""`), at most `limit` of them, in parts like [`Self::body`]'s. Each run of
    /// members is a slice of its chunk, shared, not copied.
    pub fn page(&self, after: &str, limit: usize) -> Vec<Bytes> {
        let mut parts = vec![Bytes::from_static(b"{")];
        let mut left = limit;
        // The first chunk that may hold an id after `after`: the last one starting at or
        // before it (chunks are in id order and do not overlap).
        let first = self.chunks.partition_point(|c| *c.id(0) <= *after).saturating_sub(1);
        for c in &self.chunks[first..] {
            if left == 0 {
                break;
            }
            let from = c.count_through(after);
            let to = c.len().min(from + left);
            if from == to {
                continue;
            }
            if parts.len() > 1 {
                parts.push(Bytes::from_static(b","));
            }
            let start = if from == 0 { 0 } else { c.ends[from - 1] + 1 };
            parts.push(c.body.slice(start..c.ends[to - 1]));
            left -= to - from;
        }
        parts.push(Bytes::from_static(b"}"));
        parts
    }

    /// Reads every row past the watermark through `fetch` (`fetch(after, limit)` answers
    /// up to `limit` rows past `after` in `(stamp, id)` order), a page at a time, and
    /// applies them. Returns how many rows it read.
    pub async fn refresh<F, Fut, E>(&mut self, mut fetch: F) -> Result<usize, E>
    where
        F: FnMut(Watermark, i64) -> Fut,
        Fut: Future<Output = Result<Changes, E>>,
    {
        let mut read = 0;
        // The first page's horizon: horizons only move on, so it is the oldest.
        let mut horizon = None;
        loop {
            let page = fetch(self.seen.clone(), PAGE).await?;
            horizon = horizon.or(page.horizon);
            let full = page.rows.len() as i64 == PAGE;
            read += page.rows.len();
            self.apply(page.rows);
            if !full {
                break;
            }
        }
        // Rows of transactions that were still running may commit later with a stamp
        // below the last one read: the next read starts at the horizon (ids are never
        // empty, so `(h, "")` is before every row stamped `h`).
        if let Some(h) = horizon
            && (h, "") < (self.seen.stamp, self.seen.id.as_str())
        {
            self.seen = Watermark { stamp: h, id: String::new() };
        }
        Ok(read)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn row(stamp: i64, id: &str, doc: &str) -> Row {
        Row { stamp, id: id.into(), doc: doc.into() }
    }

    /// The body parsed back, with its keys in the order they were sent.
    fn parsed(cache: &ViewCache) -> Vec<(String, serde_json::Value)> {
        let bytes: Vec<u8> = cache.body().iter().flat_map(|b| b.to_vec()).collect();
        let text = String::from_utf8(bytes).unwrap();
        let value: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not a JSON object ({e}): {text}"));
        value.into_iter().collect()
    }

    #[test]
    fn an_empty_view_is_an_empty_object() {
        let mut cache = ViewCache::default();
        cache.apply(vec![]);
        assert_eq!(cache.body().concat(), b"{}");
        assert_eq!(cache.watermark(), &Watermark::start());
    }

    #[test]
    fn rows_are_added_replaced_and_kept_in_id_order() {
        let mut cache = ViewCache::default();
        cache.apply(vec![row(1, "b", "2"), row(2, "a", r#"{"x":"\"q\" ✓"}"#)]);
        assert_eq!(cache.body().concat(), r#"{"a":{"x":"\"q\" ✓"},"b":2}"#.as_bytes());
        // A rewrite of a, a new c, and b written twice in one read: its later copy wins.
        cache.apply(vec![row(3, "b", "3"), row(4, "a", "[]"), row(5, "c", "null"), row(6, "b", "4")]);
        assert_eq!(cache.body().concat(), br#"{"a":[],"b":4,"c":null}"#.to_vec());
        assert_eq!(cache.watermark(), &Watermark { stamp: 6, id: "b".into() });
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn a_page_is_the_members_after_an_id_up_to_a_limit() {
        let mut cache = ViewCache::default();
        assert_eq!(cache.page("", 10).concat(), b"{}");
        let ids: Vec<String> = (0..2 * CHUNK + 500).map(|n| format!("p{n:06}")).collect();
        cache.apply(ids.iter().enumerate().map(|(n, id)| row(n as i64, id, &n.to_string())).collect());
        let keys = |parts: Vec<Bytes>| -> Vec<String> {
            let v: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(&parts.concat()).unwrap();
            v.into_iter().map(|(k, _)| k).collect()
        };
        // Within a chunk, across chunk boundaries, from before the first id, past the last.
        for (after, limit) in [("", 3), ("p000010", 5), ("p000998", 4), ("p000999", 1), ("", 2 * CHUNK + 500)] {
            let from = ids.partition_point(|id| id.as_str() <= after);
            let want: Vec<String> = ids[from..].iter().take(limit).cloned().collect();
            assert_eq!(keys(cache.page(after, limit)), want, "after {after:?}, limit {limit}");
        }
        // An id that is not in the view starts the page where it would sort.
        assert_eq!(keys(cache.page("p001500x", 2)), ["p001501", "p001502"]);
        assert_eq!(cache.page("q", 5).concat(), b"{}");
        assert_eq!(cache.page("", 0).concat(), b"{}");
        assert_eq!(cache.page("", usize::MAX).concat(), cache.body().concat());
    }

    #[test]
    fn ids_that_need_escaping_are_quoted() {
        let mut cache = ViewCache::default();
        cache.apply(vec![row(0, "a\"b\\c", "1")]);
        assert_eq!(parsed(&cache), vec![("a\"b\\c".to_owned(), serde_json::json!(1))]);
    }

    /// Ids are read back from the members' quoted keys: one that was escaped there must
    /// still sort, replace and page as itself.
    #[test]
    fn escaped_ids_sort_replace_and_page_as_themselves() {
        let mut cache = ViewCache::default();
        let escaped = ["b\"q", "b\\\\", "c\u{1}"];
        cache.apply(vec![row(0, "a", "0"), row(0, escaped[0], "1"), row(0, escaped[1], "2"), row(0, "z", "3")]);
        // Replaces the escaped ids' members and inserts one between them, in id order.
        cache.apply(vec![row(1, escaped[1], "20"), row(1, escaped[0], "10"), row(1, escaped[2], "4")]);
        let keys: Vec<(String, serde_json::Value)> = parsed(&cache);
        let want = [("a", 0), (escaped[0], 10), (escaped[1], 20), (escaped[2], 4), ("z", 3)];
        assert_eq!(keys, want.map(|(k, v)| (k.to_owned(), serde_json::json!(v))).to_vec());
        let page = |after: &str, limit| -> Vec<String> {
            let text = String::from_utf8(cache.page(after, limit).concat()).unwrap();
            let map: serde_json::Map<String, serde_json::Value> = serde_json::from_str(&text).unwrap();
            map.into_iter().map(|(k, _)| k).collect()
        };
        assert_eq!(page(escaped[0], 2), [escaped[1], escaped[2]]);
        assert_eq!(page("b", 1), [escaped[0]]);
        assert_eq!(page(escaped[2], 10), ["z"]);
    }

    #[test]
    fn a_growing_view_fills_chunks_and_starts_new_ones() {
        let mut cache = ViewCache::default();
        let ids: Vec<String> = (0..2 * CHUNK + 10).map(|n| format!("p{n:06}")).collect();
        // In pages, as refresh reads them.
        for (n, page) in ids.chunks(700).enumerate() {
            cache.apply(page.iter().map(|id| row(n as i64, id, "0")).collect());
        }
        assert_eq!(cache.chunks.iter().map(|c| c.len()).collect::<Vec<_>>(), vec![CHUNK, CHUNK, 10]);
        let keys: Vec<String> = parsed(&cache).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ids);
    }

    #[test]
    fn a_chunk_that_grows_in_the_middle_splits() {
        let mut cache = ViewCache::default();
        // Even ids first, then odd ones, which all land in the first chunk's range.
        let even: Vec<Row> = (0..2 * CHUNK).step_by(2).map(|n| row(0, &format!("{n:06}"), "0")).collect();
        cache.apply(even);
        let odd: Vec<Row> = (1..2 * CHUNK).step_by(2).map(|n| row(1, &format!("{n:06}"), "1")).collect();
        cache.apply(odd);
        assert!(cache.chunks.iter().all(|c| c.len() <= 2 * CHUNK), "chunks stay bounded");
        assert!(cache.chunks.len() >= 2, "the chunk split");
        let got = parsed(&cache);
        assert_eq!(got.len(), 2 * CHUNK);
        for (n, (k, v)) in got.iter().enumerate() {
            assert_eq!((k.as_str(), v), (format!("{n:06}").as_str(), &serde_json::json!(n % 2)));
        }
    }

    /// Random writes against a plain map: the body always equals the map.
    #[test]
    fn the_body_always_equals_the_rows_last_written() {
        let mut model = BTreeMap::new();
        let mut cache = ViewCache::default();
        let mut seed: u64 = 0x5eed;
        let mut next = move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        };
        let mut stamp = 0;
        for _ in 0..60 {
            let batch = (next() % 400) as usize;
            let mut rows = vec![];
            for _ in 0..batch {
                let id = format!("k{:05}", next() % 3000);
                stamp += 1;
                let doc = format!("{stamp}");
                model.insert(id.clone(), serde_json::json!(stamp));
                rows.push(row(stamp, &id, &doc));
            }
            cache.apply(rows);
            let got = parsed(&cache);
            let want: Vec<(String, serde_json::Value)> = model.clone().into_iter().collect();
            assert_eq!(got, want);
            assert!(cache.chunks.iter().all(|c| c.len() > 0 && c.len() < 2 * CHUNK));
        }
    }

    #[tokio::test]
    async fn refresh_reads_past_the_watermark_a_page_at_a_time() {
        let table: Vec<Row> = (0..PAGE + 3).map(|n| row(n / 2, &format!("{n:07}"), "0")).collect();
        let mut asked = vec![];
        let mut cache = ViewCache::default();
        let read = cache
            .refresh(|after, limit| {
                asked.push(after.clone());
                let page: Vec<Row> = table
                    .iter()
                    .filter(|r| (r.stamp, r.id.as_str()) > (after.stamp, after.id.as_str()))
                    .take(limit as usize)
                    .cloned()
                    .collect();
                async move { Ok::<_, ()>(Changes { rows: page, horizon: None }) }
            })
            .await
            .unwrap();
        assert_eq!(read, table.len());
        assert_eq!(cache.len(), table.len());
        assert_eq!(asked.len(), 2, "a full page, then the rest");
        assert_eq!(asked[1], Watermark { stamp: (PAGE - 1) / 2, id: format!("{:07}", PAGE - 1) });
        assert_eq!(cache.watermark(), &Watermark { stamp: (PAGE + 2) / 2, id: format!("{:07}", PAGE + 2) });
    }
}

#[cfg(test)]
mod horizon_tests {
    use super::*;

    /// Stamps are transaction ids: transaction 7 writes `b` but commits only after a read
    /// has seen transaction 9's `c`. The next read goes back to the horizon and finds `b`.
    #[tokio::test]
    async fn rows_of_transactions_running_at_a_read_are_read_again() {
        let committed = std::cell::RefCell::new(vec![
            Row { stamp: 5, id: "a".into(), doc: "1".into() },
            Row { stamp: 9, id: "c".into(), doc: "3".into() },
        ]);
        let running = std::cell::Cell::new(Some(7));
        let fetch = |after: Watermark, limit: i64| {
            let mut rows: Vec<Row> = committed
                .borrow()
                .iter()
                .filter(|r| (r.stamp, r.id.as_str()) > (after.stamp, after.id.as_str()))
                .take(limit as usize)
                .cloned()
                .collect();
            rows.sort_by(|a, b| (a.stamp, &a.id).cmp(&(b.stamp, &b.id)));
            let horizon = Some(running.get().unwrap_or(100));
            async move { Ok::<_, ()>(Changes { rows, horizon }) }
        };
        let mut cache = ViewCache::default();
        cache.refresh(fetch).await.unwrap();
        assert_eq!(cache.body().concat(), br#"{"a":1,"c":3}"#.to_vec());
        assert_eq!(cache.watermark(), &Watermark { stamp: 7, id: String::new() });

        committed.borrow_mut().push(Row { stamp: 7, id: "b".into(), doc: "2".into() });
        running.set(None);
        cache.refresh(fetch).await.unwrap();
        assert_eq!(cache.body().concat(), br#"{"a":1,"b":2,"c":3}"#.to_vec());
        // Nothing running any more: the next read starts after the last row.
        assert_eq!(cache.watermark(), &Watermark { stamp: 9, id: "c".into() });
    }
}
