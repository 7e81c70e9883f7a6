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
use sqlx::Row;

/// The change stamp a document write takes, in the same statement. SQLite: the next value
/// of the one counter row, bumped by a statement run just before in the same query
/// (`stamped!`; SQLite has one writer, so stamps are taken in commit order). PostgreSQL:
/// the writing transaction's id, so writers share no lock; a reader then also reads the
/// rows of every transaction that was still running when it last looked ([`changes`]).
macro_rules! stamp {
    (sqlite) => {
        "(SELECT n FROM view_stamp WHERE id = 1)"
    };
    (postgres) => {
        "pg_current_xact_id()::text::bigint"
    };
}

/// A SQLite query that bumps the counter `stamp!` reads, then runs `$sql`.
macro_rules! stamped {
    (sqlite: $($sql:expr),+ $(,)?) => {
        concat!("UPDATE view_stamp SET n = n + 1 WHERE id = 1; ", $($sql),+)
    };
}

/// `$e`, an SQL expression, as text. PostgreSQL's parameters need the cast to have a type.
macro_rules! text {
    (sqlite, $e:literal) => {
        $e
    };
    (postgres, $e:literal) => {
        concat!("CAST(", $e, " AS TEXT)")
    };
}

/// `$e` quoted as a JSON string, in the dialect's function.
macro_rules! quote {
    (sqlite, $e:literal) => {
        concat!("json_quote(", $e, ")")
    };
    (postgres, $e:literal) => {
        concat!("to_json(", text!(postgres, $e), ")")
    };
}

/// The dialect's aggregate that joins text with a separator.
macro_rules! join {
    (sqlite) => {
        "group_concat"
    };
    (postgres) => {
        "string_agg"
    };
}

/// One comment's entry in its post's document, `{"id":..,"content":..,"status":..}`, from
/// three SQL expressions. The one spelling of an entry: the full render ([`document!`]) and
/// the in-place change of a document ([`upsert_comment`]) must write the same bytes.
macro_rules! entry {
    ($db:ident, $id:literal, $content:literal, $status:literal) => {
        concat!(
            "('{\"id\":' || ",
            quote!($db, $id),
            " || ',\"content\":' || ",
            quote!($db, $content),
            " || ',\"status\":' || ",
            quote!($db, $status),
            " || '}')"
        )
    };
}

/// A post's document as the database renders it, in the statement that changes the post
/// or one of its comments: `$id` and `$title` are SQL expressions for the post's id and
/// title, `$comments` a relation holding its comments (`id`, `post_id`, `content`,
/// `status`). Compact JSON in the order `GET /posts` shows it (`id`, `title`, then the
/// comments oldest first, each `id`, `content`, `status`), text the reads concatenate.
/// Rendered by the database rather than here so that applying a comment costs one round
/// trip instead of three (write the row, read the post's comments, write the document).
macro_rules! document {
    ($db:ident, $id:literal, $title:literal, $comments:literal) => {
        concat!(
            "('{\"id\":' || ",
            quote!($db, $id),
            " || ',\"title\":' || ",
            quote!($db, $title),
            " || ',\"comments\":[' || COALESCE((SELECT ",
            join!($db),
            "(",
            entry!($db, "c.id", "c.content", "c.status"),
            ", ',' ORDER BY c.id) FROM ",
            $comments,
            " c WHERE c.post_id = ",
            text!($db, $id),
            "), '') || ']}')"
        )
    };
}

/// Stores posts with their rendered views, each holding the comments that arrived before
/// it (a comment may overtake its post), in one statement whatever their number: the posts
/// go in as one JSON array, which the database expands. Of several posts with one id, the
/// last is kept, as storing them one after another would.
pub async fn upsert_posts(tx: &mut Tx, posts: &[&PostCreated]) -> Result<(), DbError> {
    let mut last = std::collections::HashMap::with_capacity(posts.len());
    for (i, p) in posts.iter().enumerate() {
        last.insert(p.id.as_str(), i);
    }
    let rows: Vec<[&str; 2]> =
        posts.iter().enumerate().filter(|(i, p)| last[p.id.as_str()] == *i).map(|(_, p)| [&*p.id, &*p.title]).collect();
    let rows = serde_json::to_string(&rows).expect("strings serialise");
    // `WHERE true`: SQLite's grammar needs it between a SELECT and its ON CONFLICT.
    let sql = match tx.backend() {
        Backend::Sqlite => stamped!(sqlite:
            "INSERT INTO posts (id, title, doc, stamp) SELECT p.id, p.title, ", document!(sqlite, "p.id", "p.title", "comments"),
            ", ", stamp!(sqlite), " FROM (SELECT value ->> 0 AS id, value ->> 1 AS title FROM json_each($1)) p WHERE true ",
            "ON CONFLICT (id) DO UPDATE SET title = excluded.title, doc = excluded.doc, stamp = excluded.stamp"),
        Backend::Postgres => concat!(
            "INSERT INTO posts (id, title, doc, stamp) SELECT p.id, p.title, ",
            document!(postgres, "p.id", "p.title", "comments"),
            ", ",
            stamp!(postgres),
            " FROM (SELECT e ->> 0 AS id, e ->> 1 AS title FROM json_array_elements(CAST($1 AS json)) e) p ",
            "ON CONFLICT (id) DO UPDATE SET title = excluded.title, doc = excluded.doc, stamp = excluded.stamp"
        ),
    };
    sqlx::query(sql).bind(rows).execute(&mut **tx).await?;
    Ok(())
}

/// Stores a comment and changes its post's document (if the post is here yet), in one
/// query. The document is changed in place where it can be, rather than rendered again
/// from every comment of the post (which made a comment on a post with thousands cost
/// milliseconds of JSON quoting):
/// - a comment already in the document has its entry swapped (`replace`: an entry's
///   opening `{"id":"<id>",` occurs nowhere else, since quotes inside JSON strings are
///   escaped);
/// - a new comment that sorts after every other of the post (UUIDv7 ids rise, so nearly
///   every new one) is appended: the document's closing `}]}` (or `]}` with no comments
///   yet) is trimmed, which `rtrim` does from the end without counting characters as
///   `length`/`substr` would;
/// - anything else (a comment sorting earlier, a post without a document) renders the
///   whole document.
///
/// The document is written before the comment row, so the tests read the comments as
/// they were before this event.
pub async fn upsert_comment(tx: &mut Tx, id: &str, post_id: &str, content: &str, status: &str) -> Result<(), DbError> {
    let sql = match tx.backend() {
        Backend::Sqlite => concat!(
            stamped!(sqlite:
                "UPDATE posts SET stamp = ", stamp!(sqlite), ", doc = CASE \
                   WHEN doc IS NOT NULL AND EXISTS (SELECT 1 FROM comments WHERE id = $1 AND post_id = $2) \
                     THEN replace(doc, (SELECT ", entry!(sqlite, "c.id", "c.content", "c.status"), " FROM comments c \
                                        WHERE c.id = $1), ", entry!(sqlite, "$1", "$3", "$4"), ") \
                   WHEN doc IS NOT NULL AND NOT EXISTS (SELECT 1 FROM comments WHERE id = $1) \
                        AND NOT EXISTS (SELECT 1 FROM comments WHERE post_id = $2 AND id > $1) \
                     THEN rtrim(doc, ']}') \
                          || CASE WHEN EXISTS (SELECT 1 FROM comments WHERE post_id = $2) THEN '},' ELSE '' END \
                          || ", entry!(sqlite, "$1", "$3", "$4"), " || ']}' \
                   ELSE ", document!(sqlite, "posts.id", "posts.title",
                     "(SELECT id, post_id, content, status FROM comments WHERE id <> $1 \
                       UNION ALL SELECT $1, COALESCE((SELECT post_id FROM comments WHERE id = $1), $2), $3, $4)"), " \
                 END WHERE id = $2; "),
            "INSERT INTO comments (id, post_id, content, status) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (id) DO UPDATE SET content = excluded.content, status = excluded.status"
        ),
        // One statement sees one snapshot, which does not hold the row its own CTE writes:
        // the tests read the comments as they were, and a full render uses the other
        // comments plus the one just written.
        Backend::Postgres => concat!(
            "WITH written AS (INSERT INTO comments (id, post_id, content, status) VALUES ($1, $2, $3, $4) \
               ON CONFLICT (id) DO UPDATE SET content = excluded.content, status = excluded.status \
               RETURNING id, post_id, content, status) \
             UPDATE posts SET stamp = ",
            stamp!(postgres),
            ", doc = CASE \
               WHEN doc IS NOT NULL AND EXISTS (SELECT 1 FROM comments WHERE id = $1 AND post_id = $2) \
                 THEN replace(doc, (SELECT ",
            entry!(postgres, "c.id", "c.content", "c.status"),
            " FROM comments c \
                                    WHERE c.id = $1), ",
            entry!(postgres, "$1", "$3", "$4"),
            ") \
               WHEN doc IS NOT NULL AND NOT EXISTS (SELECT 1 FROM comments WHERE id = $1) \
                    AND NOT EXISTS (SELECT 1 FROM comments WHERE post_id = $2 AND id > $1) \
                 THEN rtrim(doc, ']}') \
                      || CASE WHEN EXISTS (SELECT 1 FROM comments WHERE post_id = $2) THEN '},' ELSE '' END \
                      || ",
            entry!(postgres, "$1", "$3", "$4"),
            " || ']}' \
               ELSE ",
            document!(
                postgres,
                "posts.id",
                "posts.title",
                "(SELECT id, post_id, content, status FROM comments WHERE id <> $1 \
                  UNION ALL SELECT id, post_id, content, status FROM written)"
            ),
            " END WHERE id = $2"
        ),
    };
    if tx.backend() == Backend::Postgres {
        // Two comments of one post may be applied at once (each comment is its own
        // aggregate; replicas share the database). The statement above tests the comments
        // in its snapshot, taken when it starts: waiting for the other's lock on the post's
        // row inside it would leave that snapshot blind to the comment the other committed
        // (an append after it without its comma; a full render without it). Taking the
        // lock first, in a statement of its own, gives the next statement a snapshot that
        // holds it. SQLite's writers already take turns.
        sqlx::query("SELECT 1 FROM posts WHERE id = $1 FOR UPDATE").bind(post_id).execute(&mut **tx).await?;
    }
    sqlx::query(sql).bind(id).bind(post_id).bind(content).bind(status).execute(&mut **tx).await?;
    Ok(())
}

/// Renders every post that has no document yet (rows written before documents existed),
/// 500 to a transaction. Runs before the service receives events; a render racing it
/// wins, since this only fills a document that is still missing. Returns how many it
/// rendered.
pub async fn render_missing(db: &Db) -> Result<u64, DbError> {
    let sql = match db.backend() {
        Backend::Sqlite => stamped!(sqlite:
            "UPDATE posts SET doc = ", document!(sqlite, "posts.id", "posts.title", "comments"),
            ", stamp = ", stamp!(sqlite), " ",
            "WHERE doc IS NULL AND id IN (SELECT id FROM posts WHERE doc IS NULL ORDER BY id LIMIT 500) RETURNING id"),
        Backend::Postgres => concat!(
            "UPDATE posts SET doc = ",
            document!(postgres, "posts.id", "posts.title", "comments"),
            ", stamp = ",
            stamp!(postgres),
            " WHERE doc IS NULL AND id IN (SELECT id FROM posts WHERE doc IS NULL ORDER BY id LIMIT 500) RETURNING id"
        ),
    };
    let mut done = 0;
    loop {
        let mut tx = db.begin().await?;
        let rendered = sqlx::query(sql).fetch_all(&mut *tx).await?.len() as u64;
        tx.commit().await?;
        if rendered == 0 {
            return Ok(done);
        }
        done += rendered;
    }
}

/// [`changes`]' query. Its `LIMIT` is written into the text, not bound: SQLite plans with a
/// bound `LIMIT`'s value, so each bind would expire the cached statement and every read of
/// `GET /posts` would parse and plan it again.
fn changes_sql(backend: Backend, limit: i64) -> String {
    match backend {
        Backend::Sqlite => format!(
            "SELECT stamp, id, doc FROM posts WHERE (stamp, id) > ($1, $2) AND doc IS NOT NULL \
             ORDER BY stamp, id LIMIT {limit}"
        ),
        // A row with the horizon even when nothing changed; pg_current_snapshot() is the
        // statement's own snapshot, so nothing can commit between reading it and the rows.
        Backend::Postgres => format!(
            "SELECT p.stamp, p.id, p.doc, pg_snapshot_xmin(pg_current_snapshot())::text::bigint \
             FROM (SELECT 1) one LEFT JOIN LATERAL (SELECT stamp, id, doc FROM posts \
               WHERE (stamp, id) > ($1, $2) AND doc IS NOT NULL ORDER BY stamp, id LIMIT {limit}) p \
             ON true"
        ),
    }
}

/// Up to `limit` posts whose document changed past `after`, in `(stamp, id)` order, for
/// the copy of the view that `GET /posts` answers from (usually none, through the index on
/// `(stamp, id)`); posts without a document yet wait until they get one. On PostgreSQL also
/// the horizon: the oldest transaction still running when the rows were read (from the same
/// snapshot), whose rows and those of every later transaction the next read must read
/// again, since they may commit after this one looked.
///
/// "Past `after`" is one row comparison, `(stamp, id) > ($1, $2)`, which both databases
/// match to the index as a range. Spelled `stamp > $1 OR (stamp = $1 AND id > $2)`,
/// PostgreSQL's generic plan for the prepared statement (chosen after five runs) filtered
/// every entry of the index instead: 0.7 ms per read at 6,000 posts, growing with the view,
/// against 0.06 ms.
pub async fn changes(db: &Db, after: Watermark, limit: i64) -> Result<view_cache::Changes, DbError> {
    let rows = sqlx::query(sqlx::AssertSqlSafe(changes_sql(db.backend(), limit)))
        .bind(after.stamp)
        .bind(after.id)
        .fetch_all(db.pool())
        .await?;
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

#[cfg(test)]
mod tests {
    use sqlx::AssertSqlSafe;

    use super::*;

    /// `GET /posts` asks for the changes on every request: SQLite must not parse and plan
    /// that query again each time.
    #[tokio::test]
    async fn the_read_of_changes_is_prepared_once() {
        let mut conn = testkit::sqlite::memory(&sqlx::migrate!("./migrations")).await;
        for (stamp, id) in [(0, ""), (5, "a"), (9, "b")] {
            sqlx::query(AssertSqlSafe(changes_sql(Backend::Sqlite, 1000)))
                .bind(stamp)
                .bind(id)
                .fetch_all(&mut conn)
                .await
                .unwrap();
        }
        testkit::sqlite::assert_prepared_once(&mut conn, "FROM posts WHERE", 1).await;
    }
}
