//! Optimistic concurrency: ETag / If-Match, racing commands, transparent retries.

use integration_tests::harness::{expect_problem, expect_status, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_if_match_is_a_conflict_that_names_the_current_version() {
    let app = TestApp::spawn().await;
    let id = app.create_prompt("p").await;
    app.publish(&id, "one").await;
    app.publish(&id, "two").await;
    let current = app.get(&format!("/v1/prompts/{id}"), &app.admin_key).await;
    assert_eq!(current.headers()["etag"], "\"3\"");

    let path = format!("/v1/prompts/{id}/labels/production");
    let stale = app
        .request(Method::PUT, &path, &app.admin_key)
        .header("if-match", "\"2\"")
        .json(&json!({ "version": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(stale.headers()["etag"], "\"3\"");
    let problem = expect_problem(stale, StatusCode::CONFLICT, "version-mismatch").await;
    assert_eq!(problem["current_version"], 3);

    let fresh = app
        .request(Method::PUT, &path, &app.admin_key)
        .header("if-match", "\"3\"")
        .json(&json!({ "version": 1 }))
        .send()
        .await
        .unwrap();
    assert_eq!(fresh.headers()["etag"], "\"4\"");
    expect_status(fresh, StatusCode::OK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_commands_with_the_same_if_match_let_exactly_one_win() {
    let app = TestApp::spawn().await;
    let id = app.create_prompt("p").await;
    for i in 0..3 {
        app.publish(&id, &format!("v{i}")).await;
    }
    let path = format!("/v1/prompts/{id}/versions");
    let racers = (0..16).map(|i| {
        app.request(Method::POST, &path, &app.admin_key)
            .header("if-match", "\"4\"")
            .json(&json!({ "template": format!("racer {i}") }))
            .send()
    });
    let results = futures::future::join_all(racers).await;
    let statuses: Vec<StatusCode> = results.into_iter().map(|r| r.unwrap().status()).collect();
    assert_eq!(created_and_conflicted(&statuses), (1, 15), "{statuses:?}");
    let prompt = expect_status(
        app.get(&format!("/v1/prompts/{id}"), &app.admin_key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(prompt["latest_version"], 4);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn racing_commands_without_if_match_all_succeed_with_distinct_versions() {
    let app = TestApp::spawn().await;
    let id = app.create_prompt("p").await;
    let path = format!("/v1/prompts/{id}/versions");
    let racers =
        (0..24).map(|i| app.post(&path, &app.admin_key, json!({ "template": format!("racer {i}") })));
    let mut versions = Vec::new();
    for response in futures::future::join_all(racers).await {
        versions.push(
            expect_status(response, StatusCode::CREATED).await["version"]
                .as_i64()
                .unwrap(),
        );
    }
    versions.sort();
    assert_eq!(versions, (1..=24).collect::<Vec<i64>>());
    let listed = expect_status(
        app.get(&format!("{path}?limit=1000"), &app.admin_key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 24);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_prompts_created_at_once_with_one_name_yield_one_prompt() {
    let app = TestApp::spawn().await;
    let racers = (0..10).map(|_| app.post("/v1/prompts", &app.admin_key, json!({ "name": "same" })));
    let statuses: Vec<StatusCode> = futures::future::join_all(racers)
        .await
        .into_iter()
        .map(|r| r.status())
        .collect();
    assert_eq!(created_and_conflicted(&statuses), (1, 9), "{statuses:?}");
    let listed = expect_status(app.get("/v1/prompts", &app.admin_key).await, StatusCode::OK).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_on_one_database_never_lose_an_update() {
    let app = TestApp::spawn().await;
    let peer = app.spawn_peer().await;
    let key = &app.admin_key;
    let id = app.create_prompt("shared").await;
    let publish = |address: String, i: usize, if_match: Option<&'static str>| {
        let mut request = app
            .client
            .post(format!("{address}/v1/prompts/{id}/versions"))
            .bearer_auth(key)
            .json(&json!({ "template": format!("v{i}") }));
        if let Some(etag) = if_match {
            request = request.header("if-match", etag);
        }
        request.send()
    };
    // Each server's cached copy goes stale in turn; neither loses the other's write.
    for i in 0..4 {
        let address = if i % 2 == 0 {
            app.address.clone()
        } else {
            peer.address.clone()
        };
        let body = expect_status(publish(address, i, None).await.unwrap(), StatusCode::CREATED).await;
        assert_eq!(body["version"], i + 1);
        // Read-your-writes holds across servers: the other one sees it at once.
        let other = if i % 2 == 0 { &peer.address } else { &app.address };
        let seen = app
            .client
            .get(format!("{other}/v1/prompts/{id}"))
            .bearer_auth(key)
            .send()
            .await
            .unwrap();
        assert_eq!(expect_status(seen, StatusCode::OK).await["latest_version"], i + 1);
    }
    let racers = (0..20).map(|i| {
        let address = if i % 2 == 0 {
            app.address.clone()
        } else {
            peer.address.clone()
        };
        publish(address, 100 + i, None)
    });
    let mut versions = Vec::new();
    for response in futures::future::join_all(racers).await {
        versions.push(
            expect_status(response.unwrap(), StatusCode::CREATED).await["version"]
                .as_i64()
                .unwrap(),
        );
    }
    versions.sort();
    assert_eq!(versions, (5..=24).collect::<Vec<i64>>());
    // With the same If-Match on both servers, exactly one of all racers wins.
    let racers = (0..10).map(|i| {
        let address = if i % 2 == 0 {
            app.address.clone()
        } else {
            peer.address.clone()
        };
        publish(address, 200 + i, Some("\"25\""))
    });
    let statuses: Vec<StatusCode> = futures::future::join_all(racers)
        .await
        .into_iter()
        .map(|r| r.unwrap().status())
        .collect();
    assert_eq!(created_and_conflicted(&statuses), (1, 9), "{statuses:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn creating_with_an_id_that_exists_falls_back_to_the_stored_state() {
    use domain::prompt::{Prompt, PromptCommand, PromptError};
    use domain::text::DisplayName;
    let app = TestApp::spawn().await;
    let id = app.create_prompt("original").await;
    let store = commands::EventStore::new(app.pool().clone(), projections::inline()).aggregates::<Prompt>(());
    let metadata = commands::CommandMetadata {
        tenant: "acme".into(),
        ..Default::default()
    };
    let command = PromptCommand::CreatePrompt {
        tenant: "acme".into(),
        name: DisplayName::parse("name", "impostor").unwrap(),
        category: None,
        description: String::new(),
        tags: Default::default(),
    };
    let result = store.create(&id, command, &metadata).await;
    assert!(
        matches!(
            result,
            Err(commands::CommandError::Rejected(PromptError::AlreadyExists))
        ),
        "{result:?}"
    );
    let prompt = expect_status(
        app.get(&format!("/v1/prompts/{id}"), &app.admin_key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(prompt["name"], "original");
}

/// How many of `statuses` are 201 Created and how many 409 Conflict.
fn created_and_conflicted(statuses: &[StatusCode]) -> (usize, usize) {
    let count = |wanted: StatusCode| statuses.iter().filter(|s| **s == wanted).count();
    (count(StatusCode::CREATED), count(StatusCode::CONFLICT))
}
