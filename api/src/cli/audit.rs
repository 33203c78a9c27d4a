//! `aipm audit verify`: the chain check an operator or a scheduled job runs, with the same
//! verification as `GET /v1/audit/verify`.

use std::fmt::Write as _;

use projections::audit::verify::{verify as verify_chains, TenantReport};
use sqlx::PgPool;

/// Verifies `tenant`'s chain (or every tenant's) and returns the report to print, one line
/// per tenant with its head hash. When any chain does not match, or the tenant has neither
/// events nor entries, fails with one line naming the first mismatching entry; the report
/// then goes to standard output before it.
pub async fn verify(pool: &PgPool, tenant: Option<&str>) -> Result<String, String> {
    let report = verify_chains(pool, tenant)
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
    let mismatch = first
        .first_mismatch
        .as_ref()
        .map(|m| format!("entry #{} ({}): {}", m.sequence, m.kind.as_str(), m.detail))
        .unwrap_or_default();
    let others = match broken.len() - 1 {
        0 => String::new(),
        n => format!(" (and {n} more tenant(s))"),
    };
    Err(format!(
        "the audit log of tenant {} does not match the event log at {mismatch}{others}",
        first.tenant
    ))
}

fn describe(tenant: &TenantReport) -> String {
    let head = format!("head #{} {}", tenant.head.sequence, tenant.head.hash);
    let pending = match tenant.pending_events {
        0 => String::new(),
        n => format!(" ({n} newer events not audited yet)"),
    };
    match &tenant.first_mismatch {
        None => format!(
            "{}: ok, {} entries, {head}{pending}",
            tenant.tenant, tenant.entries
        ),
        Some(m) => format!(
            "{}: MISMATCH at entry #{}: {}: {}; log {head}{pending}",
            tenant.tenant,
            m.sequence,
            m.kind.as_str(),
            m.detail
        ),
    }
}
