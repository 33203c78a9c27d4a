//! Pricing usage records again after a model's prices change: a period corrected, set in
//! the past, or withdrawn. Runs inside the transaction that records the price change (the
//! registry projection calls it), so spend and the price it follows never disagree: each
//! record from the change's start on is priced with the periods as they now are; one whose
//! cost changes keeps its first cost, and its roll-up row moves by the difference.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use domain::model::PricePeriod;
use domain::usage::{cost_of_tokens, price_at};
use rust_decimal::Decimal;
use sqlx::PgConnection;
use uuid::Uuid;

/// What a roll-up row gains (or, negative, loses).
#[derive(Default)]
struct RollupDelta {
    calls: i64,
    input_tokens: i64,
    output_tokens: i64,
    cached_input_tokens: i64,
    cost: Decimal,
    uncosted: i64,
    original_cost: Decimal,
    recosted: i64,
    errors: i64,
    /// The latest call the row gains.
    last_used: Option<DateTime<Utc>>,
}

/// A roll-up row of the model: day, prompt, prompt version, label, feature, key and currency.
type RollupKey = (
    NaiveDate,
    Option<Uuid>,
    Option<i32>,
    Option<String>,
    Option<String>,
    Uuid,
    Option<String>,
);

#[derive(sqlx::FromRow)]
struct Stored {
    record_id: String,
    ts: DateTime<Utc>,
    prompt_id: Option<Uuid>,
    prompt_version: Option<i32>,
    prompt_label: Option<String>,
    feature: Option<String>,
    key_id: Uuid,
    status: String,
    input_tokens: i64,
    output_tokens: i64,
    cached_input_tokens: i64,
    cost: Option<Decimal>,
    currency: Option<String>,
    recosted: bool,
    original_cost: Option<Decimal>,
}

/// Prices `tenant`'s records of the model `reference` from `from` on with `periods` (the
/// model's price periods after the change), and moves the roll-ups by what changed.
/// Returns how many records changed cost.
pub async fn recost(
    tx: &mut PgConnection,
    tenant: &str,
    reference: &str,
    from: DateTime<Utc>,
    periods: &[PricePeriod],
) -> sqlx::Result<usize> {
    let records: Vec<Stored> = sqlx::query_as(
        "select record_id, ts, prompt_id, prompt_version, prompt_label, feature, key_id, status, input_tokens, output_tokens, cached_input_tokens,
                cost, currency, recosted, original_cost
         from usage_record where tenant_id = $1 and model = $2 and ts >= $3
         for update",
    )
    .bind(tenant)
    .bind(reference)
    .bind(from)
    .fetch_all(&mut *tx)
    .await?;
    let mut deltas: HashMap<RollupKey, RollupDelta> = HashMap::new();
    let (mut ids, mut timestamps, mut costs, mut currencies, mut originals, mut original_currencies) =
        (vec![], vec![], vec![], vec![], vec![], vec![]);
    for record in records {
        let tokens = |n: i64| u64::try_from(n).unwrap_or(0);
        let new = price_at(periods, record.ts).map(|price| {
            cost_of_tokens(
                tokens(record.input_tokens),
                tokens(record.cached_input_tokens),
                tokens(record.output_tokens),
                price,
            )
        });
        let (new_cost, new_currency) = match new {
            Some(cost) => (Some(cost.amount), Some(cost.currency)),
            None => (None, None),
        };
        if new_cost == record.cost && new_currency == record.currency {
            continue;
        }
        let original = if record.recosted {
            record.original_cost
        } else {
            record.cost
        };
        // Out of the row of its old currency, into the row of its new one.
        for (currency, sign, cost) in [
            (record.currency.clone(), -1, record.cost),
            (new_currency.clone(), 1, new_cost),
        ] {
            let key: RollupKey = (
                record.ts.date_naive(),
                record.prompt_id,
                record.prompt_version,
                record.prompt_label.clone(),
                record.feature.clone(),
                record.key_id,
                currency,
            );
            let delta = deltas.entry(key).or_default();
            delta.calls += sign;
            delta.input_tokens += sign * record.input_tokens;
            delta.output_tokens += sign * record.output_tokens;
            delta.cached_input_tokens += sign * record.cached_input_tokens;
            delta.cost += Decimal::from(sign) * cost.unwrap_or_default();
            delta.uncosted += sign * i64::from(cost.is_none());
            delta.errors += sign * i64::from(record.status != "ok");
            if sign > 0 {
                delta.last_used = delta.last_used.max(Some(record.ts));
            }
            delta.original_cost += Decimal::from(sign) * original.unwrap_or_default();
            // The row it leaves loses it as recosted if it was; the row it joins counts it.
            delta.recosted += if sign > 0 { 1 } else { -i64::from(record.recosted) };
        }
        ids.push(record.record_id);
        timestamps.push(record.ts);
        costs.push(new_cost);
        currencies.push(new_currency);
        originals.push(original);
        original_currencies.push(if record.recosted { None } else { record.currency });
    }
    if ids.is_empty() {
        return Ok(0);
    }
    sqlx::query(
        "update usage_record u set
             cost = c.cost, currency = c.currency,
             original_cost = case when u.recosted then u.original_cost else c.original_cost end,
             original_currency = case when u.recosted then u.original_currency else c.original_currency end,
             recosted = true
         from unnest($3::text[], $4::timestamptz[], $5::numeric[], $6::text[], $7::numeric[], $8::text[])
              as c(record_id, ts, cost, currency, original_cost, original_currency)
         where u.tenant_id = $1 and u.model = $2 and u.record_id = c.record_id and u.ts = c.ts",
    )
    .bind(tenant)
    .bind(reference)
    .bind(&ids)
    .bind(&timestamps)
    .bind(&costs)
    .bind(&currencies)
    .bind(&originals)
    .bind(&original_currencies)
    .execute(&mut *tx)
    .await?;
    apply_deltas(tx, tenant, reference, from.date_naive(), deltas).await?;
    Ok(ids.len())
}

/// Adds `deltas` to the roll-up rows, in key order (as ingestion does, so the two never
/// deadlock), creating a row a record moved into.
async fn apply_deltas(
    tx: &mut PgConnection,
    tenant: &str,
    reference: &str,
    first_day: NaiveDate,
    deltas: HashMap<RollupKey, RollupDelta>,
) -> sqlx::Result<()> {
    let mut rows: Vec<_> = deltas.into_iter().collect();
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    let mut days = vec![];
    let (mut prompts, mut versions, mut labels, mut features) = (vec![], vec![], vec![], vec![]);
    let (mut keys, mut currencies, mut errors, mut last_used) = (vec![], vec![], vec![], vec![]);
    let (mut calls, mut inputs, mut outputs, mut cached) = (vec![], vec![], vec![], vec![]);
    let (mut costs, mut uncosted, mut originals, mut recosted) = (vec![], vec![], vec![], vec![]);
    for ((day, prompt, version, label, feature, key, currency), delta) in rows {
        days.push(day);
        prompts.push(prompt);
        versions.push(version);
        labels.push(label);
        errors.push(delta.errors);
        last_used.push(delta.last_used);
        features.push(feature);
        keys.push(key);
        currencies.push(currency);
        calls.push(delta.calls);
        inputs.push(delta.input_tokens);
        outputs.push(delta.output_tokens);
        cached.push(delta.cached_input_tokens);
        costs.push(delta.cost);
        uncosted.push(delta.uncosted);
        originals.push(delta.original_cost);
        recosted.push(delta.recosted);
    }
    sqlx::query(
        "insert into usage_rollup as r (tenant_id, model, day, prompt_id, feature, key_id, currency, calls,
                                        input_tokens, output_tokens, cached_input_tokens, cost, uncosted,
                                        original_cost, recosted, prompt_version, prompt_label, errors, last_used)
         select $1, $2, * from unnest($3::date[], $4::uuid[], $5::text[], $6::uuid[], $7::text[], $8::bigint[],
                                      $9::bigint[], $10::bigint[], $11::bigint[], $12::numeric[], $13::bigint[],
                                      $14::numeric[], $15::bigint[], $16::int[], $17::text[], $18::bigint[],
                                      $19::timestamptz[])
         on conflict (tenant_id, day, model, prompt_id, prompt_version, prompt_label, feature, key_id, currency)
         do update set
             calls = r.calls + excluded.calls,
             input_tokens = r.input_tokens + excluded.input_tokens,
             output_tokens = r.output_tokens + excluded.output_tokens,
             cached_input_tokens = r.cached_input_tokens + excluded.cached_input_tokens,
             cost = r.cost + excluded.cost,
             uncosted = r.uncosted + excluded.uncosted,
             original_cost = r.original_cost + excluded.original_cost,
             errors = r.errors + excluded.errors,
             last_used = greatest(r.last_used, excluded.last_used),
             recosted = r.recosted + excluded.recosted",
    )
    .bind(tenant)
    .bind(reference)
    .bind(&days)
    .bind(&prompts)
    .bind(&features)
    .bind(&keys)
    .bind(&currencies)
    .bind(&calls)
    .bind(&inputs)
    .bind(&outputs)
    .bind(&cached)
    .bind(&costs)
    .bind(&uncosted)
    .bind(&originals)
    .bind(&recosted)
    .bind(&versions)
    .bind(&labels)
    .bind(&errors)
    .bind(&last_used)
    .execute(&mut *tx)
    .await?;
    // A row every record moved out of is gone, not a row of zeros.
    sqlx::query("delete from usage_rollup where tenant_id = $1 and day >= $3 and model = $2 and calls = 0")
        .bind(tenant)
        .bind(reference)
        .bind(first_day)
        .execute(&mut *tx)
        .await?;
    Ok(())
}
