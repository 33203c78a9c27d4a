//! The model registry: providers, models, their status and effective-dated prices.

use integration_tests::harness::{expect_each_not_found, expect_problem, expect_status, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// Registers the provider `openai` and the model `openai/gpt-4o-mini`; returns their ids.
async fn provider_and_model(app: &TestApp) -> (String, String) {
    let provider = app.register_openai().await;
    let model = app
        .register_model(
            "gpt-4o-mini",
            json!({ "context_window": 128000, "capabilities": ["chat", "vision"] }),
        )
        .await;
    (provider, model)
}

fn price(from: &str, input: &str, output: &str) -> Value {
    json!({ "effective_from": from, "input_per_mtok": input, "output_per_mtok": output, "currency": "USD" })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_keeps_only_a_reference_to_its_secret_and_its_history() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    let (provider, _) = provider_and_model(&app).await;
    let before_change = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);

    let changed = expect_status(
        app.patch(
            &format!("/v1/providers/{provider}"),
            key,
            json!({ "credential_ref": "file:/run/secrets/openai", "enabled": false, "reason": "rotate" }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(changed["credential_ref"], "file:/run/secrets/openai");
    assert_eq!(changed["enabled"], false);
    assert_eq!(changed["version"], 2);
    let past = expect_status(
        app.get(&format!("/v1/providers/{provider}?as_of={before_change}"), key)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(past["credential_ref"], "env:OPENAI_API_KEY");
    assert_eq!(past["enabled"], true);
    let history = expect_status(
        app.get(&format!("/v1/providers/{provider}/history"), key).await,
        StatusCode::OK,
    )
    .await;
    let types: Vec<&str> = history["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_type"].as_str().unwrap())
        .collect();
    assert_eq!(types, ["ProviderRegistered", "ProviderUpdated"]);
    assert_eq!(history["items"][1]["reason"], "rotate");
    let listed = expect_status(app.get("/v1/providers", key).await, StatusCode::OK).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);

    // A secret pasted where a reference belongs, or carried in the URL, is refused, and none
    // of it reaches the log.
    let events_before = app.event_count().await;
    let secret = "sk-proj-abcdefghijklmnopqrstuvwxyz0123456789";
    for (body, field) in [
        (json!({ "credential_ref": secret }), "credential_ref"),
        (
            json!({ "credential_ref": format!("env:{secret}") }),
            "credential_ref",
        ),
        (
            json!({ "base_url": format!("https://user:{secret}@api.openai.com/v1") }),
            "base_url",
        ),
        (
            json!({ "base_url": format!("https://api.openai.com/v1?api-key={secret}") }),
            "base_url",
        ),
        (
            json!({ "base_url": format!("https://x.openai.azure.com/?api-version=1&token={secret}") }),
            "base_url",
        ),
        (json!({ "kind": "mystery" }), "kind"),
    ] {
        let refused = app.patch(&format!("/v1/providers/{provider}"), key, body).await;
        let problem = expect_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
        assert!(
            !problem.to_string().contains(secret),
            "the answer echoes no secret: {problem}"
        );
    }
    let azure = app
        .post(
            "/v1/providers",
            key,
            json!({ "name": "azure", "kind": "azure-openai", "credential_ref": "env:AZURE_KEY",
                    "base_url": "https://x.openai.azure.com/openai?api-version=2024-06-01" }),
        )
        .await;
    expect_status(azure, StatusCode::CREATED).await;
    let duplicate = app
        .post(
            "/v1/providers",
            key,
            json!({ "name": "openai", "kind": "openai", "base_url": "https://example.com",
                    "credential_ref": "env:K" }),
        )
        .await;
    expect_problem(duplicate, StatusCode::CONFLICT, "name-taken").await;
    let stored: i64 = sqlx::query_scalar("select count(*) from events where payload::text like $1")
        .bind(format!("%{secret}%"))
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert_eq!(stored, 0);
    assert_eq!(
        app.event_count().await,
        events_before + 1,
        "only the azure provider was recorded"
    );

    let editor = app.key("acme", "editor").await;
    let refused = app
        .patch(
            &format!("/v1/providers/{provider}"),
            &editor,
            json!({ "enabled": true }),
        )
        .await;
    expect_problem(refused, StatusCode::FORBIDDEN, "forbidden").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_are_found_by_id_or_reference_and_refused_when_they_name_nothing() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    let (_, model) = provider_and_model(&app).await;
    let by_reference = expect_status(
        app.get("/v1/models/openai%2Fgpt-4o-mini", key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(by_reference["id"], model.as_str());
    assert_eq!(by_reference["reference"], "openai/gpt-4o-mini");
    assert_eq!(by_reference["name"], "gpt-4o-mini");
    assert_eq!(by_reference["status"], "active");

    let with_fallback = expect_status(
        app.post(
            "/v1/models",
            key,
            json!({ "provider": "openai", "model_id": "gpt-4o", "name": "GPT-4o",
                    "fallback": "openai/gpt-4o-mini", "default_params": { "temperature": 0.2 } }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(with_fallback["fallback"], "openai/gpt-4o-mini");
    assert_eq!(with_fallback["default_params"], json!({ "temperature": 0.2 }));

    let vision = expect_status(app.get("/v1/models?capability=vision", key).await, StatusCode::OK).await;
    let references: Vec<&str> = vision["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["reference"].as_str().unwrap())
        .collect();
    assert_eq!(references, ["openai/gpt-4o-mini"]);
    let all = expect_status(
        app.get("/v1/models?provider=openai&status=active", key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(all["items"].as_array().unwrap().len(), 2);

    let events_before = app.event_count().await;
    let duplicate = app
        .post(
            "/v1/models",
            key,
            json!({ "provider": "openai", "model_id": "gpt-4o" }),
        )
        .await;
    let problem = expect_problem(duplicate, StatusCode::CONFLICT, "name-taken").await;
    assert!(problem["detail"].as_str().unwrap().contains("openai/gpt-4o"));
    let nothing = app
        .post(
            "/v1/models",
            key,
            json!({ "provider": "mistral", "model_id": "large", "fallback": "openai/none",
                    "context_window": 0, "capabilities": ["Not A Slug"] }),
        )
        .await;
    let problem = expect_problem(nothing, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        ["context_window", "capabilities"],
        "the body's own fields first: {problem}"
    );
    let unknown = app
        .post(
            "/v1/models",
            key,
            json!({ "provider": "mistral", "model_id": "large", "fallback": "openai/none" }),
        )
        .await;
    let problem = expect_problem(unknown, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["provider", "fallback"]);
    let bad_status = app.get("/v1/models?status=retired", key).await;
    expect_problem(bad_status, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    assert_eq!(
        app.event_count().await,
        events_before,
        "nothing recorded for refused requests"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_price_in_force_follows_its_periods_and_a_correction_keeps_the_original() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    let (_, model) = provider_and_model(&app).await;
    let prices = format!("/v1/models/{model}/prices");
    let app = &app;
    let price_at = |at: &str| {
        let path = format!("/v1/models/openai%2Fgpt-4o-mini/price?at={at}");
        async move { app.get(&path, key).await }
    };

    let before_any = price_at("2026-01-01T00:00:00Z").await;
    expect_problem(before_any, StatusCode::NOT_FOUND, "not-found").await;
    let first = expect_status(
        app.post(&prices, key, price("2026-01-01T00:00:00Z", "0.15", "0.60"))
            .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(first["input_per_mtok"], "0.15");
    assert_eq!(first["until"], Value::Null);
    expect_status(
        app.post(&prices, key, price("2026-03-01T00:00:00Z", "0.10", "0.40"))
            .await,
        StatusCode::CREATED,
    )
    .await;

    let before = expect_problem(
        price_at("2025-12-31T23:59:59Z").await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
    assert!(before["detail"].as_str().unwrap().contains("price"));
    let january = expect_status(price_at("2026-01-15T00:00:00Z").await, StatusCode::OK).await;
    assert_eq!(
        (
            january["input_per_mtok"].as_str(),
            january["output_per_mtok"].as_str()
        ),
        (Some("0.15"), Some("0.6"))
    );
    assert_eq!(january["until"], "2026-03-01T00:00:00Z");
    let last_moment = expect_status(price_at("2026-02-28T23:59:59.999999Z").await, StatusCode::OK).await;
    assert_eq!(last_moment["input_per_mtok"], "0.15");
    let march = expect_status(price_at("2026-03-01T00:00:00Z").await, StatusCode::OK).await;
    assert_eq!(march["input_per_mtok"], "0.1");
    assert_eq!(march["until"], Value::Null);

    // A new period before the last one's start is refused; a past one is corrected instead.
    let events_before = app.event_count().await;
    let backdated = app
        .post(&prices, key, price("2026-02-01T00:00:00Z", "0.12", "0.50"))
        .await;
    let problem = expect_problem(backdated, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    assert_eq!(problem["errors"][0]["field"], "effective_from");
    for (body, field) in [
        (price("2026-04-01T00:00:00Z", "-0.15", "0.60"), "input_per_mtok"),
        (
            price("2026-04-01T00:00:00Z", "0.15", "0.1234567890123"),
            "output_per_mtok",
        ),
        (
            json!({ "effective_from": "2026-04-01T00:00:00Z", "input_per_mtok": "1",
                 "output_per_mtok": "2", "currency": "XYZ" }),
            "currency",
        ),
        (price("yesterday", "1", "2"), "effective_from"),
    ] {
        let refused = app.post(&prices, key, body).await;
        let problem = expect_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    let mut correction = price("2026-01-01T00:00:00Z", "0.125", "0.60");
    let without_reason = app
        .post(&format!("{prices}/corrections"), key, correction.clone())
        .await;
    let problem = expect_problem(
        without_reason,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    assert_eq!(problem["errors"][0]["field"], "reason");
    let no_such_period = app
        .post(
            &format!("{prices}/corrections"),
            key,
            json!({ "effective_from": "2026-02-01T00:00:00Z", "input_per_mtok": "1",
                    "output_per_mtok": "2", "currency": "USD", "reason": "typo" }),
        )
        .await;
    expect_problem(
        no_such_period,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    assert_eq!(
        app.event_count().await,
        events_before,
        "nothing recorded for refused requests"
    );

    correction["reason"] = json!("the January invoice says 0.125");
    let corrected = expect_status(
        app.post(&format!("{prices}/corrections"), key, correction).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(corrected["input_per_mtok"], "0.125");
    assert_eq!(corrected["original"]["input_per_mtok"], "0.15");
    let january = expect_status(price_at("2026-01-15T00:00:00Z").await, StatusCode::OK).await;
    assert_eq!(january["input_per_mtok"], "0.125");
    assert_eq!(january["original"]["input_per_mtok"], "0.15");
    assert!(january["corrected_at"].is_string());
    let march = expect_status(price_at("2026-03-15T00:00:00Z").await, StatusCode::OK).await;
    assert_eq!(
        march["original"],
        Value::Null,
        "only the corrected period changed"
    );

    let listed = expect_status(app.get(&prices, key).await, StatusCode::OK).await;
    let periods: Vec<(&str, &str)> = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["effective_from"].as_str().unwrap(),
                p["input_per_mtok"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        periods,
        [("2026-01-01T00:00:00Z", "0.125"), ("2026-03-01T00:00:00Z", "0.1")]
    );
    // The correction is an event of its own, with its reason, in the model's history.
    let history = expect_status(
        app.get(&format!("/v1/models/{model}/history"), key).await,
        StatusCode::OK,
    )
    .await;
    let last = history["items"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["event_type"], "ModelPriceCorrected");
    assert_eq!(last["reason"], "the January invoice says 0.125");
    assert_eq!(last["data"]["previous"]["input_per_mtok"], "0.15");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deprecating_a_model_lists_the_labelled_prompt_versions_still_naming_it() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    let (_, model) = provider_and_model(&app).await;
    expect_status(
        app.post(
            "/v1/models",
            key,
            json!({ "provider": "openai", "model_id": "gpt-5-mini" }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let prompt = app.create_prompt("support-reply").await;
    for model in ["openai/gpt-4o-mini", "openai/gpt-4o-mini", "openai/gpt-5-mini"] {
        expect_status(
            app.post(
                &format!("/v1/prompts/{prompt}/versions"),
                key,
                json!({ "template": "Hi {{name}}", "model": model }),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
    }
    // Version 1 is behind two labels, version 2 behind none, version 3 names another model.
    for (label, version) in [("production", 1), ("staging", 1), ("canary", 3)] {
        expect_status(
            app.put(
                &format!("/v1/prompts/{prompt}/labels/{label}"),
                key,
                json!({ "version": version }),
            )
            .await,
            StatusCode::OK,
        )
        .await;
    }
    let before = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    let deprecated = expect_status(
        app.post(
            &format!("/v1/models/{model}/deprecate"),
            key,
            json!({ "replacement": "openai/gpt-5-mini", "reason": "retired by the provider" }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(deprecated["status"], "deprecated");
    assert_eq!(deprecated["replacement"], "openai/gpt-5-mini");
    assert_eq!(
        deprecated["still_referenced"],
        json!([{ "kind": "prompt_version", "id": prompt, "version": 1, "labels": ["production", "staging"] }])
    );
    let event: Value = sqlx::query_scalar(
        "select payload from events where aggregate_type = 'model' and event_type = 'ModelDeprecated'",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(
        event["ModelDeprecated"]["still_referenced"][0]["labels"],
        json!(["production", "staging"]),
        "subscribers to the feed see what to act on"
    );
    let listed = expect_status(app.get("/v1/models?status=deprecated", key).await, StatusCode::OK).await;
    assert_eq!(listed["items"][0]["id"], model.as_str());
    let past = expect_status(
        app.get(&format!("/v1/models/{model}?as_of={before}"), key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(past["status"], "active");

    let itself = app
        .post(
            &format!("/v1/models/{model}/deprecate"),
            key,
            json!({ "replacement": model }),
        )
        .await;
    expect_problem(itself, StatusCode::UNPROCESSABLE_ENTITY, "rule-violated").await;
    let unknown = app
        .post(
            &format!("/v1/models/{model}/deprecate"),
            key,
            json!({ "replacement": "openai/none" }),
        )
        .await;
    expect_problem(unknown, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    let activated = expect_status(
        app.post(&format!("/v1/models/{model}/activate"), key, json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(activated["status"], "active");
    assert_eq!(activated["replacement"], Value::Null);
    let deactivated = expect_status(
        app.post(&format!("/v1/models/{model}/deactivate"), key, json!({}))
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(deactivated["status"], "inactive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_tenant_can_neither_see_nor_change_the_registry() {
    let app = TestApp::spawn().await;
    let (provider, model) = provider_and_model(&app).await;
    expect_status(
        app.post(
            &format!("/v1/models/{model}/prices"),
            &app.admin_key,
            price("2026-01-01T00:00:00Z", "0.15", "0.60"),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let other = app.key("globex", "admin").await;
    let acme_events = || async {
        sqlx::query_scalar::<_, i64>("select count(*) from events where tenant_id = 'acme'")
            .fetch_one(app.pool())
            .await
            .unwrap()
    };
    let events_before = acme_events().await;
    let p = format!("/v1/providers/{provider}");
    let not_found: Vec<(Method, String, Option<Value>)> = vec![
        (Method::GET, p.clone(), None),
        (Method::GET, format!("{p}?as_of=2999-01-01T00:00:00Z"), None),
        (Method::PATCH, p.clone(), Some(json!({ "enabled": false }))),
        (Method::GET, format!("{p}/history"), None),
    ];
    let mut not_found = not_found;
    for m in [model.clone(), "openai%2Fgpt-4o-mini".to_string()] {
        let m = format!("/v1/models/{m}");
        not_found.extend([
            (Method::GET, m.clone(), None),
            (Method::GET, format!("{m}?as_of=2999-01-01T00:00:00Z"), None),
            (Method::POST, format!("{m}/activate"), None),
            (Method::POST, format!("{m}/deactivate"), None),
            (Method::POST, format!("{m}/deprecate"), Some(json!({}))),
            (
                Method::POST,
                format!("{m}/prices"),
                Some(price("2027-01-01T00:00:00Z", "1", "2")),
            ),
            (Method::GET, format!("{m}/prices"), None),
            (
                Method::POST,
                format!("{m}/prices/corrections"),
                Some(
                    json!({ "effective_from": "2026-01-01T00:00:00Z", "input_per_mtok": "1",
                             "output_per_mtok": "2", "currency": "USD", "reason": "steal" }),
                ),
            ),
            (Method::GET, format!("{m}/price?at=2026-02-01T00:00:00Z"), None),
            (Method::GET, format!("{m}/history"), None),
            (Method::DELETE, format!("{m}/prices/2026-01-01T00:00:00Z"), None),
            (
                Method::PUT,
                format!("{m}/default-params"),
                Some(json!({ "default_params": { "temperature": 1 } })),
            ),
        ]);
    }
    expect_each_not_found(&app, &other, not_found, "acme").await;
    for listing in ["/v1/providers", "/v1/models"] {
        let listed = expect_status(app.get(listing, &other).await, StatusCode::OK).await;
        assert_eq!(listed["items"], json!([]), "{listing}");
    }
    // Another tenant's provider and models cannot be named in a body either.
    let model_under_theirs = app
        .post(
            "/v1/models",
            &other,
            json!({ "provider": provider, "model_id": "x" }),
        )
        .await;
    expect_problem(
        model_under_theirs,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    // The same names are free in another tenant.
    expect_status(
        app.post(
            "/v1/providers",
            &other,
            json!({ "name": "openai", "kind": "openai", "base_url": "https://api.openai.com/v1",
                    "credential_ref": "env:OPENAI_API_KEY" }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    expect_status(
        app.post(
            "/v1/models",
            &other,
            json!({ "provider": "openai", "model_id": "gpt-4o-mini" }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(acme_events().await, events_before, "nothing changed in acme");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_last_price_period_set_by_mistake_is_withdrawn_and_default_parameters_change_with_history() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    let (_, model) = provider_and_model(&app).await;
    let prices = format!("/v1/models/{model}/prices");
    for (from, input) in [("2026-01-01T00:00:00Z", "0.15"), ("2026-06-01T00:00:00Z", "9")] {
        expect_status(
            app.post(&prices, key, price(from, input, "0.60")).await,
            StatusCode::CREATED,
        )
        .await;
    }
    let withdraw = |from: &str, reason: Option<&str>| {
        let mut request = app.request(Method::DELETE, &format!("{prices}/{from}"), key);
        if let Some(reason) = reason {
            request = request.header("X-Reason", reason);
        }
        async move { request.send().await.expect("withdraw") }
    };
    let unexplained = withdraw("2026-06-01T00:00:00Z", None).await;
    expect_problem(unexplained, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    let not_last = withdraw("2026-01-01T00:00:00Z", Some("typo")).await;
    expect_problem(not_last, StatusCode::CONFLICT, "conflict").await;
    let missing = withdraw("2026-02-01T00:00:00Z", Some("typo")).await;
    expect_problem(missing, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    let garbled = withdraw("yesterday", Some("typo")).await;
    expect_problem(garbled, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    let withdrawn = withdraw("2026-06-01T00:00:00Z", Some("the price was a typo")).await;
    assert_eq!(withdrawn.status(), StatusCode::NO_CONTENT);
    let listed = expect_status(app.get(&prices, key).await, StatusCode::OK).await;
    assert_eq!(listed["items"].as_array().map(Vec::len), Some(1), "{listed}");
    let july = expect_status(
        app.get(&format!("/v1/models/{model}/price?at=2026-07-01T00:00:00Z"), key)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(july["input_per_mtok"], "0.15");

    let set = expect_status(
        app.put(
            &format!("/v1/models/{model}/default-params"),
            key,
            json!({ "default_params": { "temperature": 0.3 }, "reason": "calmer" }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(set["default_params"], json!({ "temperature": 0.3 }));
    let not_an_object = app
        .put(
            &format!("/v1/models/{model}/default-params"),
            key,
            json!({ "default_params": [1] }),
        )
        .await;
    expect_problem(
        not_an_object,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    let cleared = expect_status(
        app.put(
            &format!("/v1/models/{model}/default-params"),
            key,
            json!({ "default_params": null }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(cleared["default_params"], Value::Null);
    let history = expect_status(
        app.get(&format!("/v1/models/{model}/history"), key).await,
        StatusCode::OK,
    )
    .await;
    let kinds: Vec<(&str, Option<&str>)> = history["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|e| (e["event_type"].as_str().expect("type"), e["reason"].as_str()))
        .collect();
    assert!(
        kinds.contains(&("ModelPriceWithdrawn", Some("the price was a typo"))),
        "{kinds:?}"
    );
    assert!(
        kinds.contains(&("ModelDefaultParamsSet", Some("calmer"))),
        "{kinds:?}"
    );
}
