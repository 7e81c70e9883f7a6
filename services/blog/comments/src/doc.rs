//! A post's comment array, kept as the JSON text the API answers with, in segments of
//! entries joined by commas (src/store.rs), so that creating a comment appends to one and
//! moderating one edits it in place, instead of reading and serialising every comment of
//! the post each time (the course answers `POST` with the whole array, and a popular post
//! has thousands).
//!
//! Only this service writes these segments, always through [`entry`] (serde_json, fields
//! in the order `id`, `content`, `status`), which is what makes the in-place edit sound:
//! an entry is rebuilt from the comment's row and replaced whole, and in JSON text a bare
//! `"` never occurs inside a string, so `{"id":"<id>",` starts that comment's entry and no
//! other text.

use serde::Serialize;

#[derive(Debug, Serialize, PartialEq)]
pub struct Comment<'a> {
    pub id: &'a str,
    pub content: &'a str,
    pub status: &'a str,
}

/// One comment as the array holds it.
pub fn entry(c: &Comment) -> String {
    serde_json::to_string(c).expect("a comment serialises")
}

/// The array of entries already joined by commas: brackets added in place, in the string's
/// own buffer (at most one move of its bytes), since on a popular post it is hundreds of
/// kilobytes, and `format!` would grow a new buffer by doubling, copying it several times.
pub fn array(mut members: String) -> String {
    members.reserve_exact(2);
    members.insert(0, '[');
    members.push(']');
    members
}

/// The array of the given segments (each a run of entries joined by commas; empty ones
/// skipped), in order: built once at its final size. The database hands the segments over
/// as they are stored rather than joining them itself: SQLite's `group_concat(doc, ','
/// ORDER BY seg)` copies every segment into a temporary b-tree to sort it first.
pub fn array_of<'a>(segments: impl Iterator<Item = &'a str> + Clone) -> String {
    let size = segments.clone().map(|s| s.len() + 1).sum::<usize>() + 2;
    let mut out = String::with_capacity(size);
    out.push('[');
    for s in segments.filter(|s| !s.is_empty()) {
        if out.len() > 1 {
            out.push(',');
        }
        out.push_str(s);
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn c<'a>(id: &'a str, content: &'a str, status: &'a str) -> String {
        entry(&Comment { id, content, status })
    }

    /// A segment's entries as the array they are part of.
    fn array(doc: &str) -> Value {
        serde_json::from_str(&format!("[{doc}]")).unwrap()
    }

    #[test]
    fn entries_joined_by_commas_are_a_json_array_in_order() {
        let doc = [c("a", "first", "pending"), c("b", "second", "pending")].join(",");
        let v = array(&doc);
        assert_eq!(
            v,
            json!([{"id": "a", "content": "first", "status": "pending"}, {"id": "b", "content": "second", "status": "pending"}])
        );
    }

    #[test]
    fn segments_join_into_one_array_in_order() {
        assert_eq!(array_of([].into_iter()), "[]");
        assert_eq!(array_of([""].into_iter()), "[]");
        let (a, b, c) = (c("a", "x", "pending"), c("b", "y,z", "approved"), c("c", "", "rejected"));
        let joined = array_of([format!("{a},{b}").as_str(), "", c.as_str()].into_iter());
        assert_eq!(joined, format!("[{a},{b},{c}]"));
    }

    #[test]
    fn an_array_brackets_its_members() {
        assert_eq!(super::array(String::new()), "[]");
        let one = entry(&Comment { id: "c1", content: "a, \"b\"", status: "pending" });
        let two = entry(&Comment { id: "c2", content: "✓", status: "approved" });
        let joined = super::array(format!("{one},{two}"));
        let parsed: Value = serde_json::from_str(&joined).unwrap();
        assert_eq!(parsed[1], json!({"id": "c2", "content": "✓", "status": "approved"}));
        assert_eq!(joined, format!("[{one},{two}]"));
    }
}
