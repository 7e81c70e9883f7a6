use blog_events::PostCreated;
use busbar::{Db, db::DbError};
use sqlx::Row;

/// Creates a post and its `PostCreated` event in one transaction, shared with the posts
/// created at the same moment ([`Db::write`]).
pub async fn create(db: &Db, title: &str) -> Result<PostCreated, DbError> {
    let post = PostCreated { id: uuid::Uuid::now_v7().to_string(), title: title.to_owned() };
    let created_at = busbar::db::now_millis();
    let written = post.clone();
    db.write(move |tx| {
        let post = written.clone();
        Box::pin(async move {
            sqlx::query("INSERT INTO posts (id, title, created_at) VALUES ($1, $2, $3)")
                .bind(&post.id)
                .bind(&post.title)
                .bind(created_at)
                .execute(&mut **tx)
                .await?;
            tx.emit(&post, 1).await?;
            Ok(())
        })
    })
    .await?;
    Ok(post)
}

pub async fn all(db: &Db) -> Result<Vec<PostCreated>, DbError> {
    let rows = sqlx::query("SELECT id, title FROM posts ORDER BY id").fetch_all(db.pool()).await?;
    Ok(rows.into_iter().map(|r| PostCreated { id: r.get(0), title: r.get(1) }).collect())
}
