//! `aipm backup` and `aipm restore`: a populated log backed up while it serves (a full
//! backup and an incremental one), restored into another cluster whose transaction ids are
//! elsewhere, gives the same read models row for row, the same event ids and the same audit
//! hashes, which verify against the anchors published before the backup.

use api::cli::backup::{backup, backup_in_ranges, manifest_path, restore, Manifest, DEFAULT_JOBS};
use integration_tests::harness::{expect_problem, expect_status, TestApp};
use integration_tests::nats::{nats_url, unique_anchor_settings};
use integration_tests::postgres::PrivateCluster;
use reqwest::StatusCode;
use serde_json::{json, Map, Value};
use sqlx::PgPool;
use uuid::Uuid;

use crate::rebuild::{settle, write_history};

/// Tables that are not read models of the log: the log itself, the write side's caches and
/// idempotency records, checkpoints, the database's own identity, and telemetry (usage,
/// probes, observations), which is not in the event log.
const NOT_FROM_THE_LOG: [&str; 13] = [
    "events",
    "snapshots",
    "projection_checkpoint",
    "idempotency_request",
    "idempotency_outcome",
    "database_identity",
    "_sqlx_migrations",
    "usage_record",
    "usage_record_id",
    "usage_rollup",
    "usage_analytics",
    "provider_probe",
    "experiment_observation",
];

/// Every other table as JSON, rows sorted, without the columns that hold this database's
/// transaction ids: an audit entry states its event's original cursor instead.
async fn dump(pool: &PgPool) -> Value {
    let tables: Vec<String> = sqlx::query_scalar(
        "select c.relname::text from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = 'public' and c.relkind in ('r', 'p') and not c.relispartition
         order by 1",
    )
    .fetch_all(pool)
    .await
    .expect("tables");
    let mut dumped = Map::new();
    for table in tables
        .into_iter()
        .filter(|table| !NOT_FROM_THE_LOG.contains(&table.as_str()))
    {
        let sql = format!(
            "select coalesce(jsonb_agg(row order by row::text), '[]'::jsonb)
             from (select to_jsonb(t) - 'transaction_id' - 'position' - 'origin_cursor'
                          || case when '{table}' = 'audit_entry'
                                  then jsonb_build_object('stated_cursor',
                                       coalesce(to_jsonb(t) ->> 'origin_cursor',
                                                (to_jsonb(t) ->> 'transaction_id') || '-' || (to_jsonb(t) ->> 'position')))
                                  else '{{}}'::jsonb end as row
                   from {table} t) rows"
        );
        let rows: Value = sqlx::query_scalar(&sql)
            .fetch_one(pool)
            .await
            .unwrap_or_else(|e| panic!("dump {table}: {e}"));
        dumped.insert(table, rows);
    }
    Value::Object(dumped)
}

/// Each event's CloudEvents id, in the global order.
async fn event_ids(pool: &PgPool) -> Vec<String> {
    let rows: Vec<(String, String, i64)> = sqlx::query_as(
        "select aggregate_type, aggregate_id, sequence from events order by transaction_id, position",
    )
    .fetch_all(pool)
    .await
    .expect("events");
    rows.iter()
        .map(|(kind, id, sequence)| projections::cloudevent::identity(kind, id, *sequence))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_restored_backup_has_the_same_read_models_event_ids_and_audit_hashes_and_verifies_against_old_anchors(
) {
    let anchors = unique_anchor_settings(&nats_url());
    let app = TestApp::spawn_with(api::Settings::default().with_anchors(Some(anchors.clone()))).await;
    write_history(&app).await;
    settle(app.pool()).await;
    let anchored = api::cli::audit::anchor(app.pool(), &anchors, None)
        .await
        .expect("anchor");
    assert!(anchored.contains("acme: anchored entry #"), "{anchored}");

    let dir = std::env::temp_dir().join(format!("aipm-test-backup-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).expect("backup folder");
    let full_file = dir.join("full.ndjson");
    // Three ranges copied at once, joined in order: the same bytes as one copy.
    let full = backup_in_ranges(app.pool(), &full_file, None, 3, 1)
        .await
        .expect("full backup");
    assert_eq!(full.events as i64, app.event_count().await, "{full:?}");
    let single_file = dir.join("single.ndjson");
    let single = backup_in_ranges(app.pool(), &single_file, None, 1, 1)
        .await
        .expect("backup in one range");
    assert_eq!(
        std::fs::read(&single_file).expect("single"),
        std::fs::read(&full_file).expect("full"),
        "ranges joined in order are the log as one copy gives it"
    );
    assert_eq!((single.sha256, single.events), (full.sha256.clone(), full.events));
    // Each line is what PostgreSQL itself writes for the event (`json_build_object`, times in
    // UTC), byte for byte: backups read from the rows by aipm and written by the server
    // are one format.
    let mut conn = app.pool().acquire().await.expect("connection");
    sqlx::query("set timezone = 'UTC'")
        .execute(&mut *conn)
        .await
        .expect("time zone");
    let by_postgres: Vec<String> = sqlx::query_scalar(
        "select json_build_object(
                   'transaction_id', transaction_id::text::bigint, 'position', position,
                   'aggregate_type', aggregate_type, 'aggregate_id', aggregate_id, 'sequence', sequence,
                   'event_type', event_type, 'event_version', event_version, 'tenant_id', tenant_id,
                   'recorded_at', recorded_at, 'metadata', metadata, 'payload', payload)::text
         from events order by transaction_id, position limit $1",
    )
    .bind(full.events as i64)
    .fetch_all(&mut *conn)
    .await
    .expect("the lines as PostgreSQL writes them");
    drop(conn);
    let by_aipm = std::fs::read_to_string(&single_file).expect("single");
    assert_eq!(by_aipm.lines().collect::<Vec<_>>(), by_postgres);
    let leftovers: Vec<String> = std::fs::read_dir(&dir)
        .expect("backup folder")
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .filter(|name| name.contains(".partial"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "the ranges' files are removed: {leftovers:?}"
    );
    assert!(full.since.is_none() && full.first_cursor.is_some(), "{full:?}");
    let lines = std::fs::read_to_string(&full_file).expect("backup file");
    let first: Value = serde_json::from_str(lines.lines().next().expect("a line")).expect("NDJSON");
    for column in [
        "transaction_id",
        "position",
        "aggregate_type",
        "aggregate_id",
        "sequence",
        "event_type",
        "event_version",
        "tenant_id",
        "recorded_at",
        "metadata",
        "payload",
    ] {
        assert!(first.get(column).is_some(), "the line has {column}: {first}");
    }
    let written: Manifest =
        serde_json::from_str(&std::fs::read_to_string(manifest_path(&full_file)).expect("manifest"))
            .expect("manifest JSON");
    assert_eq!(written, full);

    // More changes while nothing stops, then an incremental backup of just those.
    let key = app.admin_key.as_str();
    let later = app.create_prompt("after-the-full-backup").await;
    app.publish(&later, "Later {{x}}").await;
    settle(app.pool()).await;
    let incremental_file = dir.join("incremental.ndjson");
    let since = full
        .last_cursor
        .as_deref()
        .expect("last cursor")
        .parse()
        .expect("cursor");
    let incremental = backup(
        app.pool(),
        &incremental_file,
        Some(since),
        usize::from(DEFAULT_JOBS),
    )
    .await
    .expect("incremental backup");
    assert_eq!(incremental.events, 2, "{incremental:?}");
    assert_eq!(incremental.since, full.last_cursor);
    let original = dump(app.pool()).await;
    let original_ids = event_ids(app.pool()).await;

    // Restore into another cluster: its transaction counter is far behind the shared one.
    let cluster = PrivateCluster::start().await;
    let restored_pool = api::db::connect(&format!("{}/aipm", cluster.server_url()), 8)
        .await
        .expect("the new cluster");
    let files = [full_file.clone(), incremental_file.clone()];

    // Refused before anything is written: a file that is not what its manifest says, and
    // backups out of order.
    let tampered_file = dir.join("tampered.ndjson");
    std::fs::write(&tampered_file, lines.replacen("greeting", "greetinG", 1)).expect("tampered copy");
    std::fs::copy(manifest_path(&full_file), manifest_path(&tampered_file)).expect("manifest copy");
    let refused = restore(&restored_pool, &[tampered_file], None)
        .await
        .expect_err("a file unlike its manifest is refused");
    assert!(refused.contains("does not match its manifest"), "{refused}");
    let refused = restore(&restored_pool, std::slice::from_ref(&incremental_file), None)
        .await
        .expect_err("an incremental backup alone is refused");
    assert!(refused.contains("start with a full backup"), "{refused}");
    let refused = restore(
        &restored_pool,
        &[
            full_file.clone(),
            incremental_file.clone(),
            incremental_file.clone(),
        ],
        None,
    )
    .await
    .expect_err("a backup twice is refused");
    assert!(refused.contains("is missing between them"), "{refused}");
    let held: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&restored_pool)
        .await
        .expect("count");
    assert_eq!(held, 0, "a refused restore writes nothing");

    let report = restore(&restored_pool, &files, Some(&anchors))
        .await
        .expect("restore");
    assert!(report.verified, "{}", report.summary);
    assert_eq!(report.events, full.events + incremental.events);
    assert!(report.summary.contains("1 anchor(s) check"), "{}", report.summary);

    assert_eq!(
        event_ids(&restored_pool).await,
        original_ids,
        "the order and ids are kept"
    );
    let restored = dump(&restored_pool).await;
    for (table, rows) in original.as_object().expect("tables") {
        assert_eq!(
            restored.get(table),
            Some(rows),
            "{table} differs after the restore"
        );
    }
    assert_eq!(restored, original);

    // The new cluster's transaction ids differ from the old ones; each event keeps its own.
    let moved: Vec<(String, String)> = sqlx::query_as(
        "select transaction_id || '-' || position, metadata ->> 'original_cursor' from events
         order by transaction_id, position",
    )
    .fetch_all(&restored_pool)
    .await
    .expect("cursors");
    let original_cursors: Vec<String> = sqlx::query_scalar(
        "select transaction_id || '-' || position from events order by transaction_id, position",
    )
    .fetch_all(app.pool())
    .await
    .expect("cursors");
    assert_eq!(
        moved
            .iter()
            .map(|(_, original)| original.clone())
            .collect::<Vec<_>>(),
        original_cursors
    );
    assert!(moved.iter().all(|(now, original)| now != original), "{moved:?}");

    // The anchors published before the backup verify the restored chain.
    let verified = api::cli::audit::verify(&restored_pool, None, Some(&anchors))
        .await
        .expect("the restored chain verifies against the old anchors");
    assert!(verified.contains("acme"), "{verified}");

    // A second restore into the same database is refused.
    let refused = restore(&restored_pool, &files, None)
        .await
        .expect_err("a database with events is refused");
    assert!(refused.contains("already holds"), "{refused}");

    // The restored database serves, and the write side's names came back with the log: the
    // name of a restored prompt is taken, a restored category still holds its prompts.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    let server = tokio::spawn(api::serve(
        integration_tests::harness::test_settings(),
        restored_pool.clone(),
        listener,
    ));
    let client = reqwest::Client::new();
    let taken = client
        .post(format!("{address}/v1/prompts"))
        .bearer_auth(key)
        .json(&json!({ "name": "after-the-full-backup" }))
        .send()
        .await
        .expect("create");
    expect_problem(taken, StatusCode::CONFLICT, "name-taken").await;
    let read = client
        .get(format!("{address}/v1/prompts/{later}"))
        .bearer_auth(key)
        .send()
        .await
        .expect("read");
    assert_eq!(expect_status(read, StatusCode::OK).await["latest_version"], 1);
    server.abort();
    let _ = std::fs::remove_dir_all(&dir);
}
