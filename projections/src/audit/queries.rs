//! Reads of `audit_entry`: a tenant's entries in chain order, filtered, as a page or as a
//! stream of the whole range.

use chrono::{DateTime, Utc};
use futures::StreamExt;
use sqlx::{PgPool, Postgres, QueryBuilder};
use tokio::sync::mpsc;

use super::{ChainedEntry, ENTRY_COLUMNS};
use crate::page::Page;

/// Rows a stream of entries reads ahead of its consumer: a slow consumer holds back the
/// database read instead of filling memory.
const ROWS_AHEAD: usize = 256;

/// Which entries to read. Only the filters given become conditions, so that PostgreSQL
/// plans each combination with its index.
#[derive(Debug, Clone, Default)]
pub struct AuditFilter {
    /// An actor's key id or name.
    pub actor: Option<String>,
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
    pub event_type: Option<String>,
    /// Recorded at or after.
    pub from: Option<DateTime<Utc>>,
    /// Recorded before.
    pub to: Option<DateTime<Utc>>,
    pub request_id: Option<String>,
    /// The causation of the entries' events (`metadata.causation_id`): a bulk job's id.
    pub causation: Option<String>,
    /// Entries after this place in the chain.
    pub after: Option<i64>,
}

impl AuditFilter {
    fn query(&self, tenant: &str, limit: Option<i64>) -> QueryBuilder<'static, Postgres> {
        let mut query = QueryBuilder::new(format!(
            "select {ENTRY_COLUMNS} from audit_entry where tenant_id = "
        ));
        query.push_bind(tenant.to_string());
        if let Some(actor) = &self.actor {
            query.push(" and (actor_key_id = ");
            query.push_bind(actor.clone());
            query.push(" or actor_name = ");
            query.push_bind(actor.clone());
            query.push(")");
        }
        for (column, value) in [
            ("aggregate_type", &self.aggregate_type),
            ("aggregate_id", &self.aggregate_id),
            ("event_type", &self.event_type),
            ("request_id", &self.request_id),
        ] {
            if let Some(value) = value {
                query.push(format!(" and {column} = "));
                query.push_bind(value.clone());
            }
        }
        if let Some(causation) = &self.causation {
            query.push(" and metadata ->> 'causation_id' = ");
            query.push_bind(causation.clone());
        }
        if let Some(from) = self.from {
            query.push(" and recorded_at >= ");
            query.push_bind(from);
        }
        if let Some(to) = self.to {
            query.push(" and recorded_at < ");
            query.push_bind(to);
        }
        if let Some(after) = self.after {
            query.push(" and chain_seq > ");
            query.push_bind(after);
        }
        query.push(" order by chain_seq");
        if let Some(limit) = limit {
            query.push(" limit ");
            query.push_bind(limit);
        }
        query
    }
}

/// A page of `tenant`'s entries matching `filter`, in chain order.
pub async fn page(
    pool: &PgPool,
    tenant: &str,
    filter: &AuditFilter,
    limit: i64,
) -> sqlx::Result<Page<ChainedEntry, i64>> {
    let rows = filter
        .query(tenant, Some(Page::<ChainedEntry, i64>::fetch_size(limit)))
        .build_query_as()
        .fetch_all(pool)
        .await?;
    Ok(Page::from_rows(rows, limit, |e: &ChainedEntry| e.entry.sequence))
}

/// Every entry of `tenant` matching `filter` (at most `limit`), in chain order, read in a
/// task of its own as the receiver takes them. A database failure is the last item.
pub fn stream(
    pool: PgPool,
    tenant: &str,
    filter: &AuditFilter,
    limit: Option<i64>,
) -> mpsc::Receiver<sqlx::Result<ChainedEntry>> {
    let mut query = filter.query(tenant, limit);
    let (rows_out, rows_in) = mpsc::channel(ROWS_AHEAD);
    tokio::spawn(async move {
        let mut rows = query.build_query_as::<ChainedEntry>().fetch(&pool);
        while let Some(row) = rows.next().await {
            let failed = row.is_err();
            if rows_out.send(row).await.is_err() || failed {
                return; // the reader went away, or this was the failure
            }
        }
    });
    rows_in
}
