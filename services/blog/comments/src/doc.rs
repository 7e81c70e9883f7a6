//! A post's comment array, kept as the JSON text the API answers with, so that creating a
//! comment appends to it and moderating one edits it in place, instead of reading and
//! serialising every comment of the post each time (the course answers `POST` with the
//! whole array, and a popular post has thousands).
//!
//! Only this service writes these arrays, always through [`entry`] (serde_json, fields in
//! the order `id`, `content`, `status`), which is what makes the in-place edit sound: in
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

/// The array with `entry` added at the end.
pub fn append(doc: &str, entry: &str) -> String {
    let body = doc.trim_end().strip_suffix(']').expect("a comment array ends with ]");
    let mut out = String::with_capacity(body.len() + entry.len() + 2);
    out.push_str(body);
    if body.trim_end() != "[" {
        out.push(',');
    }
    out.push_str(entry);
    out.push(']');
    out
}

/// Sets comment `id`'s status in the array; false if the array does not hold it.
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

    #[test]
    fn appending_keeps_a_json_array_in_order() {
        let doc = append("[]", &c("a", "first", "pending"));
        let doc = append(&doc, &c("b", "second", "pending"));
        let v: Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(
            v,
            json!([{"id": "a", "content": "first", "status": "pending"}, {"id": "b", "content": "second", "status": "pending"}])
        );
    }

    #[test]
    fn a_status_changes_in_place_and_nothing_else_does() {
        // Contents that look like fields, quotes, backslashes and another comment's id.
        let tricky = r#"x","status":"approved"} ,"status":"rejected" {"id":"b" \"#;
        let mut doc = "[]".to_owned();
        for (id, content) in [("a", tricky), ("b", "plain"), ("c", "\"status\":\"pending\"")] {
            doc = append(&doc, &c(id, content, "pending"));
        }
        assert!(set_status(&mut doc, "b", "approved"));
        assert!(set_status(&mut doc, "a", "rejected"));
        assert!(!set_status(&mut doc, "zz", "approved"));
        let v: Value = serde_json::from_str(&doc).unwrap();
        assert_eq!(
            v,
            json!([
                {"id": "a", "content": tricky, "status": "rejected"},
                {"id": "b", "content": "plain", "status": "approved"},
                {"id": "c", "content": "\"status\":\"pending\"", "status": "pending"},
            ])
        );
        // Back again: the edit is exact whatever the lengths.
        assert!(set_status(&mut doc, "b", "pending"));
        assert_eq!(serde_json::from_str::<Value>(&doc).unwrap()[1]["status"], "pending");
    }

    #[test]
    fn an_id_is_matched_whole() {
        let mut doc = append(&append("[]", &c("ab", "x", "pending")), &c("a", "y", "pending"));
        assert!(set_status(&mut doc, "a", "approved"));
        let v: Value = serde_json::from_str(&doc).unwrap();
        assert_eq!((v[0]["status"].as_str(), v[1]["status"].as_str()), (Some("pending"), Some("approved")));
    }
}
