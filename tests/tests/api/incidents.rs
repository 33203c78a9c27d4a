//! Incidents: opening one records the changes of the 24 hours before it that touch what it
//! affects; updates and resolution make its timeline; a provider that goes down can open
//! one itself.

use integration_tests::harness::{expect_each_not_found, expect_problem, expect_status, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use crate::health::{register_local, run_checks, Behaviour, FakeProvider};

fn price(from: &str, input: &str) -> Value {
    json!({ "effective_from": from, "input_per_mtok": input, "output_per_mtok": "1", "currency": "USD",
            "reason": "new list price" })
}

/// `(event_type, aggregate_id)` of each related change.
fn related(incident: &Value) -> Vec<(String, String)> {
    incident["related_changes"]
        .as_array()
        .expect("related_changes")
        .iter()
        .map(|c| {
            (
                c["event_type"].as_str().expect("event_type").to_string(),
                c["aggregate_id"].as_str().expect("aggregate_id").to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incident_records_the_changes_before_it_that_touch_what_it_affects() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    let openai = app.register_openai().await;
    let mini = app.register_model("gpt-4o-mini", json!({})).await;
    let big = app.register_model("gpt-4o", json!({})).await;
    let anthropic = expect_status(
        app.post(
            "/v1/providers",
            key,
            json!({ "name": "anthropic", "kind": "anthropic", "base_url": "https://api.anthropic.com",
                    "credential_ref": "env:ANTHROPIC_KEY" }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let claude = expect_status(
        app.post(
            "/v1/models",
            key,
            json!({ "provider": "anthropic", "model_id": "claude" }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await["id"]
        .as_str()
        .unwrap()
        .to_string();

    // What changed: the mini model's parameters and price, a label moved onto a version
    // using it, a configuration value naming it; and, unrelated, the other models' prices
    // and a configuration value naming none of them.
    expect_status(
        app.put(
            &format!("/v1/models/{mini}/default-params"),
            key,
            json!({ "default_params": { "temperature": 1.5 }, "reason": "livelier" }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    for model in [&mini, &big, &claude] {
        expect_status(
            app.post(
                &format!("/v1/models/{model}/prices"),
                key,
                price("2026-01-01T00:00:00Z", "0.15"),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
    }
    let prompt = app.create_prompt("support-reply").await;
    expect_status(
        app.post(
            &format!("/v1/prompts/{prompt}/versions"),
            key,
            json!({ "template": "Hi", "model": "openai/gpt-4o-mini" }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    expect_status(
        app.put(
            &format!("/v1/prompts/{prompt}/labels/production"),
            key,
            json!({ "version": 1 }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    for (config, value) in [
        ("routing.default", json!({ "model": "openai/gpt-4o-mini" })),
        ("limits.max-tokens", json!(4000)),
    ] {
        expect_status(
            app.put(
                &format!("/v1/config/{config}"),
                key,
                json!({ "value": value, "reason": "tune" }),
            )
            .await,
            StatusCode::OK,
        )
        .await;
    }

    let opened = app
        .post(
            "/v1/incidents",
            key,
            json!({ "severity": "sev2", "title": "Support replies are gibberish",
                    "affected": { "models": ["openai/gpt-4o-mini"] }, "reason": "customers report it" }),
        )
        .await;
    assert_eq!(opened.headers()["etag"], "\"1\"");
    let location = opened.headers()["location"].to_str().unwrap().to_string();
    let incident = expect_status(opened, StatusCode::CREATED).await;
    let id = incident["id"].as_str().unwrap().to_string();
    assert_eq!(location, format!("/v1/incidents/{id}"));
    assert_eq!(incident["status"], "investigating");
    assert_eq!(incident["opened_by"], "manual");
    assert_eq!(
        incident["affected"],
        json!({ "models": ["openai/gpt-4o-mini"], "features": [], "providers": [] })
    );
    let config_id = "acme:routing.default".to_string();
    // Newest first: the model's changes, its provider's registration, the label move and
    // the configuration naming it; nothing of the other models or the other key.
    assert_eq!(
        related(&incident),
        [
            ("ConfigValueSet".to_string(), config_id),
            ("PromptLabelMoved".to_string(), prompt.clone()),
            ("ModelPriceSet".to_string(), mini.clone()),
            ("ModelDefaultParamsSet".to_string(), mini.clone()),
            ("ModelRegistered".to_string(), mini.clone()),
            ("ProviderRegistered".to_string(), openai.clone()),
        ]
    );
    let params = &incident["related_changes"][3];
    assert_eq!(params["actor"], "test-admin");
    assert_eq!(params["reason"], "livelier");
    assert_eq!(params["aggregate_type"], "model");
    assert_eq!(params["why"], "changes the model openai/gpt-4o-mini");
    assert!(params["recorded_at"].is_string());

    // A provider brings in its models' changes; features bring in every configuration change.
    let by_provider = expect_status(
        app.post(
            "/v1/incidents",
            key,
            json!({ "severity": "sev3", "title": "Anthropic errors", "affected": { "providers": ["anthropic"] } }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(
        related(&by_provider),
        [
            ("ModelPriceSet".to_string(), claude.clone()),
            ("ModelRegistered".to_string(), claude.clone()),
            ("ProviderRegistered".to_string(), anthropic.clone()),
        ]
    );
    let by_feature = expect_status(
        app.post(
            "/v1/incidents",
            key,
            json!({ "severity": "sev4", "title": "Checkout slow", "affected": { "features": ["checkout"] } }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let types: Vec<String> = related(&by_feature).into_iter().map(|(t, _)| t).collect();
    assert_eq!(types, ["ConfigValueSet", "ConfigValueSet", "PromptLabelMoved"]);

    // Updates and the resolution make the timeline; a resolved incident takes no more.
    let path = format!("/v1/incidents/{id}");
    let before_update = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let updated = expect_status(
        app.post(
            &format!("{path}/updates"),
            key,
            json!({ "message": "The temperature change did it", "status": "identified" }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(updated["status"], "identified");
    assert_eq!(updated["version"], 2);
    let resolved = expect_status(
        app.post(
            &format!("{path}/resolve"),
            key,
            json!({ "summary": "Default parameters rolled back" }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(resolved["status"], "resolved");
    assert_eq!(resolved["summary"], "Default parameters rolled back");
    assert!(resolved["resolved_at"].is_string());
    let timeline: Vec<(&str, &str, &str)> = resolved["timeline"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["kind"].as_str().unwrap(),
                e["status"].as_str().unwrap(),
                e["message"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        timeline,
        [
            ("opened", "investigating", "Support replies are gibberish"),
            ("updated", "identified", "The temperature change did it"),
            ("resolved", "resolved", "Default parameters rolled back"),
        ]
    );
    assert_eq!(resolved["timeline"][1]["by"], "test-admin");
    for (route, body) in [
        ("updates", json!({ "message": "again?" })),
        ("resolve", json!({ "summary": "again" })),
    ] {
        expect_problem(
            app.post(&format!("{path}/{route}"), key, body).await,
            StatusCode::CONFLICT,
            "conflict",
        )
        .await;
    }

    // As it was, its history, and the listing by status.
    let past = expect_status(
        app.get(&format!("{path}?as_of={before_update}"), key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(past["status"], "investigating");
    assert_eq!(past["timeline"].as_array().unwrap().len(), 1);
    assert_eq!(past["related_changes"], incident["related_changes"]);
    let now = expect_status(app.get(&path, key).await, StatusCode::OK).await;
    assert_eq!(now, resolved);
    let history = expect_status(app.get(&format!("{path}/history"), key).await, StatusCode::OK).await;
    let types: Vec<&str> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["IncidentOpened", "IncidentUpdated", "IncidentResolved"]);
    assert_eq!(history["items"][0]["reason"], "customers report it");
    let listed = expect_status(
        app.get("/v1/incidents?status=resolved", key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
    assert_eq!(listed["items"][0]["id"], id.as_str());
    let all = expect_status(app.get("/v1/incidents", key).await, StatusCode::OK).await;
    assert_eq!(all["items"].as_array().unwrap().len(), 3);
    assert_eq!(all["items"][0]["title"], "Checkout slow", "newest first");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_incidents_are_refused_and_another_tenants_are_not_found() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    app.register_openai().await;
    let problem = expect_problem(
        app.post(
            "/v1/incidents",
            key,
            json!({ "severity": "p1", "title": " ", "affected": {} }),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["severity", "title"]);
    let problem = expect_problem(
        app.post(
            "/v1/incidents",
            key,
            json!({ "severity": "sev1", "title": "x",
                    "affected": { "models": ["openai/nope"], "providers": ["nope"], "features": ["Not A Slug"] } }),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "affected.features", "{problem}");
    let problem = expect_problem(
        app.post(
            "/v1/incidents",
            key,
            json!({ "severity": "sev1", "title": "x", "affected": { "models": ["openai/nope"], "providers": ["nope"] } }),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["affected.models", "affected.providers"]);
    for body in [
        json!({ "severity": "sev1", "title": "x" }),
        json!({ "severity": "sev1", "title": "x", "affected": {}, "extra": 1 }),
    ] {
        expect_problem(
            app.post("/v1/incidents", key, body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed",
        )
        .await;
    }
    expect_problem(
        app.get("/v1/incidents?status=broken", key).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;

    let incident = expect_status(
        app.post(
            "/v1/incidents",
            key,
            json!({ "severity": "sev1", "title": "Secret outage", "affected": { "providers": ["openai"] } }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let id = incident["id"].as_str().unwrap();
    let path = format!("/v1/incidents/{id}");
    for (body, field) in [
        (json!({ "message": "" }), "message"),
        (json!({ "message": "x", "status": "resolved" }), "status"),
    ] {
        let problem = expect_problem(
            app.post(&format!("{path}/updates"), key, body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed",
        )
        .await;
        assert_eq!(problem["errors"][0]["field"], field);
    }
    let viewer = app.key("acme", "viewer").await;
    expect_problem(
        app.post(&format!("{path}/resolve"), &viewer, json!({ "summary": "x" }))
            .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;

    let other = app.key("globex", "admin").await;
    expect_each_not_found(
        &app,
        &other,
        vec![
            (Method::GET, path.clone(), None),
            (Method::GET, format!("{path}?as_of=2030-01-01T00:00:00Z"), None),
            (Method::GET, format!("{path}/history"), None),
            (
                Method::POST,
                format!("{path}/updates"),
                Some(json!({ "message": "mine now" })),
            ),
            (
                Method::POST,
                format!("{path}/resolve"),
                Some(json!({ "summary": "mine now" })),
            ),
        ],
        "Secret outage",
    )
    .await;
    let theirs = expect_status(app.get("/v1/incidents", &other).await, StatusCode::OK).await;
    assert_eq!(theirs["items"], json!([]));
    // Another tenant's provider cannot be named either.
    let problem = expect_problem(
        app.post(
            "/v1/incidents",
            &other,
            json!({ "severity": "sev1", "title": "x", "affected": { "providers": ["openai"] } }),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "affected.providers");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_going_down_opens_one_incident_per_down_spell_when_configured() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    let fake = FakeProvider::start().await;
    let provider = register_local(&app, &fake).await;
    expect_status(
        app.put(
            &format!("/v1/providers/{provider}/health-check"),
            key,
            json!({ "open_incident_on_down": true, "reason": "page us" }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    fake.set(Behaviour::Failing);
    let mut opened = Vec::new();
    for _ in 0..5 {
        let result = run_checks(&app, key, &provider).await;
        if let Some(id) = result["incident_id"].as_str() {
            assert_eq!(result["state"], "down");
            opened.push(id.to_string());
        }
    }
    assert_eq!(opened.len(), 1, "one incident for the down spell");
    let incident = expect_status(
        app.get(&format!("/v1/incidents/{}", opened[0]), key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(incident["opened_by"], "auto");
    assert_eq!(incident["title"], "Provider local is down");
    assert_eq!(incident["affected"]["providers"], json!(["local"]));
    assert_eq!(incident["timeline"][0]["by"], "health-prober");
    // The provider's own changes before it are its related changes.
    let types: Vec<&str> = incident["related_changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["ProviderHealthCheckSet", "ProviderRegistered"]);
    assert_eq!(incident["related_changes"][0]["reason"], "page us");

    // Healthy again, then down again: a second spell, a second incident.
    fake.set(Behaviour::Ok);
    assert_eq!(run_checks(&app, key, &provider).await["state"], "healthy");
    fake.set(Behaviour::Failing);
    for _ in 0..3 {
        if let Some(id) = run_checks(&app, key, &provider).await["incident_id"].as_str() {
            opened.push(id.to_string());
        }
    }
    assert_eq!(opened.len(), 2);
    assert_ne!(opened[0], opened[1]);
    let listed = expect_status(app.get("/v1/incidents", key).await, StatusCode::OK).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);

    // Without the setting, going down opens nothing.
    expect_status(
        app.put(&format!("/v1/providers/{provider}/health-check"), key, json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    fake.set(Behaviour::Ok);
    run_checks(&app, key, &provider).await;
    fake.set(Behaviour::Failing);
    for _ in 0..3 {
        assert_eq!(run_checks(&app, key, &provider).await["incident_id"], Value::Null);
    }
    let listed = expect_status(app.get("/v1/incidents", key).await, StatusCode::OK).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 2);
}
