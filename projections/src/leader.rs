//! Leadership of work that must run in one process at a time — a runner's projection, the
//! NATS relay, the audit anchors — among every aipm process on one database.
//!
//! Each process is a candidate for each role: on a connection of its own it asks for a
//! session advisory lock on the role every second, and the one that gets it leads until
//! that connection ends. A process that dies, even by SIGKILL, has its connection closed by
//! the kernel; PostgreSQL then releases the lock and another candidate leads at its next
//! try, within about a second. TCP keepalives on the connection bound how long a host that
//! vanished without closing it keeps the lead (about ten seconds). The leader checks its
//! connection every second and stops the work when it fails, since its lock may be gone.
//!
//! Leadership decides who works, not what is correct: the work still takes its
//! transaction-scoped lock for each batch ([`crate::runner::lock_projection`]), so even the
//! moment in which a leader that lost its connection has not noticed yet cannot apply or
//! publish anything twice.

use std::future::Future;
use std::time::Duration;

use sqlx::postgres::PgConnection;
use sqlx::{ConnectOptions, Connection, PgPool};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// How often a candidate asks for the lead, and a leader checks that it still holds it.
const TRY_INTERVAL: Duration = Duration::from_secs(1);
/// How long a leader's check of its connection may take before it gives the lead up.
const CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// One role this process is a candidate for. Dropping it stops the candidacy and the work.
pub struct Leadership {
    role: String,
    leading: watch::Receiver<bool>,
    task: AbortHandle,
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Leadership {
    /// Becomes a candidate for `role` on `pool`'s database, running `work()` whenever this
    /// process leads and aborting it when it stops leading. `work` is called afresh for
    /// each term.
    pub fn spawn<W, F>(pool: &PgPool, role: impl Into<String>, work: W) -> Self
    where
        W: Fn() -> F + Send + Sync + 'static,
        F: Future<Output = ()> + Send + 'static,
    {
        let role = role.into();
        let (leading_tx, leading) = watch::channel(false);
        let options = (*pool.connect_options()).clone();
        let candidate_role = role.clone();
        let task = tokio::spawn(async move {
            let mut logged_failure = false;
            loop {
                match stand(&options, &candidate_role, &work, &leading_tx).await {
                    Ok(()) => logged_failure = false,
                    Err(error) if !logged_failure => {
                        tracing::warn!(role = %candidate_role, %error, "cannot stand for the lead; trying again");
                        logged_failure = true;
                    }
                    Err(_) => {}
                }
                leading_tx.send_replace(false);
                tokio::time::sleep(TRY_INTERVAL).await;
            }
        })
        .abort_handle();
        Self { role, leading, task }
    }

    /// Ends the candidacy and the work now, even while others hold this handle.
    pub fn stop(&self) {
        self.task.abort();
    }

    /// The role's name.
    pub fn role(&self) -> &str {
        &self.role
    }

    /// Whether this process leads the role now.
    pub fn is_leading(&self) -> bool {
        *self.leading.borrow()
    }

    /// Changes when this process takes or loses the lead.
    pub fn watch(&self) -> watch::Receiver<bool> {
        self.leading.clone()
    }
}

/// Connects, waits for the lead, then leads until the connection fails. Returns only on an
/// error: the caller reconnects after a pause.
async fn stand<W, F>(
    options: &sqlx::postgres::PgConnectOptions,
    role: &str,
    work: &W,
    leading: &watch::Sender<bool>,
) -> Result<(), sqlx::Error>
where
    W: Fn() -> F,
    F: Future<Output = ()> + Send + 'static,
{
    let mut conn = options.connect().await?;
    // Over TCP, a leader whose host vanished is noticed by PostgreSQL within about ten
    // seconds (5 s idle, then 3 probes 2 s apart) instead of the system's two hours.
    sqlx::query(
        "select set_config('tcp_keepalives_idle', '5', false),
                set_config('tcp_keepalives_interval', '2', false),
                set_config('tcp_keepalives_count', '3', false),
                set_config('application_name', $1, false)",
    )
    .bind(format!("aipm leader candidate: {role}"))
    .execute(&mut conn)
    .await?;
    while !try_lead(&mut conn, role).await? {
        tokio::time::sleep(TRY_INTERVAL).await;
    }
    tracing::info!(%role, "leading");
    // Aborted with the candidacy too: dropping a task's handle would leave it running.
    let term = AbortOnDrop(tokio::spawn(work()));
    leading.send_replace(true);
    let outcome = hold(&mut conn, &term.0).await;
    drop(term);
    tracing::info!(%role, "no longer leading");
    let _ = conn.close().await;
    outcome
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whether this connection now holds the role's lock.
async fn try_lead(conn: &mut PgConnection, role: &str) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("select pg_try_advisory_lock(hashtextextended($1, 0))")
        .bind(lock_name(role))
        .fetch_one(conn)
        .await
}

/// Checks the leader's connection every second for as long as the work runs.
async fn hold(conn: &mut PgConnection, term: &tokio::task::JoinHandle<()>) -> Result<(), sqlx::Error> {
    loop {
        tokio::time::sleep(TRY_INTERVAL).await;
        if term.is_finished() {
            return Ok(());
        }
        match tokio::time::timeout(CHECK_TIMEOUT, conn.ping()).await {
            Ok(result) => result?,
            Err(_) => return Err(sqlx::Error::PoolTimedOut),
        }
    }
}

/// The name whose `hashtextextended` is the advisory lock a leader of `role` holds:
/// distinct from the names the work locks for each batch, which the leader's own
/// transactions must be able to take.
pub fn lock_name(role: &str) -> String {
    format!("aipm leader: {role}")
}
