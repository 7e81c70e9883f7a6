//! query's database: posts and comments as events describe them, and each post's view
//! rendered once per change (`posts.doc`), so a read concatenates stored JSON. Each write
//! of a document also takes the next change stamp (`posts.stamp`), so the copy of the view
//! that `GET /posts` answers from reads only what changed ([`changes`]).

use blog_events::PostCreated;
use busbar::{
    Db, Tx,
    db::{Backend, DbError},
    view_cache::{self, Watermark},
};
use serde::Serialize;
use sqlx::Row;

/// The change stamp a document write takes, in the same statement. SQLite: the next value
/// of the one counter row, bumped by a statement run just before in the same query (SQLite
/// has one writer, so stamps are taken in commit order). PostgreSQL: the writing
/// transaction's id, so writers share no lock; a reader then also reads the rows of every
/// transaction that was still running when it last looked ([`changes`]).
macro_rules! stamped {
    (sqlite: $($sql:expr),+ $(,)?) => {
        concat!("UPDATE view_stamp SET n = n + 1 WHERE id = 1; ", $($sql),+)
    };
}
/// Whether comments of the post (`$1`) arrived before it, as one BIGINT column.
macro_rules! comments_waiting {
    () => {
        "CAST(CASE WHEN EXISTS (SELECT 1 FROM comments WHERE post_id = $1) THEN 1 ELSE 0 END AS BIGINT)"
    };
}

/// Stores a post with its rendered view. Comments almost always come after their post, so
/// the post is stored with none, and the same round trip tells whether some were waiting
/// for it; only then is its view rendered again with them.
pub async fn upsert_post(tx: &mut Tx, p: &PostCreated) -> Result<(), DbError> {
    let doc = document(&p.id, p.title.clone(), vec![]);
    let sql = match tx.backend() {
        Backend::Sqlite => stamped!(sqlite:
            "INSERT INTO posts (id, title, doc, stamp) VALUES ($1, $2, $3, (SELECT n FROM view_stamp WHERE id = 1)) ",
            "ON CONFLICT (id) DO UPDATE SET title = excluded.title, doc = excluded.doc, stamp = excluded.stamp; ",
            "SELECT ", comments_waiting!()),
        Backend::Postgres => concat!(
            "INSERT INTO posts (id, title, doc, stamp) VALUES ($1, $2, $3, pg_current_xact_id()::text::bigint) \
             ON CONFLICT (id) DO UPDATE SET title = excluded.title, doc = excluded.doc, stamp = excluded.stamp \
             RETURNING ",
            comments_waiting!()
        ),
    };
    // fetch_all: SQLite answers a query's rows statement by statement, and fetch_one would
    // stop at the first statement, which has none.
    let rows = sqlx::query(sql).bind(&p.id).bind(&p.title).bind(doc).fetch_all(&mut **tx).await?;
    let waiting: i64 = rows.last().ok_or(sqlx::Error::RowNotFound)?.try_get(0)?;
    if waiting == 1 {
        render(tx, &p.id).await?;
    }
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
    let sql = match tx.backend() {
        Backend::Sqlite => {
            stamped!(sqlite: "UPDATE posts SET doc = $1, stamp = (SELECT n FROM view_stamp WHERE id = 1) WHERE id = $2")
        }
        Backend::Postgres => "UPDATE posts SET doc = $1, stamp = pg_current_xact_id()::text::bigint WHERE id = $2",
    };
    sqlx::query(sql).bind(doc).bind(id).execute(&mut **tx).await?;
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
            let sql = match tx.backend() {
                Backend::Sqlite => stamped!(sqlite:
                    "UPDATE posts SET doc = $1, stamp = (SELECT n FROM view_stamp WHERE id = 1) ",
                    "WHERE id = $2 AND doc IS NULL"),
                Backend::Postgres => {
                    "UPDATE posts SET doc = $1, stamp = pg_current_xact_id()::text::bigint \
                     WHERE id = $2 AND doc IS NULL"
                }
            };
            sqlx::query(sql).bind(doc).bind(&id).execute(&mut *tx).await?;
            done += 1;
        }
        tx.commit().await?;
    }
}

/// Up to `limit` posts whose document changed past `after`, in `(stamp, id)` order, for
/// the copy of the view that `GET /posts` answers from (usually none, through the index on
/// `(stamp, id)`); posts without a document yet wait until they get one. On PostgreSQL also
/// the horizon: the oldest transaction still running when the rows were read (from the same
/// snapshot), whose rows and those of every later transaction the next read must read
/// again, since they may commit after this one looked.
pub async fn changes(db: &Db, after: Watermark, limit: i64) -> Result<view_cache::Changes, DbError> {
    let rows =
        match db.backend() {
            Backend::Sqlite => sqlx::query(
                "SELECT stamp, id, doc FROM posts WHERE (stamp > $1 OR (stamp = $1 AND id > $2)) AND doc IS NOT NULL \
                 ORDER BY stamp, id LIMIT $3",
            )
            .bind(after.stamp)
            .bind(after.id)
            .bind(limit)
            .fetch_all(db.pool())
            .await?,
            // A row with the horizon even when nothing changed; pg_current_snapshot() is the
            // statement's own snapshot, so nothing can commit between reading it and the rows.
            Backend::Postgres => {
                sqlx::query(
                    "SELECT p.stamp, p.id, p.doc, pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
                 FROM (SELECT 1) one LEFT JOIN LATERAL (SELECT stamp, id, doc FROM posts \
                   WHERE (stamp > $1 OR (stamp = $1 AND id > $2)) AND doc IS NOT NULL ORDER BY stamp, id LIMIT $3) p \
                 ON true",
                )
                .bind(after.stamp)
                .bind(after.id)
                .bind(limit)
                .fetch_all(db.pool())
                .await?
            }
        };
    let horizon = match db.backend() {
        Backend::Sqlite => None,
        Backend::Postgres => rows.first().map(|r| r.try_get::<i64, _>(3)).transpose()?,
    };
    let rows = rows
        .into_iter()
        .filter_map(|r| {
            let stamp: Option<i64> = r.get(0);
            Some(view_cache::Row { stamp: stamp?, id: r.get(1), doc: r.get(2) })
        })
        .collect();
    Ok(view_cache::Changes { rows, horizon })
}
