//! Configuration: keys with JSON Schemas, values with reasons, history, and the whole
//! configuration at an instant.

use std::time::{Duration, Instant};

use integration_tests::harness::{
    expect_each_not_found, expect_problem, expect_status, keys_and_values, TestApp,
};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

async fn set(app: &TestApp, key: &str, value: Value, reason: &str) -> Value {
    expect_status(
        app.put(
            &format!("/v1/config/{key}"),
            &app.admin_key,
            json!({ "value": value, "reason": reason }),
        )
        .await,
        StatusCode::OK,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_value_must_match_its_schema_and_every_change_says_why() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    let schema = json!({
        "type": "object",
        "properties": {
            "max_output_tokens": { "type": "integer", "minimum": 1, "maximum": 32000 },
            "models": { "type": "array", "items": { "type": "string" } }
        },
        "required": ["max_output_tokens"],
        "additionalProperties": false
    });
    let declared = expect_status(
        app.put(
            "/v1/config-schemas/limits.defaults",
            key,
            json!({ "schema": schema, "reason": "bound what prompts may ask for" }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(declared["schema"], schema);
    assert_eq!(declared["value"], Value::Null);
    set(
        &app,
        "limits.defaults",
        json!({ "max_output_tokens": 4000, "models": ["openai/gpt-4o-mini"] }),
        "launch",
    )
    .await;

    let events_before = app.event_count().await;
    let violation = app
        .put(
            "/v1/config/limits.defaults",
            key,
            json!({ "value": { "max_output_tokens": 64000, "models": ["a", 7] }, "reason": "more" }),
        )
        .await;
    let problem = expect_problem(violation, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    let mut fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    fields.sort();
    assert_eq!(fields, ["value/max_output_tokens", "value/models/1"], "{problem}");
    let without_reason = app
        .put(
            "/v1/config/limits.defaults",
            key,
            json!({ "value": { "max_output_tokens": 10 } }),
        )
        .await;
    let problem = expect_problem(
        without_reason,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "reason");
    for (path, body, field) in [
        (
            "/v1/config-schemas/limits.x",
            json!({ "schema": { "type": 12 }, "reason": "r" }),
            "schema",
        ),
        (
            "/v1/config-schemas/limits.x",
            json!({ "schema": "string", "reason": "r" }),
            "schema",
        ),
        (
            "/v1/config/limits..x",
            json!({ "value": 1, "reason": "r" }),
            "key",
        ),
        (
            "/v1/config/limits.x",
            json!({ "value": null, "reason": "r" }),
            "value",
        ),
    ] {
        let refused = app.put(path, key, body).await;
        let problem = expect_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
        assert_eq!(problem["errors"][0]["field"], field, "{path}: {problem}");
    }
    // A schema the current value breaks is refused until the value changes.
    let stricter = app
        .put(
            "/v1/config-schemas/limits.defaults",
            key,
            json!({ "schema": { "type": "object", "properties": { "max_output_tokens": { "maximum": 1000 } } },
                    "reason": "tighter" }),
        )
        .await;
    let problem = expect_problem(stricter, StatusCode::CONFLICT, "conflict").await;
    assert!(
        problem["detail"]
            .as_str()
            .unwrap()
            .contains("value/max_output_tokens"),
        "{problem}"
    );
    let clear_without_reason = app.delete("/v1/config/limits.defaults", key).await;
    expect_problem(
        clear_without_reason,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    assert_eq!(
        app.event_count().await,
        events_before,
        "nothing recorded for refused changes"
    );

    set(
        &app,
        "limits.defaults",
        json!({ "max_output_tokens": 2000 }),
        "halve it",
    )
    .await;
    let cleared = app
        .request(Method::DELETE, "/v1/config/limits.defaults", key)
        .header("X-Reason", "back to the provider's default")
        .send()
        .await
        .unwrap();
    expect_status(cleared, StatusCode::NO_CONTENT).await;
    let gone = app.get("/v1/config/limits.defaults", key).await;
    expect_problem(gone, StatusCode::NOT_FOUND, "not-found").await;
    let schema_stays = expect_status(
        app.get("/v1/config-schemas/limits.defaults", key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(schema_stays["schema"], schema);

    let history = expect_status(
        app.get("/v1/config/limits.defaults/history", key).await,
        StatusCode::OK,
    )
    .await;
    let changes: Vec<(String, String, Value, Value)> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["event_type"].as_str().unwrap().to_string(),
                e["reason"].as_str().unwrap_or_default().to_string(),
                e["data"]["previous"].clone(),
                e["data"]["value"].clone(),
            )
        })
        .collect();
    assert_eq!(
        changes,
        [
            (
                "ConfigSchemaDeclared".into(),
                "bound what prompts may ask for".into(),
                Value::Null,
                Value::Null
            ),
            (
                "ConfigValueSet".into(),
                "launch".into(),
                Value::Null,
                json!({ "max_output_tokens": 4000, "models": ["openai/gpt-4o-mini"] })
            ),
            (
                "ConfigValueSet".into(),
                "halve it".into(),
                json!({ "max_output_tokens": 4000, "models": ["openai/gpt-4o-mini"] }),
                json!({ "max_output_tokens": 2000 })
            ),
            (
                "ConfigValueCleared".into(),
                "back to the provider's default".into(),
                json!({ "max_output_tokens": 2000 }),
                Value::Null
            ),
        ]
    );
    assert_eq!(history["items"][1]["actor"]["name"], "test-admin");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_configuration_reads_as_it_was_at_any_instant() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    set(&app, "limits.max_output_tokens", json!(4000), "launch").await;
    set(
        &app,
        "routing.default_model",
        json!("openai/gpt-4o-mini"),
        "launch",
    )
    .await;
    set(&app, "limits.max_requests", json!(100), "launch").await;
    let launch = now();
    set(&app, "limits.max_output_tokens", json!(2000), "cost").await;
    let cleared = app
        .request(Method::DELETE, "/v1/config/routing.default_model", key)
        .header("X-Reason", "route per prompt")
        .send()
        .await
        .unwrap();
    expect_status(cleared, StatusCode::NO_CONTENT).await;
    set(&app, "features.streaming", json!(true), "ship it").await;

    let at_launch = expect_status(
        app.get(&format!("/v1/config?as_of={launch}"), key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        keys_and_values(&at_launch),
        [
            ("limits.max_output_tokens".to_string(), json!(4000)),
            ("limits.max_requests".to_string(), json!(100)),
            ("routing.default_model".to_string(), json!("openai/gpt-4o-mini")),
        ]
    );
    let current = [
        ("features.streaming".to_string(), json!(true)),
        ("limits.max_output_tokens".to_string(), json!(2000)),
        ("limits.max_requests".to_string(), json!(100)),
    ];
    let now_listed = expect_status(app.get("/v1/config", key).await, StatusCode::OK).await;
    assert_eq!(keys_and_values(&now_listed), current);
    let later = expect_status(
        app.get(&format!("/v1/config?as_of={}", now()), key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        keys_and_values(&later),
        current,
        "the log and the read model agree"
    );
    let limits = expect_status(
        app.get(&format!("/v1/config?prefix=limits.&as_of={launch}"), key)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(keys_and_values(&limits).len(), 2);
    let before_anything = expect_status(
        app.get("/v1/config?as_of=2000-01-01T00:00:00Z", key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(before_anything["items"], json!([]));

    let one = expect_status(
        app.get(
            &format!("/v1/config/limits.max_output_tokens?as_of={launch}"),
            key,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(one["value"], 4000);
    let cleared_then = app
        .get(&format!("/v1/config/routing.default_model?as_of={}", now()), key)
        .await;
    expect_problem(cleared_then, StatusCode::NOT_FOUND, "not-found").await;
    for bad in [
        "/v1/config?as_of=yesterday",
        "/v1/config?prefix=a..b",
        "/v1/config?prefix=a%20b",
    ] {
        let refused = app.get(bad, key).await;
        expect_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenant_has_a_configuration_of_its_own() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    expect_status(
        app.put(
            "/v1/config-schemas/limits.max_output_tokens",
            key,
            json!({ "schema": { "type": "integer" }, "reason": "r" }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    set(&app, "limits.max_output_tokens", json!(4000), "launch").await;
    let other = app.key("globex", "admin").await;
    let k = "/v1/config/limits.max_output_tokens";
    expect_each_not_found(
        &app,
        &other,
        vec![
            (Method::GET, k.to_string(), None),
            (Method::GET, format!("{k}?as_of=2999-01-01T00:00:00Z"), None),
            (Method::GET, format!("{k}/history"), None),
            (
                Method::GET,
                "/v1/config-schemas/limits.max_output_tokens".to_string(),
                None,
            ),
        ],
        "acme",
    )
    .await;
    let clear = app
        .request(Method::DELETE, k, &other)
        .header("X-Reason", "r")
        .send()
        .await
        .unwrap();
    expect_problem(clear, StatusCode::NOT_FOUND, "not-found").await;
    let listed = expect_status(app.get("/v1/config", &other).await, StatusCode::OK).await;
    assert_eq!(listed["items"], json!([]));
    // The same key in another tenant is another key: acme's schema does not apply to it.
    let theirs = expect_status(
        app.put(k, &other, json!({ "value": "unlimited", "reason": "theirs" }))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(theirs["value"], "unlimited");
    let ours = expect_status(app.get(k, key).await, StatusCode::OK).await;
    assert_eq!(ours["value"], 4000);
    let viewer = app.key("acme", "viewer").await;
    let refused = app.put(k, &viewer, json!({ "value": 1, "reason": "r" })).await;
    expect_problem(refused, StatusCode::FORBIDDEN, "forbidden").await;
}

fn in_seconds(seconds: f64) -> (chrono::DateTime<chrono::Utc>, String) {
    let at = chrono::Utc::now() + chrono::Duration::milliseconds((seconds * 1000.0) as i64);
    (at, at.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_schedule_whose_time_passed_while_nothing_ran_applies_at_the_next_start() {
    let app = TestApp::spawn().await;
    set(&app, "limits.max_output_tokens", json!(4000), "launch").await;
    let (at, at_text) = in_seconds(1.5);
    let scheduled = expect_status(
        app.post(
            "/v1/config/limits.max_output_tokens/schedule",
            &app.admin_key,
            json!({ "value": 8000, "at": at_text, "reason": "holiday traffic" }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let id = scheduled["id"].as_str().unwrap().to_string();
    assert_eq!(scheduled["state"], "pending");
    assert_eq!(scheduled["reason"], "holiday traffic");

    // No process runs while its time passes.
    app.stop();
    while chrono::Utc::now() <= at + chrono::Duration::milliseconds(100) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stored: Value = sqlx::query_scalar(
        "select value from config_entry where tenant_id = 'acme' and key = 'limits.max_output_tokens'",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(stored, json!(4000), "nothing applied it while nothing ran");

    let restarted = app.spawn_peer().await;
    let get = |path: String| {
        let request = app
            .client
            .get(format!("{}{path}", restarted.address))
            .bearer_auth(&app.admin_key);
        async move { request.send().await.unwrap() }
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    let applied = loop {
        let schedule = expect_status(get(format!("/v1/schedules/{id}")).await, StatusCode::OK).await;
        if schedule["state"] != "pending" {
            break schedule;
        }
        assert!(
            Instant::now() < deadline,
            "the schedule was not applied at start-up"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(applied["state"], "applied");
    let value = expect_status(
        get("/v1/config/limits.max_output_tokens".into()).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(value["value"], 8000);
    let history = expect_status(
        get("/v1/config/limits.max_output_tokens/history".into()).await,
        StatusCode::OK,
    )
    .await;
    let last = history["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["event_type"], "ConfigScheduleApplied");
    assert_eq!(last["actor"]["name"], "scheduler");
    assert_eq!(last["data"]["previous"], 4000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_before_its_time_cancels_a_schedule_as_a_conflict() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    expect_status(
        app.put(
            "/v1/config-schemas/limits.max_output_tokens",
            key,
            json!({ "schema": { "type": "integer", "maximum": 32000 }, "reason": "r" }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let schedule = |value: Value| {
        let (_, at) = in_seconds(3600.0);
        app.post(
            "/v1/config/limits.max_output_tokens/schedule",
            key,
            json!({ "value": value, "at": at, "reason": "tonight" }),
        )
    };
    let first = expect_status(schedule(json!(8000)).await, StatusCode::CREATED).await;
    let first = first["id"].as_str().unwrap().to_string();
    let changed = set(&app, "limits.max_output_tokens", json!(2000), "cost").await;
    let cancelled = expect_status(
        app.get(&format!("/v1/schedules/{first}"), key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(cancelled["state"], "cancelled");
    assert_eq!(cancelled["cancelled_because"], "conflict");
    assert_eq!(
        cancelled["conflicting_version"],
        changed["version"].as_i64().unwrap() - 1
    );
    let value = expect_status(
        app.get("/v1/config/limits.max_output_tokens", key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(value["value"], 2000, "the later change stands");

    let second = expect_status(schedule(json!(16000)).await, StatusCode::CREATED).await;
    let second = second["id"].as_str().unwrap().to_string();
    let cancel = |key: &str| {
        app.request(Method::DELETE, &format!("/v1/schedules/{second}"), key)
            .header("X-Reason", "not tonight")
            .send()
    };
    let other = app.key("globex", "admin").await;
    expect_problem(cancel(&other).await.unwrap(), StatusCode::NOT_FOUND, "not-found").await;
    let withdrawn = expect_status(cancel(key).await.unwrap(), StatusCode::OK).await;
    assert_eq!(withdrawn["cancelled_because"], "cancelled");
    expect_problem(cancel(key).await.unwrap(), StatusCode::NOT_FOUND, "not-found").await;
    let listed = expect_status(
        app.get("/v1/schedules?state=cancelled", key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);

    let events_before = app.event_count().await;
    let (_, later) = in_seconds(3600.0);
    for (body, field) in [
        (
            json!({ "value": 8000, "at": "2020-01-01T00:00:00Z", "reason": "r" }),
            "at",
        ),
        (json!({ "value": 8000, "at": "tonight", "reason": "r" }), "at"),
        (json!({ "value": 64000, "at": later, "reason": "r" }), "value"),
        (json!({ "value": 8000, "at": later }), "reason"),
    ] {
        let refused = app
            .post("/v1/config/limits.max_output_tokens/schedule", key, body)
            .await;
        let problem = expect_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    let bad_state = app.get("/v1/schedules?state=later", key).await;
    expect_problem(bad_state, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    assert_eq!(
        app.event_count().await,
        events_before,
        "nothing recorded for refused schedules"
    );
    expect_each_not_found(
        &app,
        &other,
        vec![(Method::GET, format!("/v1/schedules/{first}"), None)],
        "acme",
    )
    .await;
    let theirs = expect_status(app.get("/v1/schedules", &other).await, StatusCode::OK).await;
    assert_eq!(theirs["items"], json!([]));
}
