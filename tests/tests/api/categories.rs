//! Prompt categories: create, rename, delete only when empty.

use integration_tests::harness::{expect_problem, expect_status, TestApp};
use reqwest::StatusCode;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_category_can_be_renamed_and_deleted_only_once_empty() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    let created = expect_status(
        app.post("/v1/categories", key, json!({ "name": "Support" }))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let id = created["id"].as_str().unwrap().to_string();
    let duplicate = app
        .post("/v1/categories", key, json!({ "name": "support" }))
        .await;
    expect_problem(duplicate, StatusCode::CONFLICT, "name-taken").await;

    let renamed = expect_status(
        app.patch(
            &format!("/v1/categories/{id}"),
            key,
            json!({ "name": "Customer support" }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(renamed["name"], "Customer support");
    // The old name is free again.
    let other = expect_status(
        app.post("/v1/categories", key, json!({ "name": "Support" }))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let other = other["id"].as_str().unwrap().to_string();

    let prompt = expect_status(
        app.post("/v1/prompts", key, json!({ "name": "p", "category": id }))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let prompt = prompt["id"].as_str().unwrap().to_string();
    let refused = app.delete(&format!("/v1/categories/{id}"), key).await;
    let problem = expect_problem(refused, StatusCode::CONFLICT, "conflict").await;
    assert!(problem["detail"].as_str().unwrap().contains("1 prompt"));

    let moved = expect_status(
        app.put(
            &format!("/v1/prompts/{prompt}/category"),
            key,
            json!({ "category": other }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(moved["category"], other.as_str());
    let counts = expect_status(app.get("/v1/categories", key).await, StatusCode::OK).await;
    let count_of = |name: &str| {
        counts["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap()["prompt_count"]
            .clone()
    };
    assert_eq!(count_of("Customer support"), 0);
    assert_eq!(count_of("Support"), 1);

    expect_status(
        app.delete(&format!("/v1/categories/{id}"), key).await,
        StatusCode::NO_CONTENT,
    )
    .await;
    expect_problem(
        app.get(&format!("/v1/categories/{id}"), key).await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
    let into_deleted = app
        .put(
            &format!("/v1/prompts/{prompt}/category"),
            key,
            json!({ "category": id }),
        )
        .await;
    expect_problem(
        into_deleted,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    expect_status(
        app.post("/v1/categories", key, json!({ "name": "Customer support" }))
            .await,
        StatusCode::CREATED,
    )
    .await;
}
