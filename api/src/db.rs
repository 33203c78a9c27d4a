//! Connecting to PostgreSQL: creating the database when missing and applying migrations.

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

/// The database used when neither `DATABASE_URL` nor `AIPM_DATA_DIR` is set, if it answers.
pub const DEFAULT_URL: &str = "postgres://postgres@127.0.0.1:5432/aipm";

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
    LogAheadOfCluster(LogAheadOfCluster),
    #[error("{0}")]
    Other(String),
}

/// Connects to `url`, creating its database if it does not exist, and applies migrations.
pub async fn connect(url: &str, max_connections: u32) -> Result<PgPool, StartError> {
    connect_with(parse_url(url)?, max_connections).await
}

/// [`connect`] with `options` rather than a URL (a private server's socket).
pub async fn connect_with(options: PgConnectOptions, max_connections: u32) -> Result<PgPool, StartError> {
    let options = options.log_slow_statements(log::LevelFilter::Warn, Duration::from_secs(10));
    let server = match options.get_socket() {
        Some(socket) => format!("{}/.s.PGSQL.{}", socket.display(), options.get_port()),
        None => format!("{}:{}", options.get_host(), options.get_port()),
    };
    let target = format!("{server}/{}", options.get_database().unwrap_or("postgres"));
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
        target: target.clone(),
        cause: e.to_string(),
    })?;
    if let Some(ahead) = log_ahead_of_cluster(&pool)
        .await
        .map_err(|e| StartError::Unreachable {
            target,
            cause: e.to_string(),
        })?
    {
        return Err(StartError::LogAheadOfCluster(ahead));
    }
    Ok(pool)
}

fn parse_url(url: &str) -> Result<PgConnectOptions, StartError> {
    PgConnectOptions::from_str(url).map_err(|e| StartError::InvalidUrl {
        url: url.to_string(),
        cause: e.to_string(),
    })
}

/// Why the server of `url` cannot be used, when nothing answers there or it refuses the
/// URL's user (as a fresh PostgreSQL asks TCP clients for a password); `None` when it can be
/// used, or fails in another way, which connecting then reports.
pub async fn refusal(url: &str) -> Result<Option<String>, StartError> {
    let options = parse_url(url)?;
    let server = format!("{}:{}", options.get_host(), options.get_port());
    let user = options.get_username().to_string();
    let attempt = tokio::time::timeout(Duration::from_secs(5), options.database("postgres").connect()).await;
    Ok(match attempt {
        Err(_) | Ok(Err(sqlx::Error::Io(_))) => Some(format!("nothing answers on {server}")),
        // 28P01: wrong (here: no) password; 28000: no pg_hba.conf entry, or no such role.
        Ok(Err(sqlx::Error::Database(error)))
            if matches!(error.code().as_deref(), Some("28P01" | "28000")) =>
        {
            Some(format!(
                "PostgreSQL on {server} refuses user {user} without a password"
            ))
        }
        Ok(Err(_)) => None,
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            None
        }
    })
}

/// An event log holding transaction ids this PostgreSQL cluster has not handed out yet.
///
/// Readers order the log by `(transaction_id, position)` and the ids of new events come
/// from the cluster's counter. After a restore into another cluster (or a counter that
/// went back), new events would sort before those already read, and no projection, feed or
/// audit would ever see them: aipm refuses to start until the counter is past the log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogAheadOfCluster {
    /// The log's highest transaction id.
    pub highest: i64,
    /// The next id the cluster hands out.
    pub next: i64,
}

impl LogAheadOfCluster {
    /// Ids to consume so that the next one is past the log's.
    pub fn gap(&self) -> i64 {
        self.highest - self.next + 1
    }

    /// `pg_resetwal`'s `-e` and `-x` for a next id past the log's: `-x` at the start of a
    /// commit-log segment (a multiple of 1,048,576), which PostgreSQL creates when it gets
    /// there.
    pub fn reset_arguments(&self) -> (i64, i64) {
        const SEGMENT: i64 = 1 << 20;
        let target = self.highest + 1;
        let epoch = target >> 32;
        let xid = ((target & 0xFFFF_FFFF) + SEGMENT - 1) / SEGMENT * SEGMENT;
        if xid > 0xFFFF_FFFF {
            (epoch + 1, SEGMENT)
        } else {
            (epoch, xid.max(SEGMENT))
        }
    }
}

impl std::fmt::Display for LogAheadOfCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (epoch, xid) = self.reset_arguments();
        write!(
            f,
            "the event log's highest transaction id ({highest}) is not below this PostgreSQL \
             cluster's next one ({next}): the database was restored into another cluster, or the \
             cluster's transaction counter went back. New events would sort before those already \
             in the log and never reach the read models, the audit log or the feeds, so aipm does \
             not start. Advance the counter past {highest}, then start again: in psql on this \
             database, run `do $$ begin for i in 1..{gap} loop perform pg_current_xact_id(); commit; \
             end loop; end $$;` (one transaction per id), or, with PostgreSQL stopped, \
             `pg_resetwal -e {epoch} -x {xid} <data directory>` as its owner. README, \"Restoring \
             the database\", has the details",
            highest = self.highest,
            next = self.next,
            gap = self.gap(),
        )
    }
}

/// The log's highest transaction id and the cluster's next, when the first is not below the
/// second.
pub async fn log_ahead_of_cluster(pool: &PgPool) -> Result<Option<LogAheadOfCluster>, sqlx::Error> {
    let (highest, next): (Option<i64>, i64) = sqlx::query_as(
        "select (select transaction_id::text::bigint from events
                 order by transaction_id desc, position desc limit 1),
                pg_snapshot_xmax(pg_current_snapshot())::text::bigint",
    )
    .fetch_one(pool)
    .await?;
    Ok(highest
        .filter(|&highest| highest >= next)
        .map(|highest| LogAheadOfCluster { highest, next }))
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
        // Another process may create it at the same moment; that is fine. The loser of a
        // close race gets 23505 from pg_database's unique index rather than 42P04.
        if let Err(error) = sqlx::query(&format!("create database {quoted}"))
            .execute(&mut conn)
            .await
        {
            let duplicate = matches!(&error, sqlx::Error::Database(db)
                if matches!(db.code().as_deref(), Some("42P04" | "23505")));
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_server_that_is_absent_or_refuses_the_user_is_told_apart_from_one_that_answers() {
        assert_eq!(
            refusal("postgres://postgres@127.0.0.1:1/aipm").await.unwrap(),
            Some("nothing answers on 127.0.0.1:1".to_string())
        );
        assert_eq!(
            refusal("postgres://aipm_no_such_role@127.0.0.1:5432/aipm")
                .await
                .unwrap(),
            Some(
                "PostgreSQL on 127.0.0.1:5432 refuses user aipm_no_such_role without a password".to_string()
            )
        );
        assert_eq!(refusal(DEFAULT_URL).await.unwrap(), None);
        assert!(matches!(
            refusal("not a url").await,
            Err(StartError::InvalidUrl { .. })
        ));
    }

    #[test]
    fn the_remedy_moves_the_counter_past_the_log_to_a_segment_start() {
        let ahead = LogAheadOfCluster {
            highest: 238_303,
            next: 740,
        };
        assert_eq!(ahead.gap(), 237_564);
        assert_eq!(ahead.reset_arguments(), (0, 1_048_576));
        let far = LogAheadOfCluster {
            highest: (3 << 32) + 5_000_000,
            next: 740,
        };
        assert_eq!(far.reset_arguments(), (3, 5 * 1_048_576));
        let end_of_epoch = LogAheadOfCluster {
            highest: (1 << 32) - 2,
            next: 740,
        };
        assert_eq!(end_of_epoch.reset_arguments(), (1, 1_048_576));
        for ahead in [ahead, far, end_of_epoch] {
            let (epoch, xid) = ahead.reset_arguments();
            assert!((epoch << 32) + xid > ahead.highest);
        }
    }
}
