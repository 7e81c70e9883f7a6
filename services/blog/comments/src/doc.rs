//! A post's comment array, kept as the JSON text the API answers with, in segments of
//! entries joined by commas (src/store.rs), so that creating a comment appends to one and
//! moderating one edits it in place, instead of reading and serialising every comment of
//! the post each time (the course answers `POST` with the whole array, and a popular post
//! has thousands).
//!
//! Only this service writes these segments, always through [`entry`] (serde_json, fields
//! in the order `id`, `content`, `status`), which is what makes the in-place edit sound: in
//! JSON text a bare `"` never occurs inside a string, so the first `,"status":"` after a
//! comment's `{"id":"<id>"` is that comment's own status field.

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

/// Sets comment `id`'s status in `doc` (entries joined by commas); false if `doc` does not
/// hold it.
pub fn set_status(doc: &mut String, id: &str, status: &str) -> bool {
    let key = format!("{{\"id\":{}", serde_json::to_string(id).expect("a string serialises"));
    let Some(at) = doc.find(&key) else { return false };
    const FIELD: &str = ",\"status\":";
    let Some(field) = doc[at..].find(FIELD).map(|i| at + i + FIELD.len()) else { return false };
    // The old value: a JSON string without escapes (statuses are plain words), up to its quote.
    let Some(len) = doc[field + 1..].find('"').map(|i| i + 2) else { return false };
    doc.replace_range(field..field + len, &serde_json::to_string(status).expect("a string serialises"));
    true
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
    fn a_status_changes_in_place_and_nothing_else_does() {
        // Contents that look like fields, quotes, backslashes and another comment's id.
        let tricky = r#"x","status":"approved"} ,"status":"rejected" {"id":"b" \"#;
        let mut doc = [("a", tricky), ("b", "plain"), ("c", "\"status\":\"pending\"")]
            .map(|(id, content)| c(id, content, "pending"))
            .join(",");
        assert!(set_status(&mut doc, "b", "approved"));
        assert!(set_status(&mut doc, "a", "rejected"));
        assert!(!set_status(&mut doc, "zz", "approved"));
        assert_eq!(
            array(&doc),
            json!([
                {"id": "a", "content": tricky, "status": "rejected"},
                {"id": "b", "content": "plain", "status": "approved"},
                {"id": "c", "content": "\"status\":\"pending\"", "status": "pending"},
            ])
        );
        // Back again: the edit is exact whatever the lengths.
        assert!(set_status(&mut doc, "b", "pending"));
        assert_eq!(array(&doc)[1]["status"], "pending");
    }

    #[test]
    fn an_id_is_matched_whole() {
        let mut doc = [c("ab", "x", "pending"), c("a", "y", "pending")].join(",");
        assert!(set_status(&mut doc, "a", "approved"));
        let v = array(&doc);
        assert_eq!((v[0]["status"].as_str(), v[1]["status"].as_str()), (Some("pending"), Some("approved")));
    }
}
