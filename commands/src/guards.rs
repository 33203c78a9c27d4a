//! The write side's guard rows — unique names (`unique_claim`), the aggregates others may
//! refer to (`referable`) and the references (`reference`) — recomputed from the log.
//!
//! Commands write these rows in the statement that appends their events (`append`), from
//! `Governed::claims`. A log restored into an empty database has none: [`recompute`] folds
//! every aggregate's events in order, asking each event's claims of the state before it,
//! exactly as the commands did, and writes the rows that remain.

use std::collections::BTreeSet;

use domain::access::{ApiKey, Tenant};
use domain::approval::{ChangeRequest, Protection};
use domain::audit::ReadRecord;
use domain::budget::Budget;
use domain::bulk::BulkJob;
use domain::category::PromptCategory;
use domain::config::ConfigEntry;
use domain::conversation::Conversation;
use domain::experiment::Experiment;
use domain::export::ExportJob;
use domain::flag::Flag;
use domain::governed::Governed;
use domain::health::ProviderHealth;
use domain::incident::Incident;
use domain::model::Model;
use domain::prompt::Prompt;
use domain::provider::Provider;
use futures::TryStreamExt;
use sqlx::PgConnection;

/// How many rows of each kind [`recompute`] wrote.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct GuardRows {
    pub names: usize,
    pub referable: usize,
    pub references: usize,
}

/// A recomputation that could not finish.
#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error("event {sequence} of {aggregate_type} {aggregate_id} is not one of its events: {cause}")]
    Undecodable {
        aggregate_type: String,
        aggregate_id: String,
        sequence: i64,
        cause: String,
    },
}

/// Rows as columns, ready for `unnest`.
#[derive(Default)]
struct Columns {
    tenants: Vec<String>,
    scopes: Vec<&'static str>,
    keys: Vec<String>,
    owners: Vec<String>,
}

impl Columns {
    fn push(&mut self, tenant: &str, scope: &'static str, key: &str, owner: &str) {
        self.tenants.push(tenant.to_string());
        self.scopes.push(scope);
        self.keys.push(key.to_string());
        self.owners.push(owner.to_string());
    }

    /// Inserts the rows into `table` (its column list given with it); `with_owner` false
    /// leaves the owner out, for a table of targets.
    async fn insert_into(
        &self,
        conn: &mut PgConnection,
        table: &str,
        with_owner: bool,
    ) -> Result<(), sqlx::Error> {
        let owner = if with_owner { ", owner" } else { "" };
        sqlx::query(&format!(
            "insert into {table} select tenant, scope, key{owner}
             from unnest($1::text[], $2::text[], $3::text[], $4::text[]) as r(tenant, scope, key, owner)"
        ))
        .bind(&self.tenants)
        .bind(&self.scopes)
        .bind(&self.keys)
        .bind(&self.owners)
        .execute(conn)
        .await?;
        Ok(())
    }
}

#[derive(Default)]
struct Guards {
    names: Columns,
    referable: Columns,
    references: Columns,
}

/// What one aggregate holds after its last event.
#[derive(Default)]
struct Held {
    names: BTreeSet<(&'static str, String)>,
    registered: BTreeSet<&'static str>,
    references: BTreeSet<(&'static str, String)>,
}

impl Held {
    fn take(&mut self, claims: domain::governed::Claims) {
        for released in claims.released {
            self.names.remove(&released);
        }
        self.names.extend(claims.claimed);
        for scope in claims.unregistered {
            self.registered.remove(scope);
        }
        self.registered.extend(claims.registered);
        for unreferenced in claims.unreferenced {
            self.references.remove(&unreferenced);
        }
        self.references.extend(claims.referenced);
    }

    fn write(self, guards: &mut Guards, tenant: &str, owner: &str) {
        for (scope, key) in &self.names {
            guards.names.push(tenant, scope, key, owner);
        }
        for scope in self.registered {
            guards.referable.push(tenant, scope, owner, owner);
        }
        for (scope, target) in &self.references {
            guards.references.push(tenant, scope, target, owner);
        }
    }
}

/// Replaces the guard rows with those the log gives. Run it in the transaction that
/// restores the log, before anything else writes.
pub async fn recompute(conn: &mut PgConnection) -> Result<GuardRows, GuardError> {
    let mut guards = Guards::default();
    fold::<Tenant>(conn, &mut guards).await?;
    fold::<ApiKey>(conn, &mut guards).await?;
    fold::<ReadRecord>(conn, &mut guards).await?;
    fold::<PromptCategory>(conn, &mut guards).await?;
    fold::<Prompt>(conn, &mut guards).await?;
    fold::<Provider>(conn, &mut guards).await?;
    fold::<Model>(conn, &mut guards).await?;
    fold::<ConfigEntry>(conn, &mut guards).await?;
    fold::<Flag>(conn, &mut guards).await?;
    fold::<Protection>(conn, &mut guards).await?;
    fold::<ChangeRequest>(conn, &mut guards).await?;
    fold::<Budget>(conn, &mut guards).await?;
    fold::<BulkJob>(conn, &mut guards).await?;
    fold::<ProviderHealth>(conn, &mut guards).await?;
    fold::<Incident>(conn, &mut guards).await?;
    fold::<Experiment>(conn, &mut guards).await?;
    fold::<ExportJob>(conn, &mut guards).await?;
    fold::<Conversation>(conn, &mut guards).await?;
    for table in ["reference", "referable", "unique_claim"] {
        sqlx::query(&format!("delete from {table}"))
            .execute(&mut *conn)
            .await?;
    }
    let rows = GuardRows {
        names: guards.names.keys.len(),
        referable: guards.referable.keys.len(),
        references: guards.references.keys.len(),
    };
    let Guards {
        names,
        referable,
        references,
    } = guards;
    names
        .insert_into(conn, "unique_claim (tenant_id, scope, claim_key, owner_id)", true)
        .await?;
    referable
        .insert_into(conn, "referable (tenant_id, scope, target_id)", false)
        .await?;
    references
        .insert_into(conn, "reference (tenant_id, scope, target_id, owner_id)", true)
        .await?;
    Ok(rows)
}

/// Folds every aggregate of type `A`, one at a time, in sequence order.
async fn fold<A: Governed>(conn: &mut PgConnection, guards: &mut Guards) -> Result<(), GuardError> {
    let mut rows = sqlx::query_as::<_, (String, i64, String, String, String, String)>(
        "select aggregate_id, sequence, tenant_id, event_type, event_version, payload::text from events
         where aggregate_type = $1 order by aggregate_id, sequence",
    )
    .bind(A::TYPE)
    .fetch(&mut *conn);
    let mut current: Option<(String, String, A, Held)> = None;
    while let Some((aggregate_id, sequence, tenant, event_type, event_version, payload)) =
        rows.try_next().await?
    {
        let schema = domain::upcast::Schema {
            aggregate_type: A::TYPE,
            event_type: &event_type,
            event_version: &event_version,
        };
        let event: A::Event =
            domain::upcast::decode(schema, &payload).map_err(|e| GuardError::Undecodable {
                aggregate_type: A::TYPE.to_string(),
                aggregate_id: aggregate_id.clone(),
                sequence,
                cause: e.to_string(),
            })?;
        if current.as_ref().is_none_or(|(id, ..)| *id != aggregate_id) {
            if let Some((id, tenant, _, held)) = current.take() {
                held.write(guards, &tenant, &id);
            }
            current = Some((aggregate_id, tenant, A::default(), Held::default()));
        }
        if let Some((_, _, aggregate, held)) = current.as_mut() {
            held.take(aggregate.claims(std::slice::from_ref(&event)));
            aggregate.apply(event);
        }
    }
    if let Some((id, tenant, _, held)) = current.take() {
        held.write(guards, &tenant, &id);
    }
    Ok(())
}
