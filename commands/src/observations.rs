//! Writing experiment observations: telemetry, not events, like usage records. A request's
//! observations go in one statement.

use domain::experiment::Observation;
use sqlx::PgPool;
use uuid::Uuid;

/// Stores `observations` of `tenant`'s experiment `experiment`, sent with the key `key_id`.
pub async fn store(
    pool: &PgPool,
    tenant: &str,
    experiment: Uuid,
    key_id: Uuid,
    observations: &[Observation],
) -> sqlx::Result<u64> {
    let (mut subjects, mut variants, mut metrics, mut values, mut times) =
        (vec![], vec![], vec![], vec![], vec![]);
    for observation in observations {
        subjects.push(observation.subject.as_str());
        variants.push(observation.variant.as_str());
        metrics.push(observation.metric.as_str());
        values.push(observation.value);
        times.push(observation.at);
    }
    let stored = sqlx::query(
        "insert into experiment_observation (tenant_id, experiment_id, key_id, subject, variant, metric, value,
                                             observed_at)
         select $1, $2, $3, * from unnest($4::text[], $5::text[], $6::text[], $7::float8[], $8::timestamptz[])",
    )
    .bind(tenant)
    .bind(experiment)
    .bind(key_id)
    .bind(&subjects)
    .bind(&variants)
    .bind(&metrics)
    .bind(&values)
    .bind(&times)
    .execute(pool)
    .await?;
    Ok(stored.rows_affected())
}
