//! Running prompts through aipm against a fake provider (a real HTTP server speaking the
//! OpenAI-compatible and Anthropic protocols): rendering, budgets, retries and fallbacks,
//! experiments, streaming, and the one usage record each call leaves.

use std::time::Duration;

use integration_tests::fake_provider::{counted_input_tokens, text_chunks, FakeProvider, Reply};
use integration_tests::harness::{expect_problem, expect_status, metric, test_settings, TestApp};
use reqwest::{Method, StatusCode};
use rust_decimal::Decimal;
use serde_json::{json, Value};

/// The secret the fake provider accepts, and where aipm reads it from.
pub struct Secret {
    pub value: String,
    pub credential_ref: String,
    path: std::path::PathBuf,
}

impl Secret {
    pub fn new() -> Self {
        let value = format!("sk-test-{}", uuid::Uuid::new_v4().simple());
        let path = std::env::temp_dir().join(format!("aipm-test-secret-{}", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, format!("{value}\n")).expect("write the secret");
        Self {
            credential_ref: format!("file:{}", path.display()),
            value,
            path,
        }
    }
}

impl Drop for Secret {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Settings for gateway tests: quick backoff and a short timeout.
pub fn gateway_settings() -> api::Settings {
    let mut settings = test_settings();
    settings.gateway.backoff = Duration::from_millis(20);
    settings.gateway.timeout = Duration::from_millis(1500);
    settings
}

/// Registers on `app` (tenant `acme`) the providers `local` (OpenAI-compatible) and `claude`
/// (Anthropic) at `fake`, the models `local/small` (priced 1.00 / 2.00 USD per million
/// tokens, falling back to `claude/haiku`) and `claude/haiku` (0.50 / 1.50, vision).
pub async fn register_fake_models(app: &TestApp, fake: &FakeProvider, secret: &Secret) {
    let key = &app.admin_key;
    for (name, kind, base_url) in [
        ("local", "openai", fake.openai_base_url()),
        ("claude", "anthropic", fake.anthropic_base_url()),
    ] {
        expect_status(
            app.post(
                "/v1/providers",
                key,
                json!({"name": name, "kind": kind, "base_url": base_url, "credential_ref": secret.credential_ref}),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
    }
    for (provider, model_id, extra, input, output) in [
        (
            "claude",
            "haiku",
            json!({"capabilities": ["vision"], "context_window": 200000}),
            "0.50",
            "1.50",
        ),
        (
            "local",
            "small",
            json!({"fallback": "claude/haiku", "context_window": 8000}),
            "1.00",
            "2.00",
        ),
    ] {
        let mut body = json!({"provider": provider, "model_id": model_id});
        body.as_object_mut()
            .expect("object")
            .extend(extra.as_object().expect("object").clone());
        expect_status(app.post("/v1/models", key, body).await, StatusCode::CREATED).await;
        expect_status(
            app.post(
                &format!("/v1/models/{provider}%2F{model_id}/prices"),
                key,
                json!({"effective_from": "2026-01-01T00:00:00Z", "input_per_mtok": input,
                       "output_per_mtok": output, "currency": "USD"}),
            )
            .await,
            StatusCode::CREATED,
        )
        .await;
    }
}

/// A prompt whose version 1 renders `template` for `model` with `params`, labelled
/// `production`.
pub async fn prompt_for(app: &TestApp, name: &str, template: &str, model: &str, params: Value) -> String {
    let prompt = app.create_prompt(name).await;
    publish_version(app, &prompt, template, model, params).await;
    expect_status(
        app.put(
            &format!("/v1/prompts/{prompt}/labels/production"),
            &app.admin_key,
            json!({"version": 1}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    prompt
}

pub async fn publish_version(app: &TestApp, prompt: &str, template: &str, model: &str, params: Value) {
    expect_status(
        app.post(
            &format!("/v1/prompts/{prompt}/versions"),
            &app.admin_key,
            json!({"template": template, "model": model, "params": params}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
}

/// The tenant's usage records, newest first.
pub async fn usage_records(app: &TestApp) -> Vec<Value> {
    let page = expect_status(
        app.get("/v1/usage?limit=1000", &app.admin_key).await,
        StatusCode::OK,
    )
    .await;
    page["items"].as_array().cloned().unwrap_or_default()
}

async fn run(app: &TestApp, prompt: &str, body: Value) -> reqwest::Response {
    app.post(&format!("/v1/prompts/{prompt}/run"), &app.admin_key, body)
        .await
}

/// A server with the fake models registered, their fake provider, the secret it accepts,
/// and a prompt.
pub struct Fixture {
    pub app: TestApp,
    pub fake: FakeProvider,
    pub _secret: Secret,
    pub prompt: String,
}

/// [`Fixture`] with a prompt `name` whose version 1 (`production`) renders `template` for
/// `model` with `params`.
pub async fn fixture_with(name: &str, template: &str, model: &str, params: Value) -> Fixture {
    let app = TestApp::spawn_with(gateway_settings()).await;
    let secret = Secret::new();
    let fake = FakeProvider::start(&secret.value).await;
    register_fake_models(&app, &fake, &secret).await;
    let prompt = prompt_for(&app, name, template, model, params).await;
    Fixture {
        app,
        fake,
        _secret: secret,
        prompt,
    }
}

async fn fixture() -> Fixture {
    fixture_with(
        "summary",
        "Summarise {{text}} in {{words}} words",
        "local/small",
        json!({"temperature": 0.1}),
    )
    .await
}

/// The `role` of each message of `messages` (a JSON array).
pub fn roles(messages: &Value) -> Vec<&str> {
    messages
        .as_array()
        .map(|messages| messages.iter().filter_map(|m| m["role"].as_str()).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_run_renders_the_version_calls_its_model_and_records_its_usage_and_cost_once() {
    let Fixture {
        app,
        fake,
        prompt,
        _secret,
    } = fixture().await;
    let answer = expect_status(
        run(
            &app,
            &prompt,
            json!({"variables": {"text": "the minutes", "words": 12}, "feature": "notes"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(answer["output"], "echo: Summarise the minutes in 12 words");
    assert_eq!(answer["version"], 1);
    assert_eq!(answer["label"], "production");
    assert_eq!(answer["model"], "local/small");
    let sent = fake.requests_for("small");
    assert_eq!(sent.len(), 1);
    let body = &sent[0].body;
    assert_eq!(
        body["messages"][0]["content"],
        "Summarise the minutes in 12 words"
    );
    assert_eq!(body["temperature"], 0.1);
    let input = counted_input_tokens(body);
    let output = 7; // "echo: Summarise the minutes in 12 words"
    assert_eq!(answer["usage"]["input_tokens"], input);
    assert_eq!(answer["usage"]["output_tokens"], output);
    // 1.00 and 2.00 USD per million tokens.
    let cost = (Decimal::from(input) + Decimal::from(output * 2)) / Decimal::from(1_000_000);
    assert_eq!(
        answer["cost"],
        json!({"amount": cost.normalize().to_string(), "currency": "USD"})
    );
    assert_eq!(answer["attempts"].as_array().map(Vec::len), Some(1));
    assert_eq!(answer["attempts"][0]["outcome"], "ok");
    let records = usage_records(&app).await;
    assert_eq!(records.len(), 1);
    let record = &records[0];
    assert_eq!(record["id"], answer["run_id"]);
    assert_eq!(record["model"], "local/small");
    assert_eq!(record["prompt_id"], prompt.as_str());
    assert_eq!(record["prompt_version"], 1);
    assert_eq!(record["feature"], "notes");
    assert_eq!(record["status"], "ok");
    assert_eq!(record["input_tokens"], input);
    assert_eq!(
        record["cost"].as_str().and_then(|c| c.parse::<Decimal>().ok()),
        Some(cost)
    );
    assert_eq!(record["attempts"][0]["model"], "local/small");

    // The same request under one Idempotency-Key calls the model once and records once.
    let keyed = || {
        app.request(Method::POST, &format!("/v1/prompts/{prompt}/run"), &app.admin_key)
            .header("Idempotency-Key", "run-once")
            .json(&json!({"variables": {"text": "x", "words": 1}}))
            .send()
    };
    let first = expect_status(keyed().await.expect("run"), StatusCode::OK).await;
    let again = expect_status(keyed().await.expect("run"), StatusCode::OK).await;
    assert_eq!(first["run_id"], again["run_id"]);
    assert_eq!(fake.requests_for("small").len(), 2);
    assert_eq!(usage_records(&app).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_each_leave_one_record_and_the_roll_ups_add_up() {
    let Fixture {
        app,
        fake,
        prompt,
        _secret,
    } = fixture().await;
    let runs = (0..24).map(|n| {
        let app = &app;
        let prompt = &prompt;
        async move {
            let body = json!({"variables": {"text": format!("part {n}"), "words": n}, "feature": "notes"});
            expect_status(run(app, prompt, body).await, StatusCode::OK).await
        }
    });
    let answers = futures::future::join_all(runs).await;
    let ids: std::collections::BTreeSet<&str> = answers.iter().filter_map(|a| a["run_id"].as_str()).collect();
    assert_eq!(ids.len(), 24);
    assert_eq!(fake.requests_for("small").len(), 24);
    let (records, calls, input): (i64, i64, i64) = sqlx::query_as(
        "select (select count(*) from usage_record where tenant_id = 'acme'),
                (select sum(calls)::bigint from usage_rollup where tenant_id = 'acme'),
                (select sum(input_tokens)::bigint from usage_rollup where tenant_id = 'acme')",
    )
    .fetch_one(app.pool())
    .await
    .expect("sums");
    assert_eq!((records, calls), (24, 24));
    let answered: i64 = answers
        .iter()
        .filter_map(|a| a["usage"]["input_tokens"].as_i64())
        .sum();
    assert_eq!(input, answered);
}

#[tokio::test]
async fn bad_runs_are_refused_field_by_field_before_any_model_is_called() {
    let Fixture {
        app,
        fake,
        prompt,
        _secret,
    } = fixture().await;
    let refused = expect_problem(
        run(&app, &prompt, json!({"variables": {"text": "x", "wrods": 3}})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    let messages: Vec<&str> = refused["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["message"].as_str())
        .collect();
    assert!(
        messages.iter().any(|m| m.contains("\"words\" is missing")),
        "{refused}"
    );
    assert!(
        messages.iter().any(|m| m.contains("\"wrods\" is not a variable")),
        "{refused}"
    );
    let refused = expect_problem(
        run(
            &app,
            &prompt,
            json!({"label": "Bad Label", "version": 0, "subject": "", "variables": [1]}),
        )
        .await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    let fields: Vec<&str> = refused["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    for field in ["label", "version", "subject", "variables"] {
        assert!(fields.contains(&field), "{field} in {refused}");
    }
    expect_problem(
        run(&app, &prompt, json!({"version": 9, "variables": {}})).await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
    expect_problem(
        run(&app, &prompt, json!({"label": "staging", "variables": {}})).await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
    // A version whose model is not in the registry.
    publish_version(&app, &prompt, "Hi", "nowhere/none", json!(null)).await;
    let refused = expect_problem(
        run(&app, &prompt, json!({"version": 2})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    assert_eq!(refused["errors"][0]["field"], "model");
    assert!(fake.requests().is_empty());
    assert!(usage_records(&app).await.is_empty());
}

#[tokio::test]
async fn a_spent_hard_budget_refuses_the_call_before_the_provider_is_called() {
    let Fixture {
        app,
        fake,
        prompt,
        _secret,
    } = fixture().await;
    expect_status(
        app.post(
            "/v1/budgets",
            &app.admin_key,
            json!({"name": "Tiny", "scope": {"kind": "prompt", "id": prompt}, "period": "monthly",
                   "amount": "0.000001", "currency": "USD", "enforcement": "hard"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let body = json!({"variables": {"text": "a long text to spend the budget", "words": 3}});
    expect_status(run(&app, &prompt, body.clone()).await, StatusCode::OK).await;
    let refused = expect_problem(
        run(&app, &prompt, body).await,
        StatusCode::PAYMENT_REQUIRED,
        "budget-exhausted",
    )
    .await;
    assert!(
        refused["detail"].as_str().is_some_and(|d| d.contains("Tiny")),
        "{refused}"
    );
    assert_eq!(fake.requests().len(), 1);
    assert_eq!(usage_records(&app).await.len(), 1);
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_retried_then_the_fallback_answers() {
    let Fixture {
        app,
        fake,
        prompt,
        _secret,
    } = fixture().await;
    fake.script(
        "small",
        vec![
            Reply::Status {
                status: 429,
                retry_after: Some(1),
            },
            Reply::Status {
                status: 500,
                retry_after: None,
            },
            Reply::Status {
                status: 503,
                retry_after: None,
            },
        ],
    );
    let answer = expect_status(
        run(&app, &prompt, json!({"variables": {"text": "x", "words": 2}})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(answer["model"], "claude/haiku");
    let outcomes: Vec<&str> = answer["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .filter_map(|a| a["outcome"].as_str())
        .collect();
    assert_eq!(outcomes, ["rate_limited", "server_error", "server_error", "ok"]);
    assert_eq!(answer["attempts"][0]["retry_after_ms"], 1000);
    assert_eq!(answer["attempts"][0]["waited_ms"], 1000);
    assert_eq!(answer["attempts"][0]["http_status"], 429);
    assert_eq!(answer["attempts"][1]["waited_ms"], 40);
    assert!(answer["attempts"][2]["waited_ms"].is_null());
    assert_eq!(answer["attempts"][3]["model"], "claude/haiku");
    // Retry-After was honoured: the second try came a second after the first.
    let tries = fake.requests_for("small");
    assert_eq!(tries.len(), 3);
    assert!(tries[1].at.duration_since(tries[0].at) >= Duration::from_millis(1000));
    // The fallback was reached with the Anthropic protocol and its headers.
    let fallback = fake.requests_for("haiku");
    assert_eq!(fallback.len(), 1);
    assert_eq!(
        fallback[0].body["messages"][0]["content"][0]["text"],
        "Summarise x in 2 words"
    );
    // The record names the model that answered, priced at its price, with every attempt.
    let records = usage_records(&app).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["model"], "claude/haiku");
    assert_eq!(records[0]["attempts"].as_array().map(Vec::len), Some(4));
    // And in the metrics.
    let text = app
        .get("/metrics", &app.admin_key)
        .await
        .text()
        .await
        .expect("metrics");
    for (series, value) in [
        (
            r#"aipm_gateway_calls_total{model="claude/haiku",status="ok",tenant="acme"}"#,
            1.0,
        ),
        (
            r#"aipm_gateway_attempts_total{model="local/small",outcome="server_error"}"#,
            2.0,
        ),
        (
            r#"aipm_gateway_attempts_total{model="local/small",outcome="rate_limited"}"#,
            1.0,
        ),
        (
            r#"aipm_gateway_call_duration_seconds_count{model="claude/haiku"}"#,
            1.0,
        ),
    ] {
        assert_eq!(metric(&text, series), Some(value), "{series} in\n{text}");
    }
}

#[tokio::test]
async fn a_call_no_model_answers_is_a_502_and_is_recorded_with_its_attempts() {
    let Fixture {
        app,
        fake,
        prompt,
        _secret,
    } = fixture().await;
    fake.script("small", vec![Reply::Slow(Duration::from_secs(3)); 3]);
    fake.script(
        "haiku",
        vec![Reply::Status {
            status: 400,
            retry_after: None,
        }],
    );
    let failed = expect_problem(
        run(&app, &prompt, json!({"variables": {"text": "x", "words": 2}})).await,
        StatusCode::BAD_GATEWAY,
        "provider-failed",
    )
    .await;
    assert!(
        failed["detail"].as_str().is_some_and(|d| d.contains("refused")),
        "{failed}"
    );
    let records = usage_records(&app).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["status"], "refused");
    let outcomes: Vec<&str> = records[0]["attempts"]
        .as_array()
        .expect("attempts")
        .iter()
        .filter_map(|a| a["outcome"].as_str())
        .collect();
    assert_eq!(outcomes, ["timeout", "timeout", "timeout", "refused"]);
    assert_eq!(records[0]["output_tokens"], 0);
    assert_eq!(
        fake.requests_for("haiku").len(),
        1,
        "a refusal (4xx) is not retried"
    );
}

#[tokio::test]
async fn a_running_experiment_picks_the_subjects_version_and_the_record_says_which() {
    let Fixture {
        app,
        fake,
        prompt,
        _secret,
    } = fixture().await;
    publish_version(
        &app,
        &prompt,
        "Briefly: {{text}} ({{words}})",
        "local/small",
        json!(null),
    )
    .await;
    let created = expect_status(
        app.post(
            "/v1/experiments",
            &app.admin_key,
            json!({"name": "Brief", "hypothesis": "Brief is better", "prompt_id": prompt,
                   "variants": [{"name": "control", "weight": 50, "control": true, "prompt_version": 1},
                                {"name": "brief", "weight": 50, "prompt_version": 2}],
                   "primary_metric": {"name": "converted", "kind": "binary"}}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let experiment = created["id"].as_str().expect("id").to_string();
    expect_status(
        app.request(
            Method::POST,
            &format!("/v1/experiments/{experiment}/start"),
            &app.admin_key,
        )
        .send()
        .await
        .expect("start"),
        StatusCode::OK,
    )
    .await;
    let mut seen = std::collections::BTreeSet::new();
    for subject in [
        "ada", "grace", "edsger", "barbara", "donald", "ken", "dennis", "margaret",
    ] {
        let assigned = expect_status(
            app.post(
                &format!("/v1/experiments/{experiment}/assign"),
                &app.admin_key,
                json!({"subject": subject}),
            )
            .await,
            StatusCode::OK,
        )
        .await;
        let answer = expect_status(
            run(
                &app,
                &prompt,
                json!({"subject": subject, "variables": {"text": "t", "words": 1}}),
            )
            .await,
            StatusCode::OK,
        )
        .await;
        let variant = assigned["variant"].as_str().expect("variant");
        assert_eq!(answer["experiment"]["id"], experiment.as_str());
        assert_eq!(answer["experiment"]["variant"], variant);
        assert_eq!(answer["version"], if variant == "brief" { 2 } else { 1 });
        let expected = if variant == "brief" {
            "echo: Briefly: t (1)"
        } else {
            "echo: Summarise t in 1 words"
        };
        assert_eq!(answer["output"], expected);
        seen.insert(variant.to_string());
    }
    assert_eq!(seen.len(), 2, "eight subjects fall in both halves");
    let records = usage_records(&app).await;
    assert_eq!(records.len(), 8);
    for record in &records {
        assert_eq!(record["experiment_id"], experiment.as_str());
        let version = if record["variant"] == "brief" { 2 } else { 1 };
        assert_eq!(record["prompt_version"], version);
    }
    // An explicit label is not part of the experiment.
    let labelled = expect_status(
        run(
            &app,
            &prompt,
            json!({"label": "production", "subject": "ada", "variables": {"text": "t", "words": 1}}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert!(labelled["experiment"].is_null());
    assert_eq!(fake.requests().len(), 9);
}

/// The events of a streamed run: (name, data).
pub async fn sse_events(response: reqwest::Response) -> Vec<(String, Value)> {
    assert_eq!(response.status(), StatusCode::OK);
    assert!(response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream")));
    let text = response.text().await.expect("body");
    text.split("\n\n")
        .filter_map(|block| {
            let mut name = None;
            let mut data = String::new();
            for line in block.lines() {
                if let Some(value) = line.strip_prefix("event:") {
                    name = Some(value.trim().to_string());
                } else if let Some(value) = line.strip_prefix("data:") {
                    data.push_str(value.strip_prefix(' ').unwrap_or(value));
                }
            }
            Some((name?, serde_json::from_str(&data).ok()?))
        })
        .collect()
}

#[tokio::test]
async fn a_streamed_run_sends_the_tokens_as_they_come_then_the_answer_and_records_once() {
    let Fixture {
        app,
        fake,
        prompt,
        _secret,
    } = fixture().await;
    for (model, version) in [("local/small", 1), ("claude/haiku", 2)] {
        if version == 2 {
            publish_version(
                &app,
                &prompt,
                "Summarise {{text}} in {{words}} words",
                model,
                json!(null),
            )
            .await;
        }
        let events = sse_events(
            run(&app, &prompt, json!({"version": version, "stream": true, "variables": {"text": "the long minutes", "words": 5}}))
                .await,
        )
        .await;
        assert_eq!(events[0].0, "run");
        assert_eq!(events[0].1["model"], model);
        let deltas: Vec<&str> = events
            .iter()
            .filter(|(name, _)| name == "delta")
            .filter_map(|(_, data)| data["text"].as_str())
            .collect();
        assert!(deltas.len() > 3, "one delta per word: {deltas:?}");
        let (last, done) = events.last().expect("events");
        assert_eq!(last, "done", "{events:?}");
        assert_eq!(deltas.concat(), "echo: Summarise the long minutes in 5 words");
        assert_eq!(done["output"], deltas.concat());
        assert_eq!(done["model"], model);
        let sent = fake.requests().last().cloned().expect("sent");
        assert_eq!(done["usage"]["input_tokens"], counted_input_tokens(&sent.body));
        assert_eq!(done["usage"]["output_tokens"], 8);
        let records = usage_records(&app).await;
        assert_eq!(records.len(), version);
        assert_eq!(records[0]["id"], done["run_id"]);
        assert_eq!(records[0]["status"], "ok");
        assert_eq!(records[0]["output_tokens"], 8);
    }
}

#[tokio::test]
async fn a_cut_stream_ends_with_an_error_event_and_is_recorded_with_what_came() {
    let Fixture {
        app,
        fake,
        prompt,
        _secret,
    } = fixture().await;
    fake.script("small", vec![Reply::CutAfter { chunks: 3 }]);
    let events = sse_events(
        run(
            &app,
            &prompt,
            json!({"stream": true, "variables": {"text": "the long minutes", "words": 5}}),
        )
        .await,
    )
    .await;
    let deltas: String = events
        .iter()
        .filter(|(name, _)| name == "delta")
        .filter_map(|(_, data)| data["text"].as_str())
        .collect();
    let full = "echo: Summarise the long minutes in 5 words";
    assert_eq!(deltas, text_chunks(full)[..3].concat());
    let (last, error) = events.last().expect("events");
    assert_eq!(last, "error");
    assert_eq!(error["type"], "/problems/provider-failed");
    let records = usage_records(&app).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["status"], "cut");
    // No usage came from the provider: the output is estimated from the text received.
    assert_eq!(records[0]["output_tokens"], (deltas.len() as u64).div_ceil(4));
    assert_eq!(
        fake.requests_for("haiku").len(),
        0,
        "output already sent is not sent again by a fallback"
    );
}

#[tokio::test]
async fn runs_belong_to_their_tenant_and_need_a_role_that_may_run() {
    let Fixture {
        app,
        fake,
        prompt,
        _secret,
    } = fixture().await;
    let other = app.key("globex", "admin").await;
    expect_problem(
        app.post(
            &format!("/v1/prompts/{prompt}/run"),
            &other,
            json!({"variables": {"text": "x", "words": 1}}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
    let viewer = app.key("acme", "viewer").await;
    expect_problem(
        app.post(
            &format!("/v1/prompts/{prompt}/run"),
            &viewer,
            json!({"variables": {"text": "x", "words": 1}}),
        )
        .await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let ingest = app.key("acme", "ingest").await;
    expect_status(
        app.post(
            &format!("/v1/prompts/{prompt}/run"),
            &ingest,
            json!({"variables": {"text": "x", "words": 1}}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(fake.requests().len(), 1);
}
