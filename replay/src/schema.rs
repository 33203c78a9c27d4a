//! Schemas that hold a projection's tables beside the live ones in `public`.
//!
//! A projection's SQL names its tables unqualified, so it writes wherever the search path
//! finds them first: a transaction with `search_path = <schema>, public` writes the copies
//! in `<schema>` and still reads the log (and everything else) in `public`.
//!
//! A copy has the live table's columns, defaults, checks, constraints, indexes and
//! triggers, under the same names, so that moving it into `public` leaves nothing to tell
//! it from a table the migrations made. It starts with only its unique indexes (which
//! upserts need); the other indexes come once the bulk of the rows is in. A copy to be kept
//! is logged from the start: writing its rows to the WAL as they come costs about a quarter
//! of what `alter table … set logged` costs afterwards, in one long statement that holds
//! back every reader of the log. A copy made only to be compared is unlogged.

use sqlx::{PgConnection, PgPool};

/// A schema name checked to be safe to splice into SQL and never one PostgreSQL or aipm's
/// own tables live in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SchemaName(String);

impl SchemaName {
    /// A lowercase identifier of at most 63 bytes, not `public`, `information_schema` or
    /// `pg_…`.
    pub fn parse(name: &str) -> Result<Self, String> {
        let valid_start = name.starts_with(|c: char| c.is_ascii_lowercase() || c == '_');
        let valid_rest = name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !valid_start || !valid_rest || name.len() > 63 {
            return Err(format!(
                "invalid schema name {name:?}: use lowercase letters, digits and _ (at most 63), not starting with a digit"
            ));
        }
        if name == "public" || name == "information_schema" || name.starts_with("pg_") {
            return Err(format!(
                "schema {name:?} is not for rebuilt read models: name a schema of their own"
            ));
        }
        Ok(Self(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for SchemaName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

/// Makes the current transaction's unqualified table names resolve to `schema` first.
pub(crate) async fn search_path(conn: &mut PgConnection, schema: &SchemaName) -> Result<(), sqlx::Error> {
    // What nobody reads before the copies are swapped in needs no wait for its WAL flush.
    sqlx::query("select set_config('search_path', $1, true), set_config('synchronous_commit', 'off', true)")
        .bind(format!("{schema}, public"))
        .execute(conn)
        .await?;
    Ok(())
}

/// How many tables `schema` holds; `None` when it does not exist.
pub(crate) async fn tables_in(
    conn: &mut PgConnection,
    schema: &SchemaName,
) -> Result<Option<i64>, sqlx::Error> {
    sqlx::query_scalar(
        "select (select count(*) from pg_class c where c.relnamespace = n.oid and c.relkind in ('r', 'p'))
         from pg_namespace n where n.nspname = $1",
    )
    .bind(schema.as_str())
    .fetch_optional(conn)
    .await
}

pub(crate) async fn drop_schema(conn: &mut PgConnection, schema: &SchemaName) -> Result<(), sqlx::Error> {
    sqlx::query(&format!("drop schema if exists {schema} cascade"))
        .execute(conn)
        .await?;
    Ok(())
}

/// Whether copies are written to the WAL: those to be kept must be, those only compared
/// need not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Durability {
    Kept,
    Scratch,
}

/// Creates `schema` (which must not exist) holding empty copies of `tables`, with their
/// unique indexes; [`finish_tables`] adds the rest.
pub(crate) async fn create_tables(
    conn: &mut PgConnection,
    schema: &SchemaName,
    tables: &[&str],
    durability: Durability,
) -> Result<(), sqlx::Error> {
    let kind = match durability {
        Durability::Kept => "table",
        Durability::Scratch => "unlogged table",
    };
    sqlx::query(&format!("create schema {schema}"))
        .execute(&mut *conn)
        .await?;
    for table in tables {
        // Constraints' and indexes' own names are added below: LIKE would invent new ones.
        sqlx::query(&format!(
            "create {kind} {schema}.{table} (like public.{table} including all excluding indexes)"
        ))
        .execute(&mut *conn)
        .await?;
        for definition in definitions(conn, table, Part::Unique).await? {
            sqlx::query(&retarget(&definition, table, schema)?)
                .execute(&mut *conn)
                .await?;
        }
    }
    Ok(())
}

/// Creates `schema` afresh (dropping what a run that stopped half-way left there) with
/// copies of the tables `projection` writes: its own and those it also writes.
pub(crate) async fn recreate_for(
    conn: &mut PgConnection,
    schema: &SchemaName,
    projection: &dyn eventlog::Projection,
    durability: Durability,
) -> Result<(), sqlx::Error> {
    let tables: Vec<&str> = projection
        .tables()
        .iter()
        .chain(projection.also_writes())
        .copied()
        .collect();
    drop_schema(conn, schema).await?;
    create_tables(conn, schema, &tables, durability).await
}

/// Adds the indexes and triggers of the live tables that [`create_tables`] left out, then
/// gathers the copies' statistics, so that a copy swapped in is planned for from its first
/// query (statistics stay with a table moved to another schema). Each table on a
/// connection of its own, all at once.
pub(crate) async fn finish_tables(
    pool: &PgPool,
    schema: &SchemaName,
    tables: &[&'static str],
) -> Result<(), sqlx::Error> {
    let mut finishing = tokio::task::JoinSet::new();
    for &table in tables {
        let (pool, schema) = (pool.clone(), schema.clone());
        finishing.spawn(async move { finish_table(&pool, &schema, table).await });
    }
    while let Some(finished) = finishing.join_next().await {
        finished.map_err(|e| sqlx::Error::Protocol(format!("finishing a copy failed: {e}")))??;
    }
    Ok(())
}

async fn finish_table(pool: &PgPool, schema: &SchemaName, table: &str) -> Result<(), sqlx::Error> {
    let mut conn = pool.acquire().await?;
    for part in [Part::OtherIndexes, Part::Triggers] {
        for definition in definitions(&mut conn, table, part).await? {
            sqlx::query(&retarget(&definition, table, schema)?)
                .execute(&mut *conn)
                .await?;
        }
    }
    sqlx::query(&format!("analyze {schema}.{table}"))
        .execute(&mut *conn)
        .await?;
    Ok(())
}

#[derive(Clone, Copy)]
enum Part {
    /// Primary keys, unique constraints and unique indexes.
    Unique,
    /// The other indexes, and foreign keys.
    OtherIndexes,
    Triggers,
}

/// The SQL that gives `public.<table>` the given part, every name schema-qualified. On a
/// connection outside a transaction.
async fn definitions(conn: &mut PgConnection, table: &str, part: Part) -> Result<Vec<String>, sqlx::Error> {
    let sql = match part {
        // A constraint is added as one (its index comes with it, named alike); a unique
        // index that backs no constraint is created as it is.
        Part::Unique => {
            "select format('alter table public.%I add constraint %I %s', $1::text, c.conname, pg_get_constraintdef(c.oid))
             from pg_constraint c where c.conrelid = format('public.%I', $1::text)::regclass and c.contype in ('p', 'u', 'x')
             union all
             select pg_get_indexdef(i.indexrelid) from pg_index i
             where i.indrelid = format('public.%I', $1::text)::regclass and i.indisunique
               and not exists (select 1 from pg_constraint c where c.conindid = i.indexrelid)"
        }
        Part::OtherIndexes => {
            "select pg_get_indexdef(i.indexrelid) from pg_index i
             where i.indrelid = format('public.%I', $1::text)::regclass and not i.indisunique
               and not exists (select 1 from pg_constraint c where c.conindid = i.indexrelid)
             union all
             select format('alter table public.%I add constraint %I %s', $1::text, c.conname, pg_get_constraintdef(c.oid))
             from pg_constraint c where c.conrelid = format('public.%I', $1::text)::regclass and c.contype = 'f'"
        }
        Part::Triggers => {
            "select pg_get_triggerdef(t.oid) from pg_trigger t
             where t.tgrelid = format('public.%I', $1::text)::regclass and not t.tgisinternal"
        }
    };
    // With an empty search path, every definition names `public.<table>` in full.
    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
    sqlx::query("set local search_path = ''")
        .execute(&mut *tx)
        .await?;
    let definitions = sqlx::query_scalar(sql).bind(table).fetch_all(&mut *tx).await?;
    tx.commit().await?;
    Ok(definitions)
}

/// `definition` applied to `schema.<table>` instead of `public.<table>`.
fn retarget(definition: &str, table: &str, schema: &SchemaName) -> Result<String, sqlx::Error> {
    let live = format!(" public.{table} ");
    if !definition.contains(&live) {
        return Err(sqlx::Error::Protocol(format!(
            "cannot copy {definition:?}: it does not name {live}"
        )));
    }
    Ok(definition.replacen(&live, &format!(" {schema}.{table} "), 1))
}

/// Replaces each `public.<table>` with `schema.<table>`: the live table is dropped and the
/// copy moved in, keeping every name. The caller holds the tables' locks.
pub(crate) async fn swap_in(
    conn: &mut PgConnection,
    schema: &SchemaName,
    tables: &[&str],
) -> Result<(), sqlx::Error> {
    for table in tables {
        sqlx::query(&format!("drop table public.{table}"))
            .execute(&mut *conn)
            .await?;
        sqlx::query(&format!("alter table {schema}.{table} set schema public"))
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_schema_name_is_a_plain_lowercase_identifier_of_its_own() {
        assert!(SchemaName::parse("as_of_june").is_ok());
        assert!(SchemaName::parse("_x1").is_ok());
        for bad in [
            "",
            "1st",
            "Has_Upper",
            "a-b",
            "a;drop",
            "public",
            "pg_temp",
            "information_schema",
        ] {
            assert!(SchemaName::parse(bad).is_err(), "{bad:?}");
        }
        assert!(SchemaName::parse(&"a".repeat(64)).is_err());
    }

    #[test]
    fn a_definition_is_moved_to_the_schema_by_its_table_name() {
        let schema = SchemaName::parse("shadow").unwrap();
        assert_eq!(
            retarget(
                "CREATE INDEX prompt_by_tenant ON public.prompt USING btree (tenant_id)",
                "prompt",
                &schema
            )
            .unwrap(),
            "CREATE INDEX prompt_by_tenant ON shadow.prompt USING btree (tenant_id)"
        );
        assert!(retarget(
            "CREATE INDEX x ON public.other USING btree (a)",
            "prompt",
            &schema
        )
        .is_err());
    }
}
