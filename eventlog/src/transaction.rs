//! Opening transactions safely.

use sqlx::{PgPool, Postgres, Transaction};

/// Opens a transaction that a cancelled caller cannot leave open on a pooled connection.
///
/// sqlx 0.8 returns a connection to its pool inside a transaction when `begin` is cancelled
/// while its BEGIN is in flight: nothing rolls that transaction back, and the next statement
/// on the connection (a command's append, say) runs inside it, is answered as done, and is
/// lost. Here BEGIN runs in a task of its own and always completes; if the caller is gone by
/// then, the transaction is dropped, which queues its rollback.
pub async fn begin(pool: &PgPool) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
    let pool = pool.clone();
    #[allow(clippy::disallowed_methods)] // the one place it is safe: the task cannot be cancelled
    tokio::spawn(async move { pool.begin().await })
        .await
        .map_err(|error| sqlx::Error::Io(std::io::Error::other(format!("BEGIN task failed: {error}"))))?
}
