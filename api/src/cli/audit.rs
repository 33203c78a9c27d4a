//! `aipm audit verify` and `aipm audit anchor`: the chain check an operator or a scheduled
//! job runs (the same verification as `GET /v1/audit/verify`), and anchoring on demand.

use std::fmt::Write as _;

use projections::audit::anchor::{self, AnchorSettings, Anchored};
use projections::audit::verify::{verify as verify_chains, TenantReport};
use sqlx::PgPool;

/// Verifies `tenant`'s chain (or every tenant's), against its anchors when `anchors` is
/// given, and returns the report to print, one line per tenant with its head hash. When any
/// chain does not match, or the tenant has neither events nor entries, fails with one line
/// naming the first mismatching entry or anchor; the report then goes to standard output
/// before it.
pub async fn verify(
    pool: &PgPool,
    tenant: Option<&str>,
    anchors: Option<&AnchorSettings>,
) -> Result<String, String> {
    let report = verify_chains(pool, tenant, anchors)
        .await
        .map_err(|e| format!("cannot verify the audit log: {e}"))?;
    let mut out = String::new();
    for tenant in &report.tenants {
        let _ = writeln!(out, "{}", describe(tenant));
    }
    let _ = writeln!(out, "compared up to the audit checkpoint {}", report.checkpoint);
    if let Some(name) = tenant {
        if report
            .tenants
            .iter()
            .all(|t| t.entries == 0 && t.stored_head.is_none() && t.pending_events == 0)
        {
            return Err(format!("tenant {name:?} has no events and no audit entries"));
        }
    }
    let broken: Vec<&TenantReport> = report.tenants.iter().filter(|t| !t.ok).collect();
    let Some(first) = broken.first() else {
        return Ok(out);
    };
    print!("{out}");
    let others = match broken.len() - 1 {
        0 => String::new(),
        n => format!(" (and {n} more tenant(s))"),
    };
    let problem = match &first.first_mismatch {
        Some(m) => format!(
            "does not match the event log at entry #{} ({}): {}",
            m.sequence,
            m.kind.as_str(),
            m.detail
        ),
        None => format!("does not match its anchors: {}", anchor_problem(first)),
    };
    Err(format!(
        "the audit log of tenant {} {problem}{others}",
        first.tenant
    ))
}

fn anchor_problem(tenant: &TenantReport) -> String {
    let Some(anchors) = &tenant.anchors else {
        return String::new();
    };
    match (&anchors.error, &anchors.first_mismatch) {
        (Some(error), _) => format!("the anchors could not be read: {error}"),
        (None, Some(mismatch)) => mismatch.detail.clone(),
        (None, None) => String::new(),
    }
}

fn describe(tenant: &TenantReport) -> String {
    let head = format!("head #{} {}", tenant.head.sequence, tenant.head.hash);
    let pending = match tenant.pending_events {
        0 => String::new(),
        n => format!(" ({n} newer events not audited yet)"),
    };
    let anchors = match &tenant.anchors {
        None => String::new(),
        Some(report) if report.error.is_none() && report.first_mismatch.is_none() => {
            format!(", {} anchor(s) check", report.checked)
        }
        Some(_) => format!("; ANCHORS: {}", anchor_problem(tenant)),
    };
    match &tenant.first_mismatch {
        None if tenant.ok => format!(
            "{}: ok, {} entries, {head}{pending}{anchors}",
            tenant.tenant, tenant.entries
        ),
        None => format!(
            "{}: {} entries, {head}{pending}{anchors}",
            tenant.tenant, tenant.entries
        ),
        Some(m) => format!(
            "{}: MISMATCH at entry #{}: {}: {}; log {head}{pending}{anchors}",
            tenant.tenant,
            m.sequence,
            m.kind.as_str(),
            m.detail
        ),
    }
}

/// Anchors `tenant`'s chain (or every tenant's) now; returns one line per tenant.
pub async fn anchor(pool: &PgPool, anchors: &AnchorSettings, tenant: Option<&str>) -> Result<String, String> {
    let done = anchor::anchor(pool, anchors, tenant)
        .await
        .map_err(|e| format!("cannot anchor the audit log: {e}"))?;
    let mut out = String::new();
    for anchored in done {
        let _ = match anchored {
            Anchored::Published(a) => writeln!(
                out,
                "{}: anchored entry #{} {} in stream {}",
                a.tenant, a.entries, a.head_hash, anchors.stream
            ),
            Anchored::Unchanged(a) => writeln!(
                out,
                "{}: unchanged since the anchor of {} (entry #{})",
                a.tenant, a.anchored_at, a.entries
            ),
        };
    }
    Ok(out)
}
