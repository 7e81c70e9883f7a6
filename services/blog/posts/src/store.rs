use blog_events::PostCreated;
use busbar::{
    Db,
    db::{Backend, DbError},
    group_commit::{Batched, Item},
};
use futures::future::BoxFuture;
use sqlx::Row;

/// Creates posts, each with its `PostCreated` event, in one transaction and one statement
/// with the posts created at the same moment ([`Batched`]).
pub type Creator = Batched<PostCreated, ()>;

pub fn creator(db: Db) -> Creator {
    Batched::start(db, insert)
}

/// Creates a post; answers once it and its event are committed.
pub async fn create(creator: &Creator, title: &str) -> Result<PostCreated, DbError> {
    let post = PostCreated { id: uuid::Uuid::now_v7().to_string(), title: title.to_owned() };
    creator.write(post.clone()).await?;
    Ok(post)
}

/// Inserts `posts` in one statement (one JSON array argument, expanded by the database)
/// and emits each one's `PostCreated` in its request's trace.
fn insert<'t>(tx: &'t mut busbar::Tx, posts: &'t [Item<PostCreated>]) -> BoxFuture<'t, Result<Vec<()>, DbError>> {
    Box::pin(async move {
        let created_at = busbar::db::now_millis();
        let rows: Vec<[&str; 2]> = posts.iter().map(|p| [p.id.as_str(), p.title.as_str()]).collect();
        let sql = match tx.backend() {
            Backend::Sqlite => {
                "INSERT INTO posts (id, title, created_at) SELECT value ->> 0, value ->> 1, $2 FROM json_each($1)"
            }
            Backend::Postgres => {
                "INSERT INTO posts (id, title, created_at) \
                 SELECT e ->> 0, e ->> 1, $2 FROM json_array_elements(CAST($1 AS json)) e"
            }
        };
        sqlx::query(sql)
            .bind(serde_json::to_string(&rows).expect("strings serialise"))
            .bind(created_at)
            .execute(&mut **tx)
            .await?;
        for post in posts {
            post.traced(tx.emit(&**post, 1)).await?;
        }
        Ok(vec![(); posts.len()])
    })
}

pub async fn all(db: &Db) -> Result<Vec<PostCreated>, DbError> {
    let rows = sqlx::query("SELECT id, title FROM posts ORDER BY id").fetch_all(db.pool()).await?;
    Ok(rows.into_iter().map(|r| PostCreated { id: r.get(0), title: r.get(1) }).collect())
}
