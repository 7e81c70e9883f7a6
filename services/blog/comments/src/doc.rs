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
}
