//! Idempotency keys: a command sent with a key is carried out at most once, and every
//! retry with that key gets the first answer back.
//!
//! # Design
//! Two tables (`migrations/20261127000004_idempotency.sql`):
//! - `idempotency_request`: one row per key, scoped to the API key that sent it. The first
//!   request *claims* the key (insert), runs, and stores its response in the row. A retry
//!   finds the stored response and replays it; a retry with another request under the same
//!   key is refused; a retry while the first attempt still holds the claim is told to come
//!   back (see [`Claim`]).
//! - `idempotency_outcome`: what the command committed (aggregate, sequences), written **by
//!   the same statement that appends the events** ([`crate::store`]). This closes the
//!   window between commit and storing the response: if the process dies there, a retry
//!   takes the claim over ([`Attempt::resumed`]) as soon as the advisory lock the process
//!   held while it lived is gone ([`IdempotencyStore::held_by`]; without one, once the
//!   claim's lease runs out), finds the outcome
//!   and rebuilds the committed result from the events instead of running the command again
//!   ([`crate::AggregateStore::recorded`]); the response is then rendered from it as the
//!   first attempt would have. The outcome's primary key is also a fence: a second append
//!   under the same key fails as a whole, so even an attempt that outlived its lease cannot
//!   append twice.
//!
//! A keyed request runs at most one command that appends events; its key is also stored in
//! the events' metadata (`idempotency_key`).
//!
//! Durability: the claim, the stored response and a released claim commit without waiting
//! for their WAL flush ([`ASYNC_COMMIT`]); only the append waits, as every command does.
//! Should PostgreSQL crash and lose such a commit, the state falls back to one the design
//! handles already:
//! - A lost claim had no events appended under it: WAL is flushed in order, so the
//!   append's own flush would have carried the earlier claim with it. The retry claims
//!   afresh and runs the command.
//! - A lost response leaves a claim without one, as a process dying after its commit does:
//!   once the lease ends, the retry rebuilds the response from the outcome.
//! - A lost release only makes the retry wait for the lease.
//!
//! Expiry: a row counts as absent once `expires_at` has passed (and no attempt holds it),
//! and [`IdempotencyStore::delete_expired`] removes such rows; deleting a request deletes
//! its outcome with it.

use std::time::Duration;

use serde_json::Value;
use sqlx::PgPool;
use uuid::Uuid;

pub use crate::metadata::IdempotencyScope;

/// A response as stored for replay: status, the headers worth replaying, and the body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

/// The right to run a keyed request, held until its response is stored or released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attempt {
    /// Identifies this attempt: only the holder stores a response or releases the claim.
    pub id: Uuid,
    /// The id for an aggregate this request creates: the same for every attempt.
    pub resource_id: Uuid,
    /// An earlier attempt held the claim and ended without a response (its process died, or
    /// it failed); it may have committed, so look for its outcome before running again.
    pub resumed: bool,
}

/// What a request with an idempotency key should do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Claim {
    /// Run the request.
    Acquired(Attempt),
    /// The key was used before for this very request: answer with its response.
    Completed(StoredResponse),
    /// The key was used before for a different request (other method, path or body).
    Mismatch,
    /// Another attempt is running this request now; try again after `retry_after`.
    InFlight { retry_after: Duration },
}

/// The idempotency keys of all tenants.
#[derive(Debug, Clone)]
pub struct IdempotencyStore {
    pool: PgPool,
    ttl: Duration,
    lease: Duration,
    /// The advisory lock this process holds while it lives, named in its claims.
    holder: Option<String>,
}

/// Rows removed per statement by [`IdempotencyStore::delete_expired`], so that a large
/// backlog never becomes one long transaction.
const DELETE_BATCH: i64 = 5_000;
/// How often a claim is retried when the row changes under it (taken over, expired).
const CLAIM_ATTEMPTS: usize = 4;

const KEY_MATCHES: &str = "tenant_id = $1 and owner_key_id = $2 and idempotency_key = $3";
/// The claim's holder is known and its process no longer holds its lock: it died.
const HOLDER_GONE: &str = "(holder is not null and not idempotency_holder_alive(holder))";
/// A row source that makes the statement's own transaction commit without waiting for its WAL
/// flush (see the module documentation for why that is safe for these rows).
const ASYNC_COMMIT: &str = "(select set_config('synchronous_commit', 'off', true)) as async_commit";

impl IdempotencyStore {
    /// Keys live for `ttl`; an attempt holds its claim for `lease` at most, after which a
    /// retry may take over (the attempt's process is presumed dead).
    pub fn new(pool: PgPool, ttl: Duration, lease: Duration) -> Self {
        Self {
            pool,
            ttl,
            lease,
            holder: None,
        }
    }

    /// Names in this process's claims the advisory lock it holds for as long as it lives
    /// (by the name `hashtextextended` hashes): a retry that finds a claim whose holder's
    /// lock is gone takes it over at once, without waiting for the lease.
    pub fn held_by(mut self, lock_name: String) -> Self {
        self.holder = Some(lock_name);
        self
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Claims `scope` for a request with `fingerprint`, or says why it may not run.
    pub async fn claim(&self, scope: &IdempotencyScope, fingerprint: &str) -> sqlx::Result<Claim> {
        for _ in 0..CLAIM_ATTEMPTS {
            let attempt = Uuid::new_v4();
            let sql = format!(
                "insert into idempotency_request
                     (tenant_id, owner_key_id, idempotency_key, fingerprint, resource_id, attempt,
                      locked_until, expires_at, holder)
                 select $1, $2, $3, $4, $5, $6,
                        now() + $7 * interval '1 second', now() + $8 * interval '1 second', $9
                 from {ASYNC_COMMIT}
                 on conflict (tenant_id, owner_key_id, idempotency_key) do nothing
                 returning resource_id"
            );
            let inserted: Option<Uuid> = sqlx::query_scalar(&sql)
                .bind(&scope.tenant)
                .bind(&scope.owner)
                .bind(&scope.key)
                .bind(fingerprint)
                .bind(Uuid::now_v7())
                .bind(attempt)
                .bind(self.lease.as_secs_f64())
                .bind(self.ttl.as_secs_f64())
                .bind(&self.holder)
                .fetch_optional(&self.pool)
                .await?;
            if let Some(resource_id) = inserted {
                return Ok(Claim::Acquired(Attempt {
                    id: attempt,
                    resource_id,
                    resumed: false,
                }));
            }

            let sql = format!(
                // Whether the holder died is asked once, and only of a claim still without
                // a response: a replay of a stored one never reads `pg_locks`.
                "select fingerprint, response_status, response_headers, response_body,
                        case when holder.gone then 0 else extract(epoch from locked_until - now())::float8 end,
                        expires_at <= now() and (locked_until <= now() or holder.gone)
                 from idempotency_request,
                      lateral (select case when response_status is null then {HOLDER_GONE} else false end as gone) as holder
                 where {KEY_MATCHES}"
            );
            let existing: Option<ExistingRow> = sqlx::query_as(&sql)
                .bind(&scope.tenant)
                .bind(&scope.owner)
                .bind(&scope.key)
                .fetch_optional(&self.pool)
                .await?;
            let Some((stored_fingerprint, status, headers, body, lease_left, expired)) = existing else {
                continue; // deleted since the insert: claim again
            };
            if expired {
                let sql = format!(
                    "delete from idempotency_request
                     where {KEY_MATCHES} and expires_at <= now() and (locked_until <= now() or {HOLDER_GONE})"
                );
                sqlx::query(&sql)
                    .bind(&scope.tenant)
                    .bind(&scope.owner)
                    .bind(&scope.key)
                    .execute(&self.pool)
                    .await?;
                continue;
            }
            if stored_fingerprint != fingerprint {
                return Ok(Claim::Mismatch);
            }
            if let Some(status) = status {
                return Ok(Claim::Completed(StoredResponse {
                    status: status as u16,
                    headers: headers
                        .and_then(|h| serde_json::from_value(h).ok())
                        .unwrap_or_default(),
                    body: body.unwrap_or_default(),
                }));
            }
            if lease_left > 0.0 {
                return Ok(Claim::InFlight {
                    retry_after: Duration::from_secs_f64(lease_left.ceil().max(1.0)),
                });
            }
            // The holder died, or its lease ran out, without a response: take the claim over.
            let sql = format!(
                "update idempotency_request
                 set attempt = $4, locked_until = now() + $5 * interval '1 second', holder = $6
                 where {KEY_MATCHES} and response_status is null and (locked_until <= now() or {HOLDER_GONE})
                 returning resource_id"
            );
            let taken: Option<Uuid> = sqlx::query_scalar(&sql)
                .bind(&scope.tenant)
                .bind(&scope.owner)
                .bind(&scope.key)
                .bind(attempt)
                .bind(self.lease.as_secs_f64())
                .bind(&self.holder)
                .fetch_optional(&self.pool)
                .await?;
            if let Some(resource_id) = taken {
                return Ok(Claim::Acquired(Attempt {
                    id: attempt,
                    resource_id,
                    resumed: true,
                }));
            }
        }
        // The row kept changing under us: another attempt is busy with it.
        Ok(Claim::InFlight {
            retry_after: Duration::from_secs(1),
        })
    }

    /// Stores the response of `attempt` for replay; `false` if the attempt no longer holds
    /// the claim (another attempt took it over and answers instead).
    pub async fn complete(
        &self,
        scope: &IdempotencyScope,
        attempt: Uuid,
        response: &StoredResponse,
    ) -> sqlx::Result<bool> {
        let headers =
            serde_json::to_value(&response.headers).map_err(|error| sqlx::Error::Encode(Box::new(error)))?;
        let sql = format!(
            "update idempotency_request
             set response_status = $5, response_headers = $6, response_body = $7, locked_until = now()
             from {ASYNC_COMMIT}
             where {KEY_MATCHES} and attempt = $4 and response_status is null"
        );
        let done = sqlx::query(&sql)
            .bind(&scope.tenant)
            .bind(&scope.owner)
            .bind(&scope.key)
            .bind(attempt)
            .bind(response.status as i16)
            .bind(headers)
            .bind(&response.body)
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Ends `attempt`'s claim without a response (it failed in a way worth retrying): the
    /// next retry takes over at once.
    pub async fn release(&self, scope: &IdempotencyScope, attempt: Uuid) -> sqlx::Result<()> {
        let sql = format!(
            "update idempotency_request set locked_until = now()
             from {ASYNC_COMMIT}
             where {KEY_MATCHES} and attempt = $4 and response_status is null"
        );
        sqlx::query(&sql)
            .bind(&scope.tenant)
            .bind(&scope.owner)
            .bind(&scope.key)
            .bind(attempt)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    /// Deletes expired keys (and their outcomes); returns how many.
    pub async fn delete_expired(&self) -> sqlx::Result<u64> {
        let mut deleted = 0;
        loop {
            let batch = sqlx::query(
                "delete from idempotency_request where ctid in (
                     select ctid from idempotency_request
                     where expires_at <= now() and locked_until <= now()
                     limit $1)",
            )
            .bind(DELETE_BATCH)
            .execute(&self.pool)
            .await?
            .rows_affected();
            deleted += batch;
            if batch < DELETE_BATCH as u64 {
                return Ok(deleted);
            }
        }
    }
}

type ExistingRow = (String, Option<i16>, Option<Value>, Option<Vec<u8>>, f64, bool);
