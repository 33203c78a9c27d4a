//! Reading the event log in its one global order.
//!
//! Events are ordered by `(transaction_id, position)` and a reader only takes events of
//! transactions older than the oldest transaction still running in this database
//! (`events_horizon()`, migration `20261127000005_events_horizon.sql`). Every such
//! transaction has committed or rolled back, so nothing can later appear before the
//! reader's cursor: no event that commits late is ever skipped, and writers never wait for
//! readers or each other. Transactions in other databases of the cluster cannot write
//! events here and do not hold readers back.

use domain::position::GlobalCursor;
use sqlx::PgConnection;

use eventlog::{Projection, StoredEvent};

/// Up to `limit` committed events after `after`, in global order.
pub async fn read_after(
    conn: &mut PgConnection,
    after: GlobalCursor,
    limit: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    read_for(conn, after, limit, Wanted::EVERYTHING).await
}

/// What a reader needs of each event; what it leaves out is not transferred. A reader must
/// still see every event to advance past it, but writing out each payload and metadata as
/// text is a large part of what reading the log costs PostgreSQL, so a reader should not
/// pay for what it skips.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wanted {
    /// Only these aggregate types' events carry their payload (the others a `null` one);
    /// `None`: every event's.
    pub aggregate_types: Option<&'static [&'static str]>,
    /// Only these metadata keys (those an event lacks are left out); `None`: all of them.
    pub metadata_keys: Option<&'static [&'static str]>,
}

impl Wanted {
    /// Every payload and all the metadata.
    pub const EVERYTHING: Wanted = Wanted {
        aggregate_types: None,
        metadata_keys: None,
    };

    /// What `projection` reads.
    pub fn by(projection: &dyn Projection) -> Self {
        Wanted {
            aggregate_types: projection.aggregate_types(),
            metadata_keys: projection.metadata_keys(),
        }
    }

    /// The select list's metadata column: the whole of it, or an object of the wanted keys
    /// (named in the statement: a key list bound as a parameter needs a subquery per row,
    /// which costs more than the text of the whole metadata).
    fn metadata_column(&self) -> String {
        match self.metadata_keys {
            None => "metadata::text".to_string(),
            Some([]) => "'{}'".to_string(),
            Some(keys) => {
                let pairs: Vec<String> = keys
                    .iter()
                    .map(|key| {
                        let literal = format!("'{}'", key.replace('\'', "''"));
                        format!("{literal}, metadata -> {literal}")
                    })
                    .collect();
                format!(
                    "jsonb_strip_nulls(jsonb_build_object({}))::text",
                    pairs.join(", ")
                )
            }
        }
    }
}

/// Like [`read_after`], but only what `wanted` names.
pub async fn read_for(
    conn: &mut PgConnection,
    after: GlobalCursor,
    limit: i64,
    wanted: Wanted,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    read(conn, Horizon::Settled, after, limit, wanted).await
}

/// Like [`read_for`], but every committed event, up to the newest, whether or not older
/// transactions are still running. Only for a reader that no event can reach late: the
/// rebuild of an inline projection, which holds its tables' locks, so a transaction that
/// would write them is either committed before it reads or waits until it is done.
pub async fn read_committed_for(
    conn: &mut PgConnection,
    after: GlobalCursor,
    limit: i64,
    wanted: Wanted,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    read(conn, Horizon::Committed, after, limit, wanted).await
}

/// How far a read may go: the settled log, or every committed event.
#[derive(Clone, Copy)]
enum Horizon {
    Settled,
    Committed,
}

async fn read(
    conn: &mut PgConnection,
    horizon: Horizon,
    after: GlobalCursor,
    limit: i64,
    wanted: Wanted,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let up_to = match horizon {
        Horizon::Settled => " and transaction_id < (select events_horizon())",
        Horizon::Committed => "",
    };
    // The order is qualified: the bare names would sort by the casted output column, which
    // no index provides, and PostgreSQL would sort everything after the cursor.
    let sql = format!(
        "select aggregate_type, aggregate_id, sequence, event_type, event_version,
            case when $4::text[] is null or aggregate_type = any($4) then payload::text else 'null' end as payload,
            {metadata} as metadata, tenant_id, transaction_id::text::bigint as transaction_id, position, recorded_at
         from events
         where (transaction_id, position) > ($1::bigint::text::xid8, $2){up_to}
         order by events.transaction_id, events.position limit $3",
        metadata = wanted.metadata_column(),
    );
    sqlx::query_as(&sql)
        .bind(after.transaction_id)
        .bind(after.position)
        .bind(limit)
        .bind(wanted.aggregate_types)
        .fetch_all(conn)
        .await
}

/// Whether committed or in-flight events exist after `after` that [`read_after`] cannot
/// return yet because an older transaction is still running; they will be readable soon.
pub async fn pending_after(conn: &mut PgConnection, after: GlobalCursor) -> Result<bool, sqlx::Error> {
    // Ordered and limited so that PostgreSQL walks the global-order index even with a
    // generic plan; a bare EXISTS is planned as a sequential scan.
    let pending = sqlx::query(
        "select 1 from events where (transaction_id, position) > ($1::bigint::text::xid8, $2)
         order by transaction_id, position limit 1",
    )
    .bind(after.transaction_id)
    .bind(after.position)
    .fetch_optional(conn)
    .await?
    .is_some();
    Ok(pending)
}

/// The cursor of the last event [`read_after`] can return now ([`GlobalCursor::START`] for
/// an empty log): every event at or before it has committed or rolled back for good.
pub async fn settled_end(conn: &mut PgConnection) -> Result<GlobalCursor, sqlx::Error> {
    let last: Option<(i64, i64)> = sqlx::query_as(
        "select transaction_id::text::bigint, position from events
         where transaction_id < (select events_horizon())
         order by events.transaction_id desc, events.position desc
         limit 1",
    )
    .fetch_optional(conn)
    .await?;
    Ok(last.map_or(GlobalCursor::START, |(t, p)| GlobalCursor::new(t, p)))
}
