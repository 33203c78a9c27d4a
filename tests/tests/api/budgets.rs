//! Budget definitions: scopes that must exist, exact amounts, thresholds, history.

use integration_tests::harness::{expect_each_not_found, expect_problem, expect_status, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn fields(problem: &Value) -> Vec<String> {
    problem["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .map(|e| e["field"].as_str().expect("field").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budgets_name_what_they_cover_and_keep_their_history() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    app.register_openai().await;
    let model = app.register_model("gpt-4o-mini", json!({})).await;
    let defined = expect_status(
        app.post(
            "/v1/budgets",
            key,
            json!({ "name": "Mini monthly", "scope": { "kind": "model", "id": model }, "period": "monthly",
                    "amount": "500.00", "currency": "USD", "thresholds": [100, 50, 80], "enforcement": "hard" }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let id = defined["id"].as_str().unwrap().to_string();
    assert_eq!(
        defined["scope"],
        json!({ "kind": "model", "id": "openai/gpt-4o-mini" }),
        "named by its reference"
    );
    assert_eq!(defined["amount"], "500");
    assert_eq!(defined["thresholds"], json!([50, 80, 100]));
    let tenant_wide = expect_status(
        app.post(
            "/v1/budgets",
            key,
            json!({ "name": "All LLM spend", "scope": { "kind": "tenant" }, "period": "monthly",
                    "amount": "2000", "currency": "EUR" }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(tenant_wide["thresholds"], json!([50, 80, 100]));
    assert_eq!(tenant_wide["enforcement"], "soft");
    let before_change = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);

    let changed = expect_status(
        app.patch(
            &format!("/v1/budgets/{id}"),
            key,
            json!({ "amount": "750.50", "thresholds": [90], "reason": "Q4 launch" }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        (changed["amount"].as_str(), changed["version"].as_i64()),
        (Some("750.5"), Some(2))
    );
    let past = expect_status(
        app.get(&format!("/v1/budgets/{id}?as_of={before_change}"), key)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(past["amount"], "500");
    let history = expect_status(
        app.get(&format!("/v1/budgets/{id}/history"), key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(history["items"][1]["reason"], "Q4 launch");
    assert_eq!(history["items"][1]["data"]["previous"]["amount"], "500");
    let models = expect_status(app.get("/v1/budgets?scope_kind=model", key).await, StatusCode::OK).await;
    assert_eq!(models["items"].as_array().unwrap().len(), 1);

    // Deprecating the model names the budget over it among what still refers to it.
    let deprecated = expect_status(
        app.post(&format!("/v1/models/{}/deprecate", model), key, json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        deprecated["still_referenced"],
        json!([{ "kind": "budget", "id": id, "version": null, "labels": [] }])
    );

    let events_before = app.event_count().await;
    let refused = app
        .post(
            "/v1/budgets",
            key,
            json!({ "name": "", "scope": { "kind": "model", "id": "openai/none" }, "period": "yearly",
                    "amount": "-5", "currency": "usd", "thresholds": [50, 0], "enforcement": "strict" }),
        )
        .await;
    let problem = expect_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    assert_eq!(
        fields(&problem),
        [
            "name",
            "period",
            "amount",
            "currency",
            "thresholds",
            "enforcement"
        ]
    );
    for (scope, message) in [
        (json!({ "kind": "model", "id": "openai/none" }), "no such model"),
        (
            json!({ "kind": "prompt", "id": uuid::Uuid::new_v4() }),
            "no such prompt",
        ),
        (json!({ "kind": "key", "id": "not-a-key" }), "no such API key"),
        (json!({ "kind": "tenant", "id": "acme" }), "must be absent"),
        (json!({ "kind": "feature" }), "is required"),
        (json!({ "kind": "team", "id": "x" }), "must be one of"),
    ] {
        let refused = app
            .post(
                "/v1/budgets",
                key,
                json!({ "name": "x", "scope": scope, "period": "daily", "amount": "1", "currency": "USD" }),
            )
            .await;
        let problem = expect_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
        assert!(
            problem["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains(message),
            "{problem}"
        );
    }
    let duplicate = app
        .post(
            "/v1/budgets",
            key,
            json!({ "name": "All LLM spend", "scope": { "kind": "feature", "id": "search" }, "period": "daily",
                    "amount": "1", "currency": "USD" }),
        )
        .await;
    expect_problem(duplicate, StatusCode::CONFLICT, "name-taken").await;
    assert_eq!(
        app.event_count().await,
        events_before,
        "nothing recorded for refused budgets"
    );

    // Another tenant sees none of it.
    let other = app.key("globex", "admin").await;
    let b = format!("/v1/budgets/{id}");
    expect_each_not_found(
        &app,
        &other,
        vec![
            (Method::GET, b.clone(), None),
            (Method::GET, format!("{b}?as_of=2999-01-01T00:00:00Z"), None),
            (Method::PATCH, b.clone(), Some(json!({ "amount": "1" }))),
            (Method::DELETE, b.clone(), None),
            (Method::GET, format!("{b}/history"), None),
        ],
        "acme",
    )
    .await;
    let theirs = expect_status(app.get("/v1/budgets", &other).await, StatusCode::OK).await;
    assert_eq!(theirs["items"], json!([]));
    let editor = app.key("acme", "editor").await;
    let refused = app.patch(&b, &editor, json!({ "amount": "1" })).await;
    expect_problem(refused, StatusCode::FORBIDDEN, "forbidden").await;

    expect_status(app.delete(&b, key).await, StatusCode::NO_CONTENT).await;
    expect_problem(app.get(&b, key).await, StatusCode::NOT_FOUND, "not-found").await;
    let history = expect_status(app.get(&format!("{b}/history"), key).await, StatusCode::OK).await;
    assert_eq!(history["items"].as_array().unwrap().len(), 3, "the history stays");
    // Its name is free again.
    expect_status(
        app.post(
            "/v1/budgets",
            key,
            json!({ "name": "Mini monthly", "scope": { "kind": "feature", "id": "search" }, "period": "weekly",
                    "amount": "10", "currency": "USD" }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
}
