//! Connecting to PostgreSQL: creating the database when missing and applying migrations.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// A start-up failure, phrased for the operator.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("invalid DATABASE_URL {url:?}: {cause}")]
    InvalidUrl { url: String, cause: String },
    #[error(
        "cannot reach PostgreSQL at {target} ({cause}); is it running? Set DATABASE_URL, e.g. postgres://postgres@127.0.0.1:5432/aipm"
    )]
    Unreachable { target: String, cause: String },
    #[error("cannot apply migrations to {target}: {cause}")]
    Migration { target: String, cause: String },
    #[error("{0}")]
    Other(String),
}

/// Connects to `url`, creating its database if it does not exist, and applies migrations.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StartError> {
    let options = PgConnectOptions::from_str(url)
        .map_err(|e| StartError::InvalidUrl {
            url: url.to_string(),
            cause: e.to_string(),
        })?
        .log_slow_statements(log::LevelFilter::Warn, Duration::from_secs(10));
    let target = format!(
        "{}:{}/{}",
        options.get_host(),
        options.get_port(),
        options.get_database().unwrap_or("postgres")
    );
    create_database_if_missing(&options, &target).await?;
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect_with(options)
        .await
        .map_err(|e| StartError::Unreachable {
            target: target.clone(),
            cause: e.to_string(),
        })?;
    MIGRATOR.run(&pool).await.map_err(|e| StartError::Migration {
        target,
        cause: e.to_string(),
    })?;
    Ok(pool)
}

async fn create_database_if_missing(options: &PgConnectOptions, target: &str) -> Result<(), StartError> {
    let Some(database) = options.get_database().map(str::to_string) else {
        return Ok(());
    };
    let maintenance = options.clone().database("postgres");
    let unreachable = |e: sqlx::Error| StartError::Unreachable {
        target: target.to_string(),
        cause: e.to_string(),
    };
    let mut conn = tokio::time::timeout(Duration::from_secs(5), maintenance.connect())
        .await
        .map_err(|_| StartError::Unreachable {
            target: target.to_string(),
            cause: "timed out".into(),
        })?
        .map_err(unreachable)?;
    let exists: bool = sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
        .bind(&database)
        .fetch_one(&mut conn)
        .await
        .map_err(unreachable)?;
    if !exists {
        let quoted = format!("\"{}\"", database.replace('"', "\"\""));
        // Another process may create it at the same moment; that is fine.
        if let Err(error) = sqlx::query(&format!("create database {quoted}"))
            .execute(&mut conn)
            .await
        {
            let duplicate =
                matches!(&error, sqlx::Error::Database(db) if db.code().as_deref() == Some("42P04"));
            if !duplicate {
                return Err(StartError::Other(format!(
                    "cannot create database {database:?}: {error}"
                )));
            }
        }
        tracing::info!(%database, "created database");
    }
    conn.close().await.map_err(unreachable)?;
    Ok(())
}

/// Whether the database answers, for the readiness probe.
pub async fn ping(pool: &PgPool) -> Result<(), sqlx::Error> {
    sqlx::query("select 1").execute(pool).await.map(|_| ())
}
