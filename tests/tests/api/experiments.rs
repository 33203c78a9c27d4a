//! Experiments: definitions checked whole, a one-way lifecycle, assignment from memory that
//! every process answers alike, observations checked against the experiment, and results.

use integration_tests::harness::{expect_problem, expect_status, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// A prompt with two versions, and an experiment between them (50/50) on `converted`
/// (binary, primary), `rating` (continuous) and `latency` (a guardrail, lower is better).
async fn experiment(app: &TestApp, weights: (u32, u32)) -> (String, String) {
    let prompt = app.create_prompt("checkout-answer").await;
    app.publish(&prompt, "v1 {{q}}").await;
    app.publish(&prompt, "v2 {{q}}").await;
    let created = expect_status(
        app.post(
            "/v1/experiments",
            &app.admin_key,
            json!({
                "name": "Shorter answers", "hypothesis": "Shorter answers convert better",
                "prompt_id": prompt,
                "variants": [
                    {"name": "control", "weight": weights.0, "control": true, "prompt_version": 1},
                    {"name": "short", "weight": weights.1, "prompt_version": 2}
                ],
                "primary_metric": {"name": "converted", "kind": "binary"},
                "secondary_metrics": [{"name": "rating", "kind": "continuous"}],
                "guardrail_metrics": [{"name": "latency", "kind": "continuous", "higher_is_better": false}],
                "min_units_per_variant": 100
            }),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(created["status"], "draft");
    (created["id"].as_str().expect("id").to_string(), prompt)
}

async fn lifecycle(app: &TestApp, id: &str, action: &str) -> reqwest::Response {
    app.request(
        Method::POST,
        &format!("/v1/experiments/{id}/{action}"),
        &app.admin_key,
    )
    .header("X-Reason", format!("{action} for the test"))
    .send()
    .await
    .expect("lifecycle")
}

async fn assign(app: &TestApp, address: &str, key: &str, id: &str, subject: &str) -> Value {
    let response = app
        .client
        .post(format!("{address}/v1/experiments/{id}/assign"))
        .bearer_auth(key)
        .json(&json!({ "subject": subject }))
        .send()
        .await
        .expect("assign");
    expect_status(response, StatusCode::OK).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_experiment_runs_one_way_and_assigns_alike_in_every_process() {
    let app = TestApp::spawn().await;
    let (id, _) = experiment(&app, (50, 50)).await;
    let ingest = app.key("acme", "ingest").await;

    // A draft assigns everyone the control, and says why.
    let draft = assign(&app, &app.address, &ingest, &id, "user-1").await;
    assert_eq!(
        (draft["variant"].as_str(), draft["reason"].as_str()),
        (Some("control"), Some("not_running"))
    );

    expect_status(lifecycle(&app, &id, "start").await, StatusCode::OK).await;
    let peer = app.spawn_peer().await;
    let mut counts = std::collections::HashMap::new();
    for n in 0..400 {
        let subject = format!("user-{n}");
        let here = assign(&app, &app.address, &ingest, &id, &subject).await;
        let there = assign(&app, &peer.address, &ingest, &id, &subject).await;
        assert_eq!(here["variant"], there["variant"], "{subject}");
        assert_eq!(here["reason"], "assigned");
        *counts
            .entry(here["variant"].as_str().unwrap_or_default().to_string())
            .or_insert(0) += 1;
    }
    assert!(counts["control"] > 150 && counts["short"] > 150, "{counts:?}");

    // Paused: the control again, from the other process too once it has read the log.
    expect_status(lifecycle(&app, &id, "pause").await, StatusCode::OK).await;
    assert_eq!(
        assign(&app, &app.address, &ingest, &id, "user-3").await["reason"],
        "not_running"
    );
    expect_status(lifecycle(&app, &id, "resume").await, StatusCode::OK).await;
    expect_status(lifecycle(&app, &id, "stop").await, StatusCode::OK).await;
    expect_problem(
        lifecycle(&app, &id, "resume").await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
    let unknown_winner = app
        .post(
            &format!("/v1/experiments/{id}/conclude"),
            &app.admin_key,
            json!({"winner": "long", "reason": "x"}),
        )
        .await;
    expect_problem(
        unknown_winner,
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    let concluded = expect_status(
        app.post(
            &format!("/v1/experiments/{id}/conclude"),
            &app.admin_key,
            json!({"winner": "short", "reason": "converts better"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        (concluded["status"].as_str(), concluded["winner"].as_str()),
        (Some("concluded"), Some("short"))
    );
    let history = expect_status(
        app.get(&format!("/v1/experiments/{id}/history"), &app.admin_key)
            .await,
        StatusCode::OK,
    )
    .await;
    let events: Vec<&str> = history["items"]
        .as_array()
        .expect("items")
        .iter()
        .filter_map(|item| item["event_type"].as_str())
        .collect();
    assert_eq!(
        events,
        [
            "ExperimentCreated",
            "ExperimentStarted",
            "ExperimentPaused",
            "ExperimentResumed",
            "ExperimentStopped",
            "ExperimentConcluded"
        ]
    );
    assert_eq!(history["items"][4]["reason"], "stop for the test");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn definitions_and_observations_are_checked_and_tenants_kept_apart() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    let refused = app
        .post(
            "/v1/experiments",
            key,
            json!({"name": "x", "hypothesis": "y",
                   "variants": [{"name": "a", "weight": 60, "control": true}, {"name": "b", "weight": 30, "control": true}],
                   "primary_metric": {"name": "converted", "kind": "ratio"}}),
        )
        .await;
    let problem = expect_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .expect("errors")
        .iter()
        .filter_map(|e| e["field"].as_str())
        .collect();
    assert_eq!(fields, ["variants.weight", "variants.control", "primary_metric"]);

    let (id, _) = experiment(&app, (50, 50)).await;
    let ingest = app.key("acme", "ingest").await;
    let observations = format!("/v1/experiments/{id}/observations");
    let early = app
        .post(
            &observations,
            &ingest,
            json!([{"subject": "u", "variant": "short", "metric": "converted", "value": 1}]),
        )
        .await;
    expect_problem(early, StatusCode::CONFLICT, "conflict").await;
    expect_status(lifecycle(&app, &id, "start").await, StatusCode::OK).await;
    let bad = app
        .post(
            &observations,
            &ingest,
            json!([{"subject": "u", "variant": "short", "metric": "converted", "value": 1},
                   {"subject": "", "variant": "long", "metric": "clicks", "value": "one"}]),
        )
        .await;
    let problem = expect_problem(bad, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    assert_eq!(problem["errors"].as_array().map(Vec::len), Some(4), "{problem}");
    let stored: i64 = sqlx::query_scalar("select count(*) from experiment_observation")
        .fetch_one(app.pool())
        .await
        .expect("count");
    assert_eq!(stored, 0, "a refused request stores nothing");
    let good = app
        .post(
            &observations,
            &ingest,
            json!([{"subject": "u", "variant": "short", "metric": "converted", "value": 1}]),
        )
        .await;
    assert_eq!(expect_status(good, StatusCode::OK).await["accepted"], 1);

    // Another tenant: 404 on every route, and nothing it does lands in acme's experiment.
    let globex = app.key("globex", "admin").await;
    for (method, path, body) in [
        (Method::GET, format!("/v1/experiments/{id}"), None),
        (Method::GET, format!("/v1/experiments/{id}/history"), None),
        (Method::POST, format!("/v1/experiments/{id}/stop"), None),
        (
            Method::POST,
            format!("/v1/experiments/{id}/assign"),
            Some(json!({"subject": "u"})),
        ),
        (Method::POST, observations.clone(), Some(json!([]))),
    ] {
        let mut request = app
            .request(method.clone(), &path, &globex)
            .header("X-Reason", "probe");
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        expect_problem(response, StatusCode::NOT_FOUND, "not-found").await;
    }
    let listed = expect_status(app.get("/v1/experiments", &globex).await, StatusCode::OK).await;
    assert_eq!(listed["items"], json!([]));
    let mine = expect_status(
        app.get("/v1/experiments?status=running", key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(mine["items"].as_array().map(Vec::len), Some(1));
}
