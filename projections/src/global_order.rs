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

use eventlog::StoredEvent;

/// Up to `limit` committed events after `after`, in global order.
pub async fn read_after(
    conn: &mut PgConnection,
    after: GlobalCursor,
    limit: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    read_for(conn, after, limit, None).await
}

/// Like [`read_after`], but only events of `aggregate_types` (when given) carry their
/// payload; the others come with a `null` payload. A reader must still see every event to
/// advance past it, but need not transfer what it will skip.
pub async fn read_for(
    conn: &mut PgConnection,
    after: GlobalCursor,
    limit: i64,
    aggregate_types: Option<&[&str]>,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    read(conn, READ_SETTLED.as_str(), after, limit, aggregate_types).await
}

/// Like [`read_for`], but every committed event, up to the newest, whether or not older
/// transactions are still running. Only for a reader that no event can reach late: the
/// rebuild of an inline projection, which holds its tables' locks, so a transaction that
/// would write them is either committed before it reads or waits until it is done.
pub async fn read_committed_for(
    conn: &mut PgConnection,
    after: GlobalCursor,
    limit: i64,
    aggregate_types: Option<&[&str]>,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    read(conn, READ_COMMITTED.as_str(), after, limit, aggregate_types).await
}

const SELECT_AFTER: &str = "select aggregate_type, aggregate_id, sequence, event_type, event_version,
        case when $4::text[] is null or aggregate_type = any($4) then payload::text else 'null' end as payload,
        metadata::text as metadata, tenant_id, transaction_id::text::bigint as transaction_id, position, recorded_at
    from events
    where (transaction_id, position) > ($1::bigint::text::xid8, $2)";
// Qualified: the bare names would sort by the casted output column, which no index
// provides, and PostgreSQL would sort everything after the cursor.
const ORDERED: &str = " order by events.transaction_id, events.position limit $3";
static READ_SETTLED: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!("{SELECT_AFTER} and transaction_id < (select events_horizon()){ORDERED}")
});
static READ_COMMITTED: std::sync::LazyLock<String> =
    std::sync::LazyLock::new(|| format!("{SELECT_AFTER}{ORDERED}"));

async fn read(
    conn: &mut PgConnection,
    sql: &'static str,
    after: GlobalCursor,
    limit: i64,
    aggregate_types: Option<&[&str]>,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    sqlx::query_as(sql)
        .bind(after.transaction_id)
        .bind(after.position)
        .bind(limit)
        .bind(aggregate_types)
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
