//! The global order across a restore: a log whose transaction ids are ahead of its cluster's
//! counter is refused at start until the counter is moved past it, and nothing can place an
//! event elsewhere in the order or empty the log.

use integration_tests::harness::{expect_status, TestApp, TestDatabase};
use integration_tests::postgres::{copy_database, PrivateCluster};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_log_restored_into_a_cluster_whose_counter_is_behind_is_refused_until_the_counter_is_past_it() {
    let app = TestApp::spawn_with(api::Settings::default()).await;
    let before = app.create_prompt("before-the-move").await;
    // The shared server has handed out far more transaction ids than a new cluster has.
    let cluster = PrivateCluster::start().await;
    copy_database(&app.db.url, &cluster.server_url(), "aipm");
    let url = format!("{}/aipm", cluster.server_url());

    let refused = match api::db::connect(&url, 4).await {
        Err(api::db::StartError::LogAheadOfCluster(ahead)) => ahead,
        other => panic!(
            "a log ahead of the cluster must be refused, got {:?}",
            other.map(|_| ())
        ),
    };
    assert!(refused.highest >= refused.next, "{refused:?}");
    let (epoch, xid) = refused.reset_arguments();
    let message = refused.to_string();
    assert!(
        message.contains(&format!("pg_resetwal -e {epoch} -x {xid}")) && message.contains("Restoring"),
        "{message}"
    );

    // The remedy the message gives: move the counter past the log, with the cluster stopped.
    cluster.stop();
    cluster.reset_wal(&["-e", &epoch.to_string(), "-x", &xid.to_string()]);
    cluster.start_again().await;
    let pool = api::db::connect(&url, 8)
        .await
        .expect("the counter is past the log now");

    // New events come after the restored ones and reach every reader: the read models and
    // the audit log, which tails the global order from the restored checkpoint.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    let server = tokio::spawn(api::serve(api::Settings::default(), pool.clone(), listener));
    let (_, key) = api::cli::create_key(&pool, "acme", "admin", "after-the-move")
        .await
        .expect("key");
    let client = reqwest::Client::new();
    let created = client
        .post(format!("{address}/v1/prompts"))
        .bearer_auth(&key)
        .json(&json!({ "name": "after-the-move" }))
        .send()
        .await
        .expect("create");
    let after = expect_status(created, StatusCode::CREATED).await["id"]
        .as_str()
        .expect("id")
        .to_string();
    for id in [&before, &after] {
        let audited = client
            .get(format!("{address}/v1/audit?aggregate_id={id}"))
            .bearer_auth(&key)
            .send()
            .await
            .expect("audit");
        let audited = expect_status(audited, StatusCode::OK).await;
        assert_eq!(
            audited["items"].as_array().map(Vec::len),
            Some(1),
            "the audit log holds the creation of {id}: {audited}"
        );
    }
    server.abort();
}

#[tokio::test]
async fn events_cannot_be_given_a_transaction_id_or_truncated() {
    let db = TestDatabase::create().await;
    let explicit = sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                             metadata, tenant_id, transaction_id)
         values ('prompt', 'p', 1, 'PromptArchived', '1.0.0', '{}', '{}', 'acme', '1')",
    )
    .execute(&db.pool)
    .await
    .expect_err("an explicit transaction id is refused");
    let explicit = explicit.as_database_error().expect("a database error");
    assert_eq!(explicit.code().as_deref(), Some("23514"), "{explicit}");
    assert!(
        explicit.message().contains("assigned by the database"),
        "{explicit}"
    );

    let truncated = sqlx::query("truncate table events")
        .execute(&db.pool)
        .await
        .expect_err("TRUNCATE is refused");
    assert!(truncated.to_string().contains("append-only"), "{truncated}");
}
