use blog_events::PostCreated;
use busbar::{Db, Tx, db::DbError};
use serde::Serialize;
use sqlx::Row;

pub async fn upsert_post(tx: &mut Tx, p: &PostCreated) -> Result<(), DbError> {
    sqlx::query("INSERT INTO posts (id, title) VALUES ($1, $2) ON CONFLICT (id) DO UPDATE SET title = excluded.title")
        .bind(&p.id)
        .bind(&p.title)
        .execute(&mut **tx)
        .await?;
    Ok(())
}

pub async fn upsert_comment(tx: &mut Tx, id: &str, post_id: &str, content: &str, status: &str) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO comments (id, post_id, content, status) VALUES ($1, $2, $3, $4) \
         ON CONFLICT (id) DO UPDATE SET content = excluded.content, status = excluded.status",
    )
    .bind(id)
    .bind(post_id)
    .bind(content)
    .bind(status)
    .execute(&mut **tx)
    .await?;
    Ok(())
}

#[derive(Debug, Serialize, PartialEq)]
pub struct CommentView {
    pub id: String,
    pub content: String,
    pub status: String,
}

#[derive(Debug, Serialize, PartialEq)]
pub struct PostView {
    pub id: String,
    pub title: String,
    pub comments: Vec<CommentView>,
}

/// A slice of the view: posts whose ids sort after `after`, at most `limit` of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub after: String,
    pub limit: i64,
}

/// Every post (or one page of them) with its comments, oldest first. Two queries, joined
/// in memory.
pub async fn view(db: &Db, page: Option<&Page>) -> Result<Vec<PostView>, DbError> {
    let mut conn = db.pool().acquire().await?;
    let (posts, comments) = match page {
        None => {
            let posts = sqlx::query("SELECT id, title FROM posts ORDER BY id").fetch_all(&mut *conn).await?;
            let comments = sqlx::query("SELECT id, post_id, content, status FROM comments ORDER BY post_id, id")
                .fetch_all(&mut *conn)
                .await?;
            (posts, comments)
        }
        Some(p) => {
            let posts = sqlx::query("SELECT id, title FROM posts WHERE id > $1 ORDER BY id LIMIT $2")
                .bind(&p.after)
                .bind(p.limit)
                .fetch_all(&mut *conn)
                .await?;
            let Some(last) = posts.last().map(|r| r.get::<String, _>(0)) else { return Ok(vec![]) };
            // The page's posts are exactly the ids in (after, last]: one indexed range.
            let comments = sqlx::query(
                "SELECT id, post_id, content, status FROM comments WHERE post_id > $1 AND post_id <= $2 \
                 ORDER BY post_id, id",
            )
            .bind(&p.after)
            .bind(last)
            .fetch_all(&mut *conn)
            .await?;
            (posts, comments)
        }
    };
    let mut by_post: std::collections::HashMap<String, Vec<CommentView>> = std::collections::HashMap::new();
    for r in comments {
        by_post.entry(r.get(1)).or_default().push(CommentView { id: r.get(0), content: r.get(2), status: r.get(3) });
    }
    Ok(posts
        .into_iter()
        .map(|r| {
            let id: String = r.get(0);
            let comments = by_post.remove(&id).unwrap_or_default();
            PostView { id, title: r.get(1), comments }
        })
        .collect())
}
