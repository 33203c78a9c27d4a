//! What a command answered survives a crash of PostgreSQL right after the answer.

use integration_tests::harness::expect_status;
use integration_tests::postgres::PrivateCluster;
use reqwest::StatusCode;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_revocation_answered_204_survives_an_immediate_stop_of_postgresql() {
    // A cluster of its own: it is stopped as a crash would stop it. It writes asynchronous
    // commits out only every ten seconds, so one still in memory at the stop is lost.
    let cluster = PrivateCluster::start().await;
    let url = format!("{}/aipm", cluster.server_url());
    let pool = api::db::connect(&url, 8).await.expect("database");
    let (_, admin) = api::cli::create_key(&pool, "acme", "admin", "admin")
        .await
        .expect("admin");
    let (doomed_id, doomed) = api::cli::create_key(&pool, "acme", "viewer", "doomed")
        .await
        .expect("key");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    let server = tokio::spawn(api::serve(api::Settings::default(), pool.clone(), listener));
    let client = reqwest::Client::new();
    let read = |key: String| {
        let request = client.get(format!("{address}/v1/prompts")).bearer_auth(key);
        async move { request.send().await.expect("read") }
    };
    expect_status(read(doomed.clone()).await, StatusCode::OK).await;

    let revoked = client
        .delete(format!("{address}/v1/keys/{doomed_id}"))
        .bearer_auth(&admin)
        .send()
        .await
        .expect("revoke");
    expect_status(revoked, StatusCode::NO_CONTENT).await;
    cluster.stop_immediately();
    server.abort();

    cluster.start_again().await;
    let pool = api::db::connect(&url, 8).await.expect("database after the crash");
    // Before any server could re-apply anything: the key is revoked in what authentication
    // reads.
    assert!(
        api::auth::find_key(&pool, &doomed)
            .await
            .expect("lookup")
            .is_none(),
        "a key revoked with a 204 must stay revoked after a crash"
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    let server = tokio::spawn(api::serve(api::Settings::default(), pool.clone(), listener));
    let response = client
        .get(format!("{address}/v1/prompts"))
        .bearer_auth(&doomed)
        .send()
        .await
        .expect("read");
    expect_status(response, StatusCode::UNAUTHORIZED).await;
    server.abort();
}
