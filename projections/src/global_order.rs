//! Reading the event log in its one global order.
//!
//! Events are ordered by `(transaction_id, position)` and a reader only takes events of
//! transactions older than the oldest transaction still running
//! (`pg_snapshot_xmin(pg_current_snapshot())`). Every such transaction has committed or
//! rolled back, so nothing can later appear before the reader's cursor: no event that
//! commits late is ever skipped, and writers never wait for readers or each other.

use domain::position::GlobalCursor;
use sqlx::PgConnection;

use crate::event::StoredEvent;

/// The columns of [`StoredEvent`], for every query that reads events.
pub const EVENT_COLUMNS: &str =
    "aggregate_type, aggregate_id, sequence, event_type, event_version, payload, \
     metadata, tenant_id, transaction_id::text::bigint as transaction_id, position, recorded_at";

/// Up to `limit` committed events after `after`, in global order.
pub async fn read_after(
    conn: &mut PgConnection,
    after: GlobalCursor,
    limit: i64,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    let sql = format!(
        "select {EVENT_COLUMNS} from events
         where (transaction_id, position) > ($1::bigint::text::xid8, $2)
           and transaction_id < pg_snapshot_xmin(pg_current_snapshot())
         order by transaction_id, position
         limit $3"
    );
    sqlx::query_as(&sql)
        .bind(after.transaction_id)
        .bind(after.position)
        .bind(limit)
        .fetch_all(conn)
        .await
}
