//! The blog's events. The `data` fields are exactly those of the course's blog app, so
//! code written for its `{type, data}` events reads ours unchanged.
//!
//! Readers ignore fields they do not know (no `deny_unknown_fields`): a reader that refused
//! them would break as soon as a writer added one, so no field could ever be added safely
//! (see the README's "Event contracts").

use busbar::Event;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CommentStatus {
    Pending,
    Approved,
    Rejected,
}

impl CommentStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            CommentStatus::Pending => "pending",
            CommentStatus::Approved => "approved",
            CommentStatus::Rejected => "rejected",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "pending" => Some(CommentStatus::Pending),
            "approved" => Some(CommentStatus::Approved),
            "rejected" => Some(CommentStatus::Rejected),
            _ => None,
        }
    }
}

/// A post was created (posts; version 1 of the post).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
pub struct PostCreated {
    pub id: String,
    pub title: String,
}

/// A comment was created, awaiting moderation (comments; version 1 of the comment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommentCreated {
    pub id: String,
    pub content: String,
    pub post_id: String,
    pub status: CommentStatus,
}

/// Moderation decided on a comment (moderation; version 1 of its decision).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommentModerated {
    pub id: String,
    pub post_id: String,
    pub status: CommentStatus,
    pub content: String,
}

/// A comment changed, here: its moderation status (comments; the next version of the comment).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CommentUpdated {
    pub id: String,
    pub status: CommentStatus,
    pub post_id: String,
    pub content: String,
}

macro_rules! event {
    ($t:ident) => {
        impl Event for $t {
            const TYPE: &'static str = stringify!($t);
            fn aggregate_id(&self) -> String {
                self.id.clone()
            }
        }
    };
}
event!(PostCreated);
event!(CommentCreated);
event!(CommentModerated);
event!(CommentUpdated);

/// Every blog event type with its JSON Schema, for docs and contract checks.
pub fn schemas() -> Vec<(&'static str, serde_json::Value)> {
    vec![
        (PostCreated::TYPE, serde_json::to_value(schemars::schema_for!(PostCreated)).unwrap()),
        (CommentCreated::TYPE, serde_json::to_value(schemars::schema_for!(CommentCreated)).unwrap()),
        (CommentModerated::TYPE, serde_json::to_value(schemars::schema_for!(CommentModerated)).unwrap()),
        (CommentUpdated::TYPE, serde_json::to_value(schemars::schema_for!(CommentUpdated)).unwrap()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn data_fields_match_the_course_contract() {
        let c = CommentCreated {
            id: "c".into(),
            content: "hi".into(),
            post_id: "p".into(),
            status: CommentStatus::Pending,
        };
        assert_eq!(
            serde_json::to_value(&c).unwrap(),
            json!({"id": "c", "content": "hi", "postId": "p", "status": "pending"})
        );
        let m = CommentModerated {
            id: "c".into(),
            post_id: "p".into(),
            status: CommentStatus::Rejected,
            content: "x".into(),
        };
        assert_eq!(
            serde_json::to_value(&m).unwrap(),
            json!({"id": "c", "postId": "p", "status": "rejected", "content": "x"})
        );
        let p = PostCreated { id: "p".into(), title: "t".into() };
        assert_eq!(serde_json::to_value(&p).unwrap(), json!({"id": "p", "title": "t"}));
    }

    #[test]
    fn schemas_name_exactly_the_contract_fields() {
        let schemas = schemas();
        let fields = |ty: &str| -> Vec<String> {
            let (_, s) = schemas.iter().find(|(t, _)| *t == ty).unwrap();
            let mut f: Vec<String> = s["properties"].as_object().unwrap().keys().cloned().collect();
            f.sort();
            f
        };
        assert_eq!(fields("PostCreated"), ["id", "title"]);
        assert_eq!(fields("CommentCreated"), ["content", "id", "postId", "status"]);
        assert_eq!(fields("CommentModerated"), ["content", "id", "postId", "status"]);
        assert_eq!(fields("CommentUpdated"), ["content", "id", "postId", "status"]);
    }

    #[test]
    fn readers_ignore_fields_they_do_not_know() {
        let later = json!({"id": "p", "title": "t", "subtitle": "added by a later posts"});
        assert_eq!(
            serde_json::from_value::<PostCreated>(later).unwrap(),
            PostCreated { id: "p".into(), title: "t".into() }
        );
        for (_, s) in schemas() {
            assert!(s.get("additionalProperties").is_none(), "{s}");
        }
    }

    #[test]
    fn unknown_status_is_refused() {
        let bad = json!({"id": "c", "content": "x", "postId": "p", "status": "maybe"});
        assert!(serde_json::from_value::<CommentCreated>(bad).is_err());
    }
}
