//! Bad input gets a problem+json 4xx, never a 500 and never a partial write.

use integration_tests::harness::{expect_problem, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_bodies_are_problems_and_write_nothing() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    let id = app.create_prompt("p").await;
    let events_before = app.event_count().await;
    let versions = format!("/v1/prompts/{id}/versions");

    let raw = |path: &str, body: &'static str| {
        app.request(Method::POST, path, key)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    expect_problem(
        raw("/v1/prompts", "{\"name\":").await.unwrap(),
        StatusCode::BAD_REQUEST,
        "malformed-request",
    )
    .await;
    expect_problem(
        raw("/v1/prompts", "[]").await.unwrap(),
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    let wrong_type = app.post("/v1/prompts", key, json!({ "name": 5 })).await;
    expect_problem(wrong_type, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    let unknown = app
        .post("/v1/prompts", key, json!({ "name": "x", "colour": "red" }))
        .await;
    let body = expect_problem(unknown, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    assert!(body["errors"][0]["message"].as_str().unwrap().contains("colour"));
    let long = app
        .post(
            "/v1/prompts",
            key,
            json!({ "name": "x".repeat(201), "tags": ["Bad Tag"] }),
        )
        .await;
    let body = expect_problem(long, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["name", "tags"], "every offending field is listed");
    let no_type = app
        .request(Method::POST, "/v1/prompts", key)
        .body("{\"name\":\"x\"}")
        .send()
        .await
        .unwrap();
    expect_problem(
        no_type,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported-media-type",
    )
    .await;
    // The server answers before reading the whole body and then closes the connection, as
    // HTTP allows; this request must not leave the client a pooled connection to reuse.
    let huge = app
        .request(Method::POST, "/v1/prompts", key)
        .header("connection", "close")
        .json(&json!({ "name": "x", "description": "y".repeat(2 * 1024 * 1024) }))
        .send()
        .await
        .unwrap();
    expect_problem(huge, StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large").await;

    let unbalanced = app
        .post(&versions, key, json!({ "template": "Hello {{name" }))
        .await;
    let body = expect_problem(unbalanced, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    assert_eq!(body["errors"][0]["field"], "template");
    let stray = app
        .post(&versions, key, json!({ "template": "Hello name}}" }))
        .await;
    expect_problem(stray, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    let params = app
        .post(&versions, key, json!({ "template": "ok", "params": [1, 2] }))
        .await;
    expect_problem(params, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    let label = app
        .put(
            &format!("/v1/prompts/{id}/labels/production"),
            key,
            json!({ "version": 3 }),
        )
        .await;
    expect_problem(label, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    let negative = app
        .put(
            &format!("/v1/prompts/{id}/labels/production"),
            key,
            json!({ "version": -1 }),
        )
        .await;
    expect_problem(negative, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    let bad_label = app
        .put(
            &format!("/v1/prompts/{id}/labels/Prod%20X"),
            key,
            json!({ "version": 1 }),
        )
        .await;
    expect_problem(bad_label, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    let bad_id = app.get("/v1/prompts/not-a-uuid", key).await;
    expect_problem(bad_id, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    let bad_as_of = app.get(&format!("/v1/prompts/{id}?as_of=yesterday"), key).await;
    expect_problem(bad_as_of, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    let bad_limit = app.get("/v1/prompts?limit=0", key).await;
    expect_problem(bad_limit, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    let bad_if_match = app
        .request(Method::PUT, &format!("/v1/prompts/{id}/labels/x"), key)
        .header("if-match", "soon")
        .json(&json!({ "version": 1 }))
        .send()
        .await
        .unwrap();
    expect_problem(
        bad_if_match,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;

    expect_problem(
        app.get("/v1/nothing-here", key).await,
        StatusCode::NOT_FOUND,
        "no-route",
    )
    .await;
    expect_problem(
        app.delete("/v1/prompts", key).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method-not-allowed",
    )
    .await;
    let unknown_prompt = app
        .post(
            &format!("/v1/prompts/{}/versions", uuid::Uuid::new_v4()),
            key,
            json!({ "template": "x" }),
        )
        .await;
    expect_problem(unknown_prompt, StatusCode::NOT_FOUND, "not-found").await;

    assert_eq!(
        app.event_count().await,
        events_before,
        "no rejected request appended an event"
    );
}
