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
