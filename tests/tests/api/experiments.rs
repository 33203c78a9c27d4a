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
        (Method::GET, format!("/v1/experiments/{id}/results"), None),
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

/// Observations for `count` subjects `<prefix>-<n>` of `variant`: `converted` 1 for the
/// first `converting` of them (0 for the others), and `latency` from `latency_from` up by
/// the subject's number modulo 50.
fn traffic(prefix: &str, variant: &str, count: usize, converting: usize, latency_from: f64) -> Vec<Value> {
    (0..count)
        .flat_map(|n| {
            let subject = format!("{prefix}-{n}");
            [
                json!({"subject": subject, "variant": variant, "metric": "converted",
                       "value": if n < converting { 1 } else { 0 }}),
                json!({"subject": subject, "variant": variant, "metric": "latency",
                       "value": latency_from + (n % 50) as f64}),
            ]
        })
        .collect()
}

async fn observe(app: &TestApp, key: &str, id: &str, observations: Vec<Value>) {
    for chunk in observations.chunks(10_000) {
        expect_status(
            app.post(&format!("/v1/experiments/{id}/observations"), key, json!(chunk))
                .await,
            StatusCode::OK,
        )
        .await;
    }
}

async fn results(app: &TestApp, id: &str, query: &str) -> Value {
    expect_status(
        app.get(&format!("/v1/experiments/{id}/results{query}"), &app.admin_key)
            .await,
        StatusCode::OK,
    )
    .await
}

/// The comparison of `variant` for `metric` in `results`.
fn comparison<'a>(results: &'a Value, metric: &str, variant: &str) -> &'a Value {
    results["metrics"]
        .as_array()
        .and_then(|metrics| metrics.iter().find(|m| m["name"] == metric))
        .and_then(|m| m["comparisons"].as_array())
        .and_then(|comparisons| comparisons.iter().find(|c| c["variant"] == variant))
        .unwrap_or_else(|| panic!("no {metric} comparison for {variant} in {results}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clear_effect_is_found_by_every_method_and_a_harmful_guardrail_pauses_the_experiment() {
    let app = TestApp::spawn().await;
    let (id, _) = experiment(&app, (50, 50)).await;
    let ingest = app.key("acme", "ingest").await;
    expect_status(lifecycle(&app, &id, "start").await, StatusCode::OK).await;
    let before_traffic = chrono::Utc::now().to_rfc3339();

    // 10 % of the control's 1,000 subjects convert, 20 % of the treatment's; the treatment's
    // latency is 50 ms worse. One subject turns up in both variants.
    let mut observations = traffic("c", "control", 1_000, 100, 100.0);
    observations.extend(traffic("s", "short", 1_000, 200, 150.0));
    observations.push(json!({"subject": "c-0", "variant": "short", "metric": "converted", "value": 1}));
    observe(&app, &ingest, &id, observations).await;
    // Ratings arrive with the usage records of the calls.
    let at = chrono::Utc::now().to_rfc3339();
    let records: Vec<Value> = (0..200)
        .map(|n| {
            let (variant, prefix) = if n % 2 == 0 { ("control", "c") } else { ("short", "s") };
            json!({"id": format!("call-{n}"), "timestamp": at, "model": "openai/gpt-4o-mini", "experiment_id": id,
                   "variant": variant, "subject": format!("{prefix}-{}", n + 1), "metrics": {"rating": (n % 5) + 1}})
        })
        .collect();
    expect_status(
        app.post("/v1/usage", &ingest, json!(records)).await,
        StatusCode::OK,
    )
    .await;

    let fixed = results(&app, &id, "?correction=holm").await;
    assert_eq!(fixed["method"], "fixed");
    assert_eq!(fixed["subjects_in_several_variants"], 1, "{fixed}");
    assert_eq!(fixed["srm"]["units"], json!([999, 1000]));
    assert_eq!(fixed["srm"]["flagged"], false);
    assert_eq!(fixed["min_units_reached"], true);
    let converted = comparison(&fixed, "converted", "short");
    // Without c-0 (seen in both): 99 of 999 against 200 of 1,000.
    let lift = converted["lift_abs"].as_f64().expect("lift");
    assert!((lift - (0.2 - 99.0 / 999.0)).abs() < 1e-12, "{converted}");
    assert_eq!(
        (converted["significant"].as_bool(), converted["better"].as_bool()),
        (Some(true), Some(true))
    );
    assert!(converted["p_value"].as_f64().expect("p") < 1e-6);
    assert!(
        converted["p_value_adjusted"].as_f64().expect("adjusted")
            >= converted["p_value"].as_f64().expect("p")
    );
    let rating = comparison(&fixed, "rating", "short");
    assert_eq!(
        rating["significant"], false,
        "the ratings do not differ: {rating}"
    );
    let variants = &fixed["metrics"][0]["variants"];
    assert_eq!(variants[0]["units"], 999);
    assert!((variants[0]["mean"].as_f64().expect("mean") - 99.0 / 999.0).abs() < 1e-12);

    // The harmful guardrail paused the experiment, with the evidence in the event.
    assert_eq!(fixed["guardrails_breached"][0]["metric"], "latency", "{fixed}");
    assert_eq!(fixed["status"], "paused");
    let history = expect_status(
        app.get(&format!("/v1/experiments/{id}/history"), &app.admin_key)
            .await,
        StatusCode::OK,
    )
    .await;
    let paused = history["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|item| item["event_type"] == "ExperimentPaused")
        .expect("paused");
    assert_eq!(
        paused["data"]["evidence"]["guardrails_breached"][0]["variant"],
        "short"
    );
    assert_eq!(paused["actor"]["name"], "guardrail", "{paused}");
    let subject = assign_subject(&app, &ingest, &id).await;
    assert_eq!(subject, "control", "a paused experiment assigns the control");

    let sequential = results(&app, &id, "?method=sequential").await;
    assert_eq!(comparison(&sequential, "converted", "short")["significant"], true);
    let bayesian = results(&app, &id, "?method=bayesian").await;
    let chance = comparison(&bayesian, "converted", "short")["chance_to_beat_control"]
        .as_f64()
        .expect("chance");
    assert!(chance > 0.999, "{chance}");

    // As the data stood before the traffic: nothing.
    let empty = results(&app, &id, &format!("?as_of={}", urlencode(&before_traffic))).await;
    assert_eq!(empty["srm"]["units"], json!([0, 0]), "{empty}");
    assert_eq!(empty["data"]["observations"], 0);
    for bad in [
        "?method=frequentist",
        "?correction=bonferroni",
        "?as_of=yesterday",
    ] {
        let refused = app
            .get(&format!("/v1/experiments/{id}/results{bad}"), &app.admin_key)
            .await;
        expect_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_effect_is_not_significant_and_a_sample_ratio_mismatch_is_flagged() {
    let app = TestApp::spawn().await;
    let (id, _) = experiment(&app, (50, 50)).await;
    let ingest = app.key("acme", "ingest").await;
    expect_status(lifecycle(&app, &id, "start").await, StatusCode::OK).await;
    // 15 % convert in both; 1,000 subjects against 800 where the weights expect as many.
    let mut observations = traffic("c", "control", 1_000, 150, 100.0);
    observations.extend(traffic("s", "short", 800, 120, 100.0));
    observe(&app, &ingest, &id, observations).await;
    let fixed = results(&app, &id, "").await;
    let converted = comparison(&fixed, "converted", "short");
    assert_eq!(converted["lift_abs"], 0.0);
    assert_eq!(converted["significant"], false, "{converted}");
    assert_eq!(fixed["srm"]["flagged"], true, "{fixed}");
    assert!(fixed["srm"]["p_value"].as_f64().expect("p") < 0.001);
    assert_eq!(fixed["guardrails_breached"], json!([]));
    assert_eq!(fixed["status"], "running");
}

async fn assign_subject(app: &TestApp, key: &str, id: &str) -> String {
    assign(app, &app.address, key, id, "newcomer").await["variant"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn urlencode(text: &str) -> String {
    text.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concluding_with_promote_moves_production_to_the_winner_or_asks_for_approval_when_protected() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    let (id, prompt) = experiment(&app, (50, 50)).await;
    let production = format!("/v1/prompts/{prompt}/labels/production");
    expect_status(
        app.put(&production, key, json!({"version": 1})).await,
        StatusCode::OK,
    )
    .await;
    for action in ["start", "stop"] {
        expect_status(lifecycle(&app, &id, action).await, StatusCode::OK).await;
    }
    let concluded = expect_status(
        app.post(
            &format!("/v1/experiments/{id}/conclude"),
            key,
            json!({"winner": "short", "reason": "converts better", "promote": true}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        concluded["promotion"]["change"]["kind"], "move_prompt_label",
        "{concluded}"
    );
    assert_eq!(concluded["promotion"]["change_request"], Value::Null);
    let labels = expect_status(
        app.get(&format!("/v1/prompts/{prompt}"), key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(labels["labels"]["production"], 2, "{labels}");
    // One act: the label's move is caused by the experiment, with the conclusion's reason
    // and request id.
    let history = expect_status(
        app.get(&format!("/v1/prompts/{prompt}/history"), key).await,
        StatusCode::OK,
    )
    .await;
    let moved = history["items"]
        .as_array()
        .expect("items")
        .last()
        .cloned()
        .expect("last");
    assert_eq!(moved["event_type"], "PromptLabelMoved", "{moved}");
    assert_eq!(moved["causation"], json!(id));
    assert_eq!(moved["reason"], "converts better");

    // A second experiment on the same prompt, its label now protected: the promotion waits
    // for another admin.
    let second = expect_status(
        app.post(
            "/v1/experiments",
            key,
            json!({"name": "Back to v1", "hypothesis": "v1 was better after all", "prompt_id": prompt,
                   "variants": [{"name": "now", "weight": 50, "control": true, "prompt_version": 2},
                                {"name": "old", "weight": 50, "prompt_version": 1}],
                   "primary_metric": {"name": "converted", "kind": "binary"}}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await["id"]
        .as_str()
        .expect("id")
        .to_string();
    for action in ["start", "stop"] {
        expect_status(lifecycle(&app, &second, action).await, StatusCode::OK).await;
    }
    expect_status(
        app.request(
            Method::PUT,
            &format!("/v1/protections/prompt:{prompt}:production"),
            key,
        )
        .send()
        .await
        .expect("protect"),
        StatusCode::OK,
    )
    .await;
    let awaiting = expect_status(
        app.post(
            &format!("/v1/experiments/{second}/conclude"),
            key,
            json!({"winner": "old", "reason": "v1 converts better", "promote": true}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let request = awaiting["promotion"]["change_request"]
        .as_str()
        .expect("change request")
        .to_string();
    assert_eq!(awaiting["promotion"]["applied_version"], Value::Null);
    let unchanged = expect_status(
        app.get(&format!("/v1/prompts/{prompt}"), key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(unchanged["labels"]["production"], 2, "not before approval");
    let second_admin = app.key("acme", "admin").await;
    expect_status(
        app.post(
            &format!("/v1/change-requests/{request}/approve"),
            &second_admin,
            json!({"reason": "agreed"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let approved = expect_status(
        app.get(&format!("/v1/prompts/{prompt}"), key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(approved["labels"]["production"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn targeting_and_a_reallocation_while_running_shape_assignment_and_are_flagged() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    let ingest = app.key("acme", "ingest").await;
    let id = expect_status(
        app.post(
            "/v1/experiments",
            key,
            json!({"name": "Checkout copy", "hypothesis": "Friendlier copy converts better",
                   "variants": [{"name": "control", "weight": 50, "control": true,
                                 "config": {"key": "checkout.copy", "value": "Pay"}},
                                {"name": "friendly", "weight": 50, "config": {"key": "checkout.copy", "value": "Pay now"}}],
                   "primary_metric": {"name": "converted", "kind": "binary"},
                   "targeting": {"features": ["checkout"]}}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await["id"]
        .as_str()
        .expect("id")
        .to_string();
    expect_status(lifecycle(&app, &id, "start").await, StatusCode::OK).await;
    let assign_for = |subject: String, feature: &'static str| {
        let (app, ingest, id) = (&app, &ingest, &id);
        async move {
            let response = app
                .post(
                    &format!("/v1/experiments/{id}/assign"),
                    ingest,
                    json!({"subject": subject, "feature": feature}),
                )
                .await;
            expect_status(response, StatusCode::OK).await
        }
    };
    let elsewhere = assign_for("user-1".into(), "search").await;
    assert_eq!(
        (elsewhere["variant"].as_str(), elsewhere["reason"].as_str()),
        (Some("control"), Some("not_targeted"))
    );
    let mut friendly = 0;
    for n in 0..200 {
        if assign_for(format!("user-{n}"), "checkout").await["variant"] == "friendly" {
            friendly += 1;
        }
    }
    assert!((60..=140).contains(&friendly), "{friendly}");

    // Nearly everyone back to the control, while running: recorded and flagged.
    let allocation = format!("/v1/experiments/{id}/allocation");
    let bad = app
        .put(
            &allocation,
            key,
            json!({"weights": [{"name": "control", "weight": 99}], "reason": "x"}),
        )
        .await;
    expect_problem(bad, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    let changed = expect_status(
        app.put(
            &allocation,
            key,
            json!({"weights": [{"name": "friendly", "weight": 1}, {"name": "control", "weight": 99}],
                   "targeting": {"features": ["checkout"]}, "reason": "complaints about the new copy"}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(changed["reallocated_while_running"], true);
    assert_eq!(changed["variants"][1]["weight"], 1);
    let mut now_friendly = 0;
    for n in 0..200 {
        if assign_for(format!("user-{n}"), "checkout").await["variant"] == "friendly" {
            now_friendly += 1;
        }
    }
    assert!(now_friendly < 15, "{now_friendly}");
    let results = results(&app, &id, "").await;
    assert_eq!(results["reallocated_while_running"], true);
    let history = expect_status(
        app.get(&format!("/v1/experiments/{id}/history"), key).await,
        StatusCode::OK,
    )
    .await;
    let event = history["items"]
        .as_array()
        .expect("items")
        .last()
        .cloned()
        .expect("last");
    assert_eq!(event["event_type"], "ExperimentAllocationChanged");
    assert_eq!(event["data"]["while_running"], true);
    assert_eq!(event["reason"], "complaints about the new copy");
}
