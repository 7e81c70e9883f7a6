use busbar::{Db, db::DbError};
use serde::Serialize;
use shop_events::{UserRenamed, UserSignedUp};
use sqlx::{AnyConnection, Row, any::AnyRow};

#[derive(Debug, Serialize)]
pub struct User {
    pub id: String,
    pub email: String,
    pub name: String,
}

fn user(r: &AnyRow) -> User {
    User { id: r.get(0), email: r.get(1), name: r.get(2) }
}

pub async fn get(conn: &mut AnyConnection, id: &str) -> Result<Option<User>, DbError> {
    let row = sqlx::query("SELECT id, email, name FROM users WHERE id = $1").bind(id).fetch_optional(conn).await?;
    Ok(row.as_ref().map(user))
}

/// Creates the user and its `UserSignedUp` atomically. A taken email is refused by the
/// UNIQUE constraint (see [`DbError::is_unique_violation`]), so two concurrent sign-ups
/// cannot both win.
pub async fn sign_up(db: &Db, email: &str, name: &str) -> Result<User, DbError> {
    let e = UserSignedUp { id: uuid::Uuid::now_v7().to_string(), email: email.to_owned(), name: name.to_owned() };
    let mut tx = db.begin().await?;
    sqlx::query("INSERT INTO users (id, email, name, version) VALUES ($1, $2, $3, 1)")
        .bind(&e.id)
        .bind(&e.email)
        .bind(&e.name)
        .execute(&mut *tx)
        .await?;
    tx.emit(&e, 1).await?;
    tx.commit().await?;
    Ok(User { id: e.id, email: e.email, name: e.name })
}

/// Renames a user, emitting `UserRenamed` with the next version; the same name changes
/// nothing and emits nothing. `None` for an unknown user.
pub async fn rename(db: &Db, id: &str, name: &str) -> Result<Option<User>, DbError> {
    let mut tx = db.begin().await?;
    let Some(row) = sqlx::query("SELECT id, email, name, version FROM users WHERE id = $1")
        .bind(id)
        .fetch_optional(&mut *tx)
        .await?
    else {
        return Ok(None);
    };
    let (mut current, version): (User, i64) = (user(&row), row.get(3));
    if current.name != name {
        let next = version + 1;
        sqlx::query("UPDATE users SET name = $1, version = $2 WHERE id = $3")
            .bind(name)
            .bind(next)
            .bind(id)
            .execute(&mut *tx)
            .await?;
        tx.emit(&UserRenamed { id: id.to_owned(), name: name.to_owned() }, next).await?;
        current.name = name.to_owned();
    }
    tx.commit().await?;
    Ok(Some(current))
}
