//! What a read model derived from the event log implements.

use async_trait::async_trait;
use domain::position::GlobalCursor;
use sqlx::PgConnection;

use crate::event::StoredEvent;

#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("event {cursor} ({event_type}) could not be decoded: {source}")]
    Undecodable {
        cursor: GlobalCursor,
        event_type: String,
        source: serde_json::Error,
    },
}

impl ProjectionError {
    pub fn undecodable(event: &StoredEvent, source: serde_json::Error) -> Self {
        Self::Undecodable {
            cursor: event.cursor,
            event_type: event.event_type.clone(),
            source,
        }
    }
}

/// A read model maintained from the event log. Must be safe to replay: it writes only its
/// own tables and has no effects outside the transaction it is given.
///
/// A projection is applied one of two ways:
/// - **inline**: by the write side, in the transaction that appends the events, for the
///   aggregate types it reads. It is never behind the log, and a command's answer and the
///   caller's next read see its effect at once; concurrent commands may apply it at the
///   same time, so it must lock the rows it reads to change them.
/// - **by a runner** that tails the global order and applies batches with a checkpoint
///   (`projections::runner`). Its readers wait for it when they must see recent events.
#[async_trait]
pub trait Projection: Send + Sync + 'static {
    /// Its name: the key of its checkpoint and lock. Renaming it rebuilds from scratch.
    fn name(&self) -> &'static str;

    /// The tables this projection owns, in `public`; a rebuild replaces them.
    fn tables(&self) -> &'static [&'static str];

    /// Tables it writes without owning them (the registry prices usage records again when a
    /// price changes). A rebuild elsewhere than in the live tables gives it empty copies of
    /// them, so that building never touches the live ones; a rebuild does not restore them.
    fn also_writes(&self) -> &'static [&'static str] {
        &[]
    }

    /// The aggregate types whose events this projection reads (`None`: all). The others'
    /// payloads are not fetched for it. An inline projection must name its types.
    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        None
    }

    /// The metadata keys it reads with [`StoredEvent::meta`] (`None`: it reads the metadata
    /// whole). The others are not fetched for it; `meta` of a key left out answers `None`.
    fn metadata_keys(&self) -> Option<&'static [&'static str]> {
        None
    }

    /// Whether the write side applies it in the transaction of the events (see above).
    fn inline(&self) -> bool {
        false
    }

    /// How long its runner waits, once woken by an append, before reading the log: events
    /// appended meanwhile share the batch, which costs far less per event than a batch each.
    /// For a read model whose readers can wait that much longer for it.
    fn linger(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// Applies a batch of events, in global order, inside the given transaction.
    async fn apply(&self, tx: &mut PgConnection, events: &[StoredEvent]) -> Result<(), ProjectionError>;

    /// Whether this projection reads events of `aggregate_type`.
    fn reads(&self, aggregate_type: &str) -> bool {
        self.aggregate_types()
            .is_none_or(|types| types.contains(&aggregate_type))
    }
}
