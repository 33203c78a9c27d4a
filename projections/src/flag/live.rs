//! Every feature flag in this process's memory, kept current from the event log, so that an
//! evaluation is a read from memory and every process answers alike.
//!
//! # Nothing missed, nothing stale
//!
//! At start the view takes the end of the settled log `E` first, then reads the `flag`
//! table. Every event at or before `E` is committed and, the projection being inline, in
//! the table it reads; so the view holds at least everything up to `E`. It then follows the
//! log in global order from `E`, applying each flag event whose sequence is above the
//! version it holds: an event already in the table is skipped, none is missed. A process
//! that changes a flag also puts the new state in its own view as soon as the change
//! commits ([`LiveFlags::remember`]), so its next evaluation sees it.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use cqrs_es::Aggregate;
use domain::flag::{evaluate, Evaluation, Flag, FlagEvent};
use domain::position::GlobalCursor;
use sqlx::PgPool;
use tokio::sync::watch;

use super::queries::{all_flags, StoredFlag};
use crate::global_order;

/// Events read from the log at a time.
const BATCH: i64 = 500;
/// How often the log is read when no append is announced.
const POLL: Duration = Duration::from_secs(1);
const RETRY_DELAY: Duration = Duration::from_secs(1);

type Flags = HashMap<(String, String), Arc<StoredFlag>>;

/// The process's flags. Cloning shares them.
#[derive(Clone, Default)]
pub struct LiveFlags {
    flags: Arc<RwLock<Flags>>,
}

impl LiveFlags {
    /// Loads every flag and follows the log from there, woken by `appended`.
    pub async fn start(pool: PgPool, appended: watch::Receiver<u64>) -> Result<Self, sqlx::Error> {
        let live = Self::default();
        let mut conn = pool.acquire().await?;
        let cursor = global_order::settled_end(&mut conn).await?;
        for flag in all_flags(&mut conn).await? {
            live.remember(flag);
        }
        drop(conn);
        tokio::spawn(live.clone().follow(pool, cursor, appended));
        Ok(live)
    }

    /// The flag `key` of `tenant` evaluated for `subject`, with the flag; `None` when the
    /// tenant has no such flag.
    pub fn evaluate(&self, tenant: &str, key: &str, subject: &str) -> Option<(Evaluation, Arc<StoredFlag>)> {
        let flags = self.flags.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let flag = flags.get(&(tenant.to_string(), key.to_string()))?.clone();
        drop(flags);
        Some((evaluate(&flag.key, &flag.salt, &flag.settings, subject), flag))
    }

    /// Holds `flag` unless a newer version of it is held already.
    pub fn remember(&self, flag: StoredFlag) {
        let mut flags = self
            .flags
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = (flag.tenant.clone(), flag.key.clone());
        if flags.get(&entry).is_none_or(|held| held.version < flag.version) {
            flags.insert(entry, Arc::new(flag));
        }
    }

    async fn follow(self, pool: PgPool, mut cursor: GlobalCursor, mut appended: watch::Receiver<u64>) {
        loop {
            match self.catch_up(&pool, cursor).await {
                Ok(next) => {
                    cursor = next;
                    // Woken by an append (ours or, announced, another process's), or polled.
                    let _ = tokio::time::timeout(POLL, appended.changed()).await;
                }
                Err(error) => {
                    tracing::warn!(%error, "following the log for feature flags failed; retrying");
                    tokio::time::sleep(RETRY_DELAY).await;
                }
            }
        }
    }

    /// Applies the flag events after `cursor`; returns the cursor it reached.
    async fn catch_up(&self, pool: &PgPool, mut cursor: GlobalCursor) -> Result<GlobalCursor, sqlx::Error> {
        let mut conn = pool.acquire().await?;
        loop {
            let events = global_order::read_for(&mut conn, cursor, BATCH, Some(&[Flag::TYPE])).await?;
            for event in &events {
                cursor = event.cursor;
                if event.aggregate_type == Flag::TYPE {
                    self.apply(event)?;
                }
            }
            if (events.len() as i64) < BATCH {
                return Ok(cursor);
            }
        }
    }

    fn apply(&self, event: &eventlog::StoredEvent) -> Result<(), sqlx::Error> {
        let FlagEvent::FlagSet {
            tenant,
            key,
            salt,
            settings,
            ..
        } = event
            .decode::<FlagEvent>()
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?;
        self.remember(StoredFlag {
            tenant,
            key,
            salt,
            settings,
            version: event.sequence,
            updated_at: event.recorded_at,
        });
        Ok(())
    }
}
