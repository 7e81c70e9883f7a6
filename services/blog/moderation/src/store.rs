//! moderation's one table: a decision per comment, so a comment is decided once.

use std::collections::HashSet;

use blog_events::CommentStatus;
use busbar::{
    Tx,
    db::{Backend, DbError},
};

/// Records the decisions of a run of comments in one statement, and returns the ids of
/// those decided now: a comment decided before (the same comment published again under a
/// new event id) keeps its first decision, and of one id twice in the run the first
/// counts, as recording them one at a time in order would.
pub async fn decide(tx: &mut Tx, decisions: &[(&str, CommentStatus)]) -> Result<HashSet<String>, DbError> {
    // Of an id twice in the run the first counts: the second is left out here, so no
    // statement depends on the order the database inserts a SELECT's rows in.
    // `RETURNING` answers only rows inserted.
    let sql = match tx.backend() {
        // `WHERE true`: SQLite's grammar needs it between a SELECT and its ON CONFLICT.
        Backend::Sqlite => {
            "INSERT INTO decisions (comment_id, status, decided_at) \
             SELECT value ->> 0, value ->> 1, $2 FROM json_each($1) WHERE true \
             ON CONFLICT (comment_id) DO NOTHING RETURNING comment_id"
        }
        Backend::Postgres => {
            "INSERT INTO decisions (comment_id, status, decided_at) \
             SELECT d ->> 0, d ->> 1, $2 FROM json_array_elements(CAST($1 AS json)) AS d \
             ON CONFLICT (comment_id) DO NOTHING RETURNING comment_id"
        }
    };
    let mut seen = HashSet::new();
    let firsts: Vec<(&str, &str)> =
        decisions.iter().filter(|(id, _)| seen.insert(*id)).map(|(id, status)| (*id, status.as_str())).collect();
    let rows: Vec<(String,)> = sqlx::query_as(sql)
        .bind(serde_json::to_string(&firsts).expect("strings serialise"))
        .bind(busbar::db::now_millis())
        .fetch_all(&mut **tx)
        .await?;
    Ok(rows.into_iter().map(|(id,)| id).collect())
}
