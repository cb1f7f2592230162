//! The legacy database, seen from persona: the reference schema and the CDC setup, as sqlx
//! migrations embedded in the binary (`persona migrate`).

use sqlx::postgres::PgPoolOptions;

use crate::config::PostgresConfig;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("cannot connect to postgres: {0}")]
    Connect(#[source] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

/// Applies the migrations not yet applied. Safe to run repeatedly and on a database whose
/// legacy tables already exist (they are created only if missing).
pub async fn migrate(config: &PostgresConfig) -> Result<(), DbError> {
    let pool = PgPoolOptions::new()
        .max_connections(config.max_connections)
        .acquire_timeout(config.acquire_timeout)
        .connect(config.url.expose())
        .await
        .map_err(DbError::Connect)?;
    sqlx::migrate!("./migrations").run(&pool).await?;
    pool.close().await;
    Ok(())
}
