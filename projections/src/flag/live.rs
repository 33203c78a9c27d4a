//! Every feature flag in this process's memory, kept current from the event log
//! ([`crate::live`]), so that an evaluation is a read from memory and every process answers
//! alike.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use cqrs_es::Aggregate;
use domain::flag::{evaluate, Evaluation, Flag, FlagEvent};
use eventlog::StoredEvent;
use sqlx::PgPool;
use tokio::sync::watch;

use super::queries::{all_flags, StoredFlag};
use crate::live::{self, LiveView};

type Flags = HashMap<(String, String), Arc<StoredFlag>>;

/// The process's flags. Cloning shares them.
#[derive(Clone, Default)]
pub struct LiveFlags {
    flags: Arc<RwLock<Flags>>,
    followed: live::Followed,
}

impl LiveFlags {
    /// Loads every flag and follows the log from there, woken by `appended`.
    pub async fn start(pool: PgPool, appended: watch::Receiver<u64>) -> Result<Self, sqlx::Error> {
        let live = Self::default();
        let cursor = live::start_cursor(&pool).await?;
        let mut conn = pool.acquire().await?;
        for flag in all_flags(&mut conn).await? {
            live.remember(flag);
        }
        drop(conn);
        live::follow(
            Arc::new(live.clone()),
            pool,
            cursor,
            appended,
            live.followed.clone(),
        );
        Ok(live)
    }

    /// How far this view has read the log.
    pub fn followed(&self) -> &live::Followed {
        &self.followed
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
}

#[async_trait]
impl LiveView for LiveFlags {
    fn name(&self) -> &'static str {
        "flags"
    }

    fn aggregate_types(&self) -> &'static [&'static str] {
        &[Flag::TYPE]
    }

    async fn apply(&self, _: &PgPool, event: &StoredEvent) -> Result<(), sqlx::Error> {
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
