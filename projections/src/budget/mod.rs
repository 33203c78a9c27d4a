//! `budget`: budget definitions as the API reads them. This module applies events to the
//! table; [`queries`] reads it.
//!
//! Applied inline, in the transaction that appends the events.

pub mod live;
pub mod queries;

use async_trait::async_trait;
use cqrs_es::Aggregate;
use domain::budget::{Budget, BudgetEvent, BudgetTerms};
use eventlog::{Projection, ProjectionError, StoredEvent};
use sqlx::PgConnection;
use uuid::Uuid;

pub struct BudgetProjection;

#[async_trait]
impl Projection for BudgetProjection {
    fn name(&self) -> &'static str {
        "budget"
    }

    fn tables(&self) -> &'static [&'static str] {
        &["budget"]
    }

    fn aggregate_types(&self) -> Option<&'static [&'static str]> {
        Some(&[Budget::TYPE])
    }

    fn metadata_keys(&self) -> Option<&'static [&'static str]> {
        Some(&[])
    }

    fn inline(&self) -> bool {
        true
    }

    async fn apply(&self, tx: &mut PgConnection, events: &[StoredEvent]) -> Result<(), ProjectionError> {
        for event in events {
            if event.aggregate_type != Budget::TYPE {
                continue;
            }
            let Ok(id) = event.aggregate_id.parse::<Uuid>() else {
                continue;
            };
            let payload = event
                .decode::<BudgetEvent>()
                .map_err(|e| ProjectionError::undecodable(event, e))?;
            apply(tx, event, id, payload).await?;
        }
        Ok(())
    }
}

async fn apply(
    tx: &mut PgConnection,
    event: &StoredEvent,
    id: Uuid,
    payload: BudgetEvent,
) -> Result<(), sqlx::Error> {
    let thresholds =
        |terms: &BudgetTerms| -> Vec<i32> { terms.thresholds.iter().map(|t| *t as i32).collect() };
    match payload {
        BudgetEvent::BudgetDefined {
            tenant,
            name,
            scope,
            period,
            terms,
        } => {
            sqlx::query(
                "insert into budget (budget_id, tenant_id, name, scope_kind, scope_id, period, amount, currency,
                                     thresholds, enforcement, version, created_at, updated_at)
                 values ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $12)",
            )
            .bind(id)
            .bind(tenant)
            .bind(name)
            .bind(scope.kind.as_str())
            .bind(scope.id)
            .bind(period.as_str())
            .bind(terms.amount.value())
            .bind(terms.currency.as_ref())
            .bind(thresholds(&terms))
            .bind(terms.enforcement.as_str())
            .bind(event.sequence)
            .bind(event.recorded_at)
            .execute(&mut *tx)
            .await?;
        }
        BudgetEvent::BudgetChanged { name, terms, .. } => {
            sqlx::query(
                "update budget set name = $2, amount = $3, currency = $4, thresholds = $5, enforcement = $6,
                                   version = $7, updated_at = $8
                 where budget_id = $1",
            )
            .bind(id)
            .bind(name)
            .bind(terms.amount.value())
            .bind(terms.currency.as_ref())
            .bind(thresholds(&terms))
            .bind(terms.enforcement.as_str())
            .bind(event.sequence)
            .bind(event.recorded_at)
            .execute(&mut *tx)
            .await?;
        }
        BudgetEvent::BudgetDeleted => {
            sqlx::query("delete from budget where budget_id = $1")
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        BudgetEvent::BudgetPeriodStarted { period_start, .. } => {
            sqlx::query("update budget set current_period = $2, version = $3 where budget_id = $1")
                .bind(id)
                .bind(period_start)
                .bind(event.sequence)
                .execute(&mut *tx)
                .await?;
        }
        BudgetEvent::BudgetThresholdCrossed {
            period_start,
            threshold,
            ..
        } => {
            sqlx::query(
                "update budget set
                     crossed = case when crossed_period = $2 then crossed || $3 else array[$3] end,
                     crossed_period = $2,
                     version = $4
                 where budget_id = $1",
            )
            .bind(id)
            .bind(period_start)
            .bind(threshold as i32)
            .bind(event.sequence)
            .execute(&mut *tx)
            .await?;
        }
    }
    Ok(())
}
