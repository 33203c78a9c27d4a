//! Verifying the audit log: the chain is recomputed from the event log and compared with
//! `audit_entry`, entry by entry, reporting each tenant's first entry that does not match,
//! and with the tenant's anchors (see [`super::anchor`]), which catch a history rewritten in
//! both tables alike.
//!
//! The event log is read in the global order in batches, up to the audit projection's
//! checkpoint (later events are not audited yet; they are counted as pending). Everything
//! is read in one repeatable-read snapshot, so a running server's appends cannot make the
//! two sides disagree. Memory holds one batch plus the folded state of each aggregate seen
//! (needed to recompute `changes`): it grows with the number of aggregates, not of events.

use std::collections::{BTreeMap, HashMap};

use domain::position::GlobalCursor;
use serde::Serialize;
use sqlx::{PgConnection, PgPool};

use super::anchor::{self, Anchor, AnchorSettings, TenantAnchors};
use super::{chain_event, AuditEntry, ChainHead, ChainedEntry, ENTRY_COLUMNS, NAME};
use crate::runner;
use eventlog::ProjectionError;
use eventlog::StoredEvent;

/// Events recomputed per round trip.
const VERIFY_BATCH: i64 = 5_000;

/// How an audit entry fails to match the event log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum MismatchKind {
    /// Both record the same event, but some fields differ (`fields` names them).
    ContentDiffers,
    /// The event log has an event at this place of the chain; the audit table has no entry
    /// for it (an entry was deleted, or an event was slipped into the log).
    Missing,
    /// The audit table has an entry for an event that is not in the event log (an event was
    /// deleted, or the entry forged).
    Extra,
    /// Both have the event, at different places of the chain (rows were reordered).
    OutOfOrder,
    /// The content matches, but `prev_hash` or `hash` is not what the chain gives.
    HashDiffers,
}

impl MismatchKind {
    pub fn as_str(self) -> &'static str {
        match self {
            MismatchKind::ContentDiffers => "content differs",
            MismatchKind::Missing => "missing",
            MismatchKind::Extra => "extra",
            MismatchKind::OutOfOrder => "out of order",
            MismatchKind::HashDiffers => "hash differs",
        }
    }
}

/// Which event an entry records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct EntryRef {
    /// Its place in the chain (in the audit table for `found`, recomputed for `expected`).
    pub sequence: i64,
    pub cursor: String,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub aggregate_version: i64,
    pub event_type: String,
}

impl EntryRef {
    fn of(entry: &AuditEntry) -> Self {
        Self {
            sequence: entry.sequence,
            cursor: entry.cursor.to_string(),
            aggregate_type: entry.aggregate_type.clone(),
            aggregate_id: entry.aggregate_id.clone(),
            aggregate_version: entry.aggregate_version,
            event_type: entry.event_type.clone(),
        }
    }
}

impl std::fmt::Display for EntryRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {}/{} version {} at cursor {}",
            self.event_type, self.aggregate_type, self.aggregate_id, self.aggregate_version, self.cursor
        )
    }
}

/// The first entry of a chain that does not match the event log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Mismatch {
    /// The entry's place in the tenant's chain.
    pub sequence: i64,
    pub kind: MismatchKind,
    /// For `content_differs`: the entry fields that differ.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<String>,
    /// The entry the event log gives for this place, if it has one.
    pub expected: Option<EntryRef>,
    /// The entry the audit table holds at this place, if any.
    pub found: Option<EntryRef>,
    pub detail: String,
}

/// One tenant's verification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct TenantReport {
    pub tenant: String,
    /// True when every entry matched and the audit table holds no more.
    pub ok: bool,
    /// Entries recomputed from the event log.
    pub entries: i64,
    /// The head of the chain recomputed from the event log: anchor this hash outside the
    /// database to detect a later rewrite of both tables.
    pub head: ChainHead,
    /// The last entry of the audit table.
    pub stored_head: Option<ChainHead>,
    /// Events after the audit projection's checkpoint, not audited yet.
    pub pending_events: i64,
    pub first_mismatch: Option<Mismatch>,
    /// The chain checked against its anchors; `null` when anchoring is not configured.
    pub anchors: Option<AnchorReport>,
}

/// A chain checked against its anchors.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AnchorReport {
    /// Anchors whose head the recomputed chain has, with the same hash.
    pub checked: usize,
    /// The newest anchor.
    pub last: Option<Anchor>,
    /// The first anchor the chain contradicts: history rewritten or removed before it, or an
    /// anchor that is not signed by the configured key.
    pub first_mismatch: Option<AnchorMismatch>,
    /// Why the anchors could not be read, if they could not (the chain is then not vouched for).
    pub error: Option<String>,
}

/// An anchor the recomputed chain contradicts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct AnchorMismatch {
    pub anchor: Anchor,
    /// The recomputed hash of the entry the anchor pins, if the chain still has it.
    pub recomputed_hash: Option<String>,
    pub detail: String,
}

impl AnchorReport {
    fn ok(&self) -> bool {
        self.first_mismatch.is_none() && self.error.is_none()
    }
}

/// What one tenant's chain is checked against besides the audit table.
enum AnchorCheck {
    Anchors(TenantAnchors),
    Unreadable(String),
}

/// The outcome of [`verify`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VerifyReport {
    /// The audit projection's checkpoint: the log was compared up to here.
    pub checkpoint: String,
    pub tenants: Vec<TenantReport>,
}

impl VerifyReport {
    pub fn ok(&self) -> bool {
        self.tenants.iter().all(|t| t.ok)
    }
}

struct Progress {
    head: ChainHead,
    first_mismatch: Option<Mismatch>,
    anchors: Option<AnchorCheck>,
    anchors_checked: usize,
    anchor_mismatch: Option<AnchorMismatch>,
}

impl Progress {
    fn new(anchors: Option<AnchorCheck>) -> Self {
        Self {
            head: ChainHead::genesis(),
            first_mismatch: None,
            anchors,
            anchors_checked: 0,
            anchor_mismatch: None,
        }
    }

    /// Checks the recomputed head against an anchor of the same place, if there is one.
    fn check_anchor(&mut self) {
        let Some(AnchorCheck::Anchors(anchors)) = &self.anchors else {
            return;
        };
        let Some(anchor) = anchors.by_entries.get(&self.head.sequence) else {
            return;
        };
        if anchor.head_hash == self.head.hash {
            self.anchors_checked += 1;
        } else if self.anchor_mismatch.is_none() {
            self.anchor_mismatch = Some(AnchorMismatch {
                anchor: anchor.clone(),
                recomputed_hash: Some(self.head.hash.clone()),
                detail: format!(
                    "entry {} recomputed from the event log does not have the hash anchored at {}: \
                     the history up to it was rewritten",
                    anchor.entries, anchor.anchored_at
                ),
            });
        }
    }

    /// The report once the whole chain was recomputed.
    fn anchor_report(&mut self) -> Option<AnchorReport> {
        let anchors = self.anchors.take()?;
        let anchors = match anchors {
            AnchorCheck::Unreadable(error) => {
                return Some(AnchorReport {
                    checked: 0,
                    last: None,
                    first_mismatch: None,
                    error: Some(error),
                })
            }
            AnchorCheck::Anchors(anchors) => anchors,
        };
        let beyond = anchors
            .by_entries
            .range(self.head.sequence + 1..)
            .next()
            .map(|(_, anchor)| AnchorMismatch {
                anchor: anchor.clone(),
                recomputed_hash: None,
                detail: format!(
                    "the chain recomputed from the event log has {} entries, but {} were anchored at {}: \
                     history was removed",
                    self.head.sequence, anchor.entries, anchor.anchored_at
                ),
            });
        let unsigned = anchors.unsigned.first().map(|anchor| AnchorMismatch {
            anchor: anchor.clone(),
            recomputed_hash: None,
            detail: "this anchor's signature does not check with the configured key: it was not \
                     made by this aipm, or was altered"
                .to_string(),
        });
        let mut last: Vec<&Anchor> = anchors.by_entries.values().chain(&anchors.unsigned).collect();
        last.sort_by(|a, b| a.anchored_at.cmp(&b.anchored_at));
        Some(AnchorReport {
            checked: self.anchors_checked,
            last: last.last().map(|anchor| (*anchor).clone()),
            first_mismatch: self.anchor_mismatch.take().or(beyond).or(unsigned),
            error: None,
        })
    }
}

/// Each tenant's anchors, read from the anchors' stream and checked against the key.
async fn tenant_anchors(
    pool: &PgPool,
    settings: &AnchorSettings,
    tenant: Option<&str>,
) -> Result<BTreeMap<String, AnchorCheck>, sqlx::Error> {
    let tenants: Vec<String> = match tenant {
        Some(tenant) => vec![tenant.to_string()],
        None => {
            sqlx::query_scalar(
                "select tenant_id from tenant union select distinct tenant_id from audit_entry",
            )
            .fetch_all(pool)
            .await?
        }
    };
    let mut checks = BTreeMap::new();
    for tenant in tenants {
        let check = match anchor::anchors(settings, &tenant).await {
            Ok(anchors) => AnchorCheck::Anchors(TenantAnchors::from_anchors(anchors, &settings.key)),
            Err(error) => AnchorCheck::Unreadable(error.to_string()),
        };
        checks.insert(tenant, check);
    }
    Ok(checks)
}

/// Verifies the chain of `tenant`, or of every tenant in the event log or the audit table,
/// and, with `anchors`, against the anchors of each.
pub async fn verify(
    pool: &PgPool,
    tenant: Option<&str>,
    anchors: Option<&AnchorSettings>,
) -> Result<VerifyReport, ProjectionError> {
    verify_through(pool, tenant, anchors, None).await
}

/// Verifies `tenant`'s chain as far as the event at `until` (or the audit projection's
/// checkpoint, if that is earlier): the part of the chain a report of that point shows.
/// Entries of later events are neither compared nor reported as extra, and the anchors are
/// not checked (an anchor may pin a later head).
pub async fn verify_until(
    pool: &PgPool,
    tenant: &str,
    until: GlobalCursor,
) -> Result<(TenantReport, GlobalCursor), ProjectionError> {
    let report = verify_through(pool, Some(tenant), None, Some(until)).await?;
    let checkpoint: GlobalCursor = report.checkpoint.parse().unwrap_or(GlobalCursor::START);
    let tenant_report = report
        .tenants
        .into_iter()
        .find(|report| report.tenant == tenant)
        .unwrap_or_else(|| TenantReport {
            tenant: tenant.to_string(),
            ok: true,
            entries: 0,
            head: ChainHead::genesis(),
            stored_head: None,
            pending_events: 0,
            first_mismatch: None,
            anchors: None,
        });
    Ok((tenant_report, checkpoint.min(until)))
}

async fn verify_through(
    pool: &PgPool,
    tenant: Option<&str>,
    anchors: Option<&AnchorSettings>,
    until: Option<GlobalCursor>,
) -> Result<VerifyReport, ProjectionError> {
    // Anchors first: each pins an entry the audit table held when it was made, which the
    // snapshot below, taken later, holds too.
    let mut anchors = match anchors {
        Some(settings) => tenant_anchors(pool, settings, tenant).await?,
        None => BTreeMap::new(),
    };
    let mut tx = eventlog::begin(pool).await?;
    sqlx::query("set transaction isolation level repeatable read, read only")
        .execute(&mut *tx)
        .await?;
    let audited = runner::checkpoint(&mut tx, NAME).await?;
    // The end of what is compared: the audited log, or the part of it up to `until`.
    let checkpoint = until.map_or(audited, |until| until.min(audited));
    let mut progress: BTreeMap<String, Progress> = BTreeMap::new();
    if let Some(tenant) = tenant {
        progress.insert(tenant.to_string(), Progress::new(anchors.remove(tenant)));
    }
    let mut states: HashMap<(String, String), Option<String>> = HashMap::new();
    let mut after = GlobalCursor::START;
    loop {
        let events = read_events(&mut tx, after, checkpoint, tenant).await?;
        let Some(last) = events.last() else {
            break;
        };
        after = last.cursor;
        let mut recomputed = Vec::with_capacity(events.len());
        for event in &events {
            let chain = progress
                .entry(event.tenant_id.clone())
                .or_insert_with(|| Progress::new(anchors.remove(&event.tenant_id)));
            let state = states
                .entry((event.aggregate_type.clone(), event.aggregate_id.clone()))
                .or_default();
            let chained = chain_event(event, &mut chain.head, state)
                .map_err(|e| ProjectionError::undecodable(event, e))?;
            chain.check_anchor();
            if chain.first_mismatch.is_none() {
                recomputed.push(chained);
            }
        }
        let stored = stored_entries(&mut tx, &recomputed).await?;
        for expected in &recomputed {
            let Some(chain) = progress.get_mut(&expected.entry.tenant) else {
                continue;
            };
            if chain.first_mismatch.is_some() {
                continue;
            }
            let key = (expected.entry.tenant.clone(), expected.entry.sequence);
            chain.first_mismatch = compare(&mut tx, checkpoint, expected, stored.get(&key)).await?;
        }
    }

    if tenant.is_none() {
        let audited: Vec<String> = sqlx::query_scalar("select tenant_id from audit_entry group by tenant_id")
            .fetch_all(&mut *tx)
            .await?;
        for tenant in audited {
            let tenant_anchors = anchors.remove(&tenant);
            progress
                .entry(tenant)
                .or_insert_with(|| Progress::new(tenant_anchors));
        }
    }
    let pending = pending_events(&mut tx, checkpoint, until, tenant).await?;
    let mut tenants = Vec::with_capacity(progress.len());
    for (tenant, mut chain) in progress {
        let stored_head = stored_head(&mut tx, &tenant).await?;
        let anchors = chain.anchor_report();
        let first_mismatch = match chain.first_mismatch {
            Some(mismatch) => Some(mismatch),
            None => entry_beyond(&mut tx, &tenant, chain.head.sequence, until).await?,
        };
        tenants.push(TenantReport {
            ok: first_mismatch.is_none() && anchors.as_ref().is_none_or(AnchorReport::ok),
            entries: chain.head.sequence,
            head: chain.head,
            stored_head,
            pending_events: pending.get(&tenant).copied().unwrap_or(0),
            first_mismatch,
            anchors,
            tenant,
        });
    }
    tx.rollback().await?;
    Ok(VerifyReport {
        checkpoint: checkpoint.to_string(),
        tenants,
    })
}

/// Up to a batch of events after `after`, up to `until`, in the global order.
async fn read_events(
    conn: &mut PgConnection,
    after: GlobalCursor,
    until: GlobalCursor,
    tenant: Option<&str>,
) -> Result<Vec<StoredEvent>, sqlx::Error> {
    // Ordered by the qualified columns so that PostgreSQL reads the global-order index.
    let sql =
        format!(
        "select aggregate_type, aggregate_id, sequence, event_type, event_version, payload::text as payload,
                metadata::text as metadata, tenant_id, transaction_id::text::bigint as transaction_id,
                position, recorded_at
         from events
         where (transaction_id, position) > ($1::bigint::text::xid8, $2)
           and (transaction_id, position) <= ($3::bigint::text::xid8, $4)
           {}
         order by events.transaction_id, events.position
         limit $5",
        if tenant.is_some() { "and tenant_id = $6" } else { "" }
    );
    let mut query = sqlx::query_as(&sql)
        .bind(after.transaction_id)
        .bind(after.position)
        .bind(until.transaction_id)
        .bind(until.position)
        .bind(VERIFY_BATCH);
    if let Some(tenant) = tenant {
        query = query.bind(tenant);
    }
    query.fetch_all(conn).await
}

/// The audit table's entries at the places `recomputed` fills, by (tenant, sequence).
async fn stored_entries(
    conn: &mut PgConnection,
    recomputed: &[ChainedEntry],
) -> Result<HashMap<(String, i64), ChainedEntry>, sqlx::Error> {
    if recomputed.is_empty() {
        return Ok(HashMap::new());
    }
    let tenants: Vec<&str> = recomputed.iter().map(|c| c.entry.tenant.as_str()).collect();
    let sequences: Vec<i64> = recomputed.iter().map(|c| c.entry.sequence).collect();
    let sql = format!(
        "select {ENTRY_COLUMNS}
         from unnest($1::text[], $2::bigint[]) as wanted(tenant_id, chain_seq)
         join audit_entry using (tenant_id, chain_seq)"
    );
    let rows: Vec<ChainedEntry> = sqlx::query_as(&sql)
        .bind(&tenants)
        .bind(&sequences)
        .fetch_all(conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|row| ((row.entry.tenant.clone(), row.entry.sequence), row))
        .collect())
}

/// How the stored entry at `expected`'s place differs from it, if it does.
async fn compare(
    conn: &mut PgConnection,
    checkpoint: GlobalCursor,
    expected: &ChainedEntry,
    found: Option<&ChainedEntry>,
) -> Result<Option<Mismatch>, sqlx::Error> {
    let sequence = expected.entry.sequence;
    let expected_ref = EntryRef::of(&expected.entry);
    let mismatch = |kind, fields, found: Option<EntryRef>, detail| Mismatch {
        sequence,
        kind,
        fields,
        expected: Some(expected_ref.clone()),
        found,
        detail,
    };
    let Some(found) = found else {
        return Ok(Some(mismatch(
            MismatchKind::Missing,
            Vec::new(),
            None,
            format!("the audit table has no entry #{sequence}; the event log has {expected_ref}"),
        )));
    };
    let found_ref = EntryRef::of(&found.entry);
    if found.entry.identity() != expected.entry.identity() {
        let (kind, detail) = if !in_event_log(conn, checkpoint, &found.entry).await? {
            (
                MismatchKind::Extra,
                format!(
                    "entry #{sequence} of the audit table records {found_ref}, which is not in the event log"
                ),
            )
        } else if let Some(place) = audited_at(conn, &expected.entry).await? {
            (
                MismatchKind::OutOfOrder,
                format!(
                    "the event log's entry #{sequence} is {expected_ref}, which is entry #{place} of the audit table"
                ),
            )
        } else {
            (
                MismatchKind::Missing,
                format!("the event log's entry #{sequence} is {expected_ref}, which the audit table does not have"),
            )
        };
        return Ok(Some(mismatch(kind, Vec::new(), Some(found_ref), detail)));
    }
    let expected_fields = expected.entry.to_json();
    let found_fields = found.entry.to_json();
    let differing: Vec<String> = expected_fields
        .iter()
        .filter(|(name, value)| {
            found_fields.get(*name).map(crate::canonical::to_string)
                != Some(crate::canonical::to_string(value))
        })
        .map(|(name, _)| name.clone())
        .collect();
    if !differing.is_empty() {
        let detail = format!(
            "entry #{sequence} ({expected_ref}) differs from the event log in {}",
            differing.join(", ")
        );
        return Ok(Some(mismatch(
            MismatchKind::ContentDiffers,
            differing,
            Some(found_ref),
            detail,
        )));
    }
    if found.prev_hash != expected.prev_hash || found.hash != expected.hash {
        let detail = format!(
            "entry #{sequence} ({expected_ref}) has hash {} after {}; the chain gives {} after {}",
            found.hash, found.prev_hash, expected.hash, expected.prev_hash
        );
        return Ok(Some(mismatch(
            MismatchKind::HashDiffers,
            Vec::new(),
            Some(found_ref),
            detail,
        )));
    }
    Ok(None)
}

/// Whether the event `entry` records is in the verified part of the tenant's log.
async fn in_event_log(
    conn: &mut PgConnection,
    checkpoint: GlobalCursor,
    entry: &AuditEntry,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar(
        "select exists (select 1 from events
                        where aggregate_type = $1 and aggregate_id = $2 and sequence = $3 and tenant_id = $4
                          and (transaction_id, position) <= ($5::bigint::text::xid8, $6))",
    )
    .bind(&entry.aggregate_type)
    .bind(&entry.aggregate_id)
    .bind(entry.aggregate_version)
    .bind(&entry.tenant)
    .bind(checkpoint.transaction_id)
    .bind(checkpoint.position)
    .fetch_one(conn)
    .await
}

/// Where the audit table holds the event `entry` records, if anywhere.
async fn audited_at(conn: &mut PgConnection, entry: &AuditEntry) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "select chain_seq from audit_entry
         where tenant_id = $1 and aggregate_type = $2 and aggregate_id = $3 and aggregate_version = $4
         order by chain_seq limit 1",
    )
    .bind(&entry.tenant)
    .bind(&entry.aggregate_type)
    .bind(&entry.aggregate_id)
    .bind(entry.aggregate_version)
    .fetch_optional(conn)
    .await
}

/// The first stored entry past the end of the recomputed chain: one the log does not have.
/// With `until`, only entries of events up to it count (later ones are later events).
async fn entry_beyond(
    conn: &mut PgConnection,
    tenant: &str,
    last: i64,
    until: Option<GlobalCursor>,
) -> Result<Option<Mismatch>, sqlx::Error> {
    let sql = format!(
        "select {ENTRY_COLUMNS} from audit_entry where tenant_id = $1 and chain_seq > $2
           and ($3::bigint is null or (transaction_id, position) <= ($3, $4))
         order by chain_seq limit 1"
    );
    let extra: Option<ChainedEntry> = sqlx::query_as(&sql)
        .bind(tenant)
        .bind(last)
        .bind(until.map(|until| until.transaction_id))
        .bind(until.map(|until| until.position))
        .fetch_optional(conn)
        .await?;
    Ok(extra.map(|extra| {
        let found = EntryRef::of(&extra.entry);
        Mismatch {
            sequence: extra.entry.sequence,
            kind: MismatchKind::Extra,
            fields: Vec::new(),
            expected: None,
            detail: format!(
                "the event log gives {last} entries, but the audit table also has entry #{} ({found})",
                extra.entry.sequence
            ),
            found: Some(found),
        }
    }))
}

async fn stored_head(conn: &mut PgConnection, tenant: &str) -> Result<Option<ChainHead>, sqlx::Error> {
    let row: Option<(i64, String)> = sqlx::query_as(
        "select chain_seq, hash from audit_entry where tenant_id = $1 order by chain_seq desc limit 1",
    )
    .bind(tenant)
    .fetch_optional(conn)
    .await?;
    Ok(row.map(|(sequence, hash)| ChainHead { sequence, hash }))
}

/// Events after the checkpoint (and up to `until`, when given), per tenant.
async fn pending_events(
    conn: &mut PgConnection,
    checkpoint: GlobalCursor,
    until: Option<GlobalCursor>,
    tenant: Option<&str>,
) -> Result<HashMap<String, i64>, sqlx::Error> {
    let rows: Vec<(String, i64)> = sqlx::query_as(
        "select tenant_id, count(*) from events
         where (transaction_id, position) > ($1::bigint::text::xid8, $2)
           and ($3::text is null or tenant_id = $3)
           and ($4::bigint is null or (transaction_id, position) <= ($4::bigint::text::xid8, $5))
         group by tenant_id",
    )
    .bind(checkpoint.transaction_id)
    .bind(checkpoint.position)
    .bind(tenant)
    .bind(until.map(|until| until.transaction_id))
    .bind(until.map(|until| until.position))
    .fetch_all(conn)
    .await?;
    Ok(rows.into_iter().collect())
}
