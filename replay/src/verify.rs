//! Checking live read models against the log: rebuild a projection into a scratch schema
//! and compare the two row for row.

use std::fmt;

use eventlog::Projection;
use indicatif::ProgressBar;
use projections::ProjectionError;
use serde_json::{Map, Value};
use sqlx::PgConnection;

use crate::build::{self, Applied, Point};
use crate::schema::{self, SchemaName};

/// Columns left out of the comparison, with why they may differ between the live table and
/// one rebuilt from the same log: (table, column, reason). Every other column is compared.
/// Empty today: every projection writes only what the events say (times are the events'
/// `recorded_at`), never the time it ran.
const NOT_COMPARED: &[(&str, &str, &str)] = &[];

/// A row that differs: its key, and the row as each side holds it (absent on one side: a
/// row only the other has). `live` and `rebuilt` hold only the columns that differ when
/// both exist.
#[derive(Debug, Clone, PartialEq)]
pub struct Difference {
    pub table: String,
    pub key: Value,
    pub live: Option<Value>,
    pub rebuilt: Option<Value>,
}

/// What [`verify`] found for one projection.
#[derive(Debug, Clone)]
pub struct VerifyReport {
    pub projection: &'static str,
    /// Events the rebuild applied.
    pub events: u64,
    /// The first differences found, at most the limit asked for per table.
    pub differences: Vec<Difference>,
    /// Tables with more differences than were listed.
    pub truncated: Vec<String>,
}

impl VerifyReport {
    pub fn is_clean(&self) -> bool {
        self.differences.is_empty()
    }
}

impl fmt::Display for VerifyReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_clean() {
            return writeln!(
                f,
                "{}: the read models equal a rebuild from the log ({} events)",
                self.projection, self.events
            );
        }
        writeln!(
            f,
            "{}: {} rows differ from a rebuild from the log ({} events):",
            self.projection,
            self.differences.len(),
            self.events
        )?;
        let show = |side: &Option<Value>| side.as_ref().map_or("(no row)".to_string(), Value::to_string);
        for difference in &self.differences {
            writeln!(f, "  {} {}", difference.table, difference.key)?;
            writeln!(f, "    live:    {}", show(&difference.live))?;
            writeln!(f, "    rebuilt: {}", show(&difference.rebuilt))?;
        }
        for table in &self.truncated {
            writeln!(f, "  {table}: more rows differ than are listed")?;
        }
        Ok(())
    }
}

/// Rebuilds `projection` into a scratch schema and compares it with the live tables, listing
/// at most `limit` differing rows per table. The live tables are only read: the comparison
/// runs in one repeatable-read snapshot, in which an inline projection's tables reflect
/// exactly the events committed, and a projection with a runner reflects its checkpoint.
pub async fn verify(
    pool: &sqlx::PgPool,
    projection: &dyn Projection,
    limit: usize,
    bar: &ProgressBar,
) -> Result<VerifyReport, ProjectionError> {
    let schema = scratch_schema("aipm_verify_", projection)?;
    let mut conn = pool.acquire().await?;
    schema::recreate_for(&mut conn, &schema, projection, schema::Durability::Scratch).await?;
    let result = async {
        // A runner's tables are compared at its checkpoint: build no further than where it
        // is now; the snapshot below finds it there or later.
        let point = if projection.inline() {
            Point::END
        } else {
            Point {
                cursor: Some(projections::runner::checkpoint(&mut conn, projection.name()).await?),
                instant: None,
            }
        };
        let built = build::apply_settled(pool, projection, &schema, Applied::default(), point, bar).await?;
        let mut tx = eventlog::begin(pool).await?;
        sqlx::query("set transaction isolation level repeatable read")
            .execute(&mut *tx)
            .await?;
        schema::search_path(&mut tx, &schema).await?;
        let done = if projection.inline() {
            build::apply_tail(&mut tx, projection, built, None, true).await?
        } else {
            let at = projections::runner::checkpoint(&mut tx, projection.name()).await?;
            build::apply_tail(&mut tx, projection, built, Some(at), false).await?
        };
        let mut report = VerifyReport {
            projection: projection.name(),
            events: done.events,
            differences: Vec::new(),
            truncated: Vec::new(),
        };
        for table in projection.tables() {
            let mut found = compare(&mut tx, &schema, table, limit + 1).await?;
            if found.len() > limit {
                found.truncate(limit);
                report.truncated.push(table.to_string());
            }
            report.differences.extend(found);
        }
        tx.rollback().await?;
        Ok::<_, ProjectionError>(report)
    }
    .await;
    schema::drop_schema(&mut conn, &schema).await?;
    result
}

/// The schema a projection's scratch copies are built in: `prefix` and its name.
pub(crate) fn scratch_schema(
    prefix: &str,
    projection: &dyn Projection,
) -> Result<SchemaName, ProjectionError> {
    SchemaName::parse(&format!("{prefix}{}", projection.name()))
        .map_err(|e| ProjectionError::Database(sqlx::Error::Protocol(e)))
}

/// The rows of `public.<table>` and `<schema>.<table>` that are not in the other, paired by
/// primary key, at most `limit`.
async fn compare(
    conn: &mut PgConnection,
    schema: &SchemaName,
    table: &str,
    limit: usize,
) -> Result<Vec<Difference>, sqlx::Error> {
    let (columns, key): (Vec<String>, Vec<String>) = sqlx::query_as(
        "select array_agg(quote_ident(a.attname::text) order by a.attnum)
                    filter (where not (a.attname::text = any($2))),
                coalesce(array_agg(quote_ident(a.attname::text) order by a.attnum)
                    filter (where a.attnum = any(i.indkey::smallint[])), '{}')
         from pg_attribute a
         left join pg_index i on i.indrelid = a.attrelid and i.indisprimary
         where a.attrelid = format('public.%I', $1::text)::regclass and a.attnum > 0 and not a.attisdropped",
    )
    .bind(table)
    .bind(
        NOT_COMPARED
            .iter()
            .filter(|(t, _, _)| *t == table)
            .map(|(_, column, _)| column.to_string())
            .collect::<Vec<_>>(),
    )
    .fetch_one(&mut *conn)
    .await?;
    let columns = columns.join(", ");
    // Rows are paired by primary key; a table without one lists each side's rows apart.
    let paired = if key.is_empty() {
        "select to_jsonb(l), null::jsonb from live_only l
         union all select null::jsonb, to_jsonb(r) from rebuilt_only r"
            .to_string()
    } else {
        let same_key = key
            .iter()
            .map(|k| format!("l.{k} = r.{k}"))
            .collect::<Vec<_>>()
            .join(" and ");
        format!("select to_jsonb(l), to_jsonb(r) from live_only l full join rebuilt_only r on {same_key}")
    };
    let sql = format!(
        "with live_only as (select {columns} from public.{table} except all select {columns} from {schema}.{table}),
              rebuilt_only as (select {columns} from {schema}.{table} except all select {columns} from public.{table})
         {paired}
         limit $1"
    );
    let rows: Vec<(Option<Value>, Option<Value>)> = sqlx::query_as(&sql)
        .bind(limit as i64)
        .fetch_all(&mut *conn)
        .await?;
    Ok(rows
        .into_iter()
        .map(|(live, rebuilt)| difference(table, &key, live, rebuilt))
        .collect())
}

/// One differing row: its key, and only the columns that differ when both sides hold it.
fn difference(table: &str, key: &[String], live: Option<Value>, rebuilt: Option<Value>) -> Difference {
    let either = live.as_ref().or(rebuilt.as_ref());
    let key_of = |row: Option<&Value>| {
        let mut fields = Map::new();
        for column in key {
            let column = column.trim_matches('"');
            let value = row.and_then(|r| r.get(column)).cloned().unwrap_or(Value::Null);
            fields.insert(column.to_string(), value);
        }
        Value::Object(fields)
    };
    let key_value = key_of(either);
    let (live, rebuilt) = match (live, rebuilt) {
        (Some(Value::Object(live)), Some(Value::Object(rebuilt))) => {
            let differs = |column: &String| live.get(column) != rebuilt.get(column);
            let only = |row: &Map<String, Value>| -> Value {
                Value::Object(
                    row.iter()
                        .filter(|(column, _)| differs(column))
                        .map(|(c, v)| (c.clone(), v.clone()))
                        .collect(),
                )
            };
            (Some(only(&live)), Some(only(&rebuilt)))
        }
        other => other,
    };
    Difference {
        table: table.to_string(),
        key: key_value,
        live,
        rebuilt,
    }
}
