//! query's database: posts and comments as events describe them, and each post's view
//! rendered once per change (`posts.doc`), so a read concatenates stored JSON.

use blog_events::PostCreated;
use busbar::{Db, Tx, db::Backend, db::DbError};
use serde::Serialize;
use sqlx::Row;

/// Stores a post with its rendered view: one read (its comments, which may have arrived
/// first) and one write.
pub async fn upsert_post(tx: &mut Tx, p: &PostCreated) -> Result<(), DbError> {
    let comments = comments_of(tx, &p.id).await?;
    let doc = document(&p.id, p.title.clone(), comments);
    sqlx::query(
        "INSERT INTO posts (id, title, doc) VALUES ($1, $2, $3) \
         ON CONFLICT (id) DO UPDATE SET title = excluded.title, doc = excluded.doc",
    )
    .bind(&p.id)
    .bind(&p.title)
    .bind(doc)
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
    render(tx, post_id).await
}

#[derive(Debug, Serialize, PartialEq)]
pub struct CommentView {
    pub id: String,
    pub content: String,
    pub status: String,
}

/// One post of the view, as `GET /posts` shows it.
#[derive(Debug, Serialize, PartialEq)]
pub struct PostView<'a> {
    pub id: &'a str,
    pub title: String,
    pub comments: Vec<CommentView>,
}

/// Renders post `id`'s view from its row and its comments into `posts.doc`, inside the
/// transaction that changed them: one read (the post joined with its comments) and one
/// write. A comment whose post has not arrived yet waits in `comments`; the post's own
/// upsert picks it up.
async fn render(tx: &mut Tx, id: &str) -> Result<(), DbError> {
    let rows = sqlx::query(
        "SELECT p.title, c.id, c.content, c.status FROM posts p LEFT JOIN comments c ON c.post_id = p.id \
         WHERE p.id = $1 ORDER BY c.id",
    )
    .bind(id)
    .fetch_all(&mut **tx)
    .await?;
    let Some(title) = rows.first().map(|r| r.get::<String, _>(0)) else { return Ok(()) };
    let comments = rows
        .iter()
        .filter_map(|r| {
            let id: Option<String> = r.get(1);
            Some(CommentView { id: id?, content: r.get(2), status: r.get(3) })
        })
        .collect();
    let doc = document(id, title, comments);
    sqlx::query("UPDATE posts SET doc = $1 WHERE id = $2").bind(doc).bind(id).execute(&mut **tx).await?;
    Ok(())
}

async fn comments_of(tx: &mut Tx, post_id: &str) -> Result<Vec<CommentView>, DbError> {
    Ok(sqlx::query("SELECT id, content, status FROM comments WHERE post_id = $1 ORDER BY id")
        .bind(post_id)
        .fetch_all(&mut **tx)
        .await?
        .into_iter()
        .map(|r| CommentView { id: r.get(0), content: r.get(1), status: r.get(2) })
        .collect())
}

fn document(id: &str, title: String, comments: Vec<CommentView>) -> String {
    serde_json::to_string(&PostView { id, title, comments }).expect("a view serialises")
}

/// Renders every post that has no document yet (rows written before documents existed).
/// Runs before the service receives events; a render racing it wins, since this only
/// fills a document that is still missing. Returns how many it rendered.
pub async fn render_missing(db: &Db) -> Result<u64, DbError> {
    let mut done = 0;
    loop {
        let mut tx = db.begin().await?;
        let rows = sqlx::query("SELECT id, title FROM posts WHERE doc IS NULL ORDER BY id LIMIT 500")
            .fetch_all(&mut *tx)
            .await?;
        if rows.is_empty() {
            return Ok(done);
        }
        for r in rows {
            let id: String = r.get(0);
            let doc = document(&id, r.get(1), comments_of(&mut tx, &id).await?);
            sqlx::query("UPDATE posts SET doc = $1 WHERE id = $2 AND doc IS NULL")
                .bind(doc)
                .bind(&id)
                .execute(&mut *tx)
                .await?;
            done += 1;
        }
        tx.commit().await?;
    }
}

/// A slice of the view: posts whose ids sort after `after`, at most `limit` of them.
#[derive(Debug, Clone, PartialEq)]
pub struct Page {
    pub after: String,
    pub limit: i64,
}

/// Up to `limit` posts whose ids sort after `after`, as the members of a JSON object
/// (`"<id>":<view>,...`, in id order, without braces), joined by the database itself so a
/// chunk crosses the driver as one value instead of one row per post.
#[derive(Debug, PartialEq)]
pub struct Chunk {
    pub members: String,
    /// The last id in the chunk, where the next one starts.
    pub last: String,
    pub posts: i64,
}

pub async fn chunk(db: &Db, after: &str, limit: i64) -> Result<Option<Chunk>, DbError> {
    let sql = match db.backend() {
        Backend::Sqlite => {
            "SELECT group_concat(json_quote(id) || ':' || doc, ',' ORDER BY id), max(id), count(*) \
             FROM (SELECT id, doc FROM posts WHERE id > $1 ORDER BY id LIMIT $2)"
        }
        Backend::Postgres => {
            "SELECT string_agg(to_json(id)::text || ':' || doc, ',' ORDER BY id), max(id), count(*) \
             FROM (SELECT id, doc FROM posts WHERE id > $1 ORDER BY id LIMIT $2) page"
        }
    };
    let row = sqlx::query(sql).bind(after).bind(limit).fetch_one(db.pool()).await?;
    let posts: i64 = row.get(2);
    if posts == 0 {
        return Ok(None);
    }
    Ok(Some(Chunk { members: row.get(0), last: row.get(1), posts }))
}
