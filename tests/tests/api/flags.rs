//! Feature flags: deterministic evaluation from memory on every instance, kept current from
//! the log; changes with reasons and history.

use std::time::{Duration, Instant};

use integration_tests::harness::{expect_each_not_found, expect_problem, expect_status, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

const SUBJECTS: usize = 1_000;

async fn set_flag(app: &TestApp, address: &str, key: &str, body: Value) -> Value {
    let response = app
        .client
        .put(format!("{address}/v1/flags/{key}"))
        .bearer_auth(&app.admin_key)
        .json(&body)
        .send()
        .await
        .expect("request");
    expect_status(response, StatusCode::OK).await
}

/// Each subject's answer from the server at `address`: (enabled, variant).
async fn answers(app: &TestApp, address: &str, key: &str) -> Vec<(bool, Value)> {
    let mut answers = Vec::with_capacity(SUBJECTS);
    for n in 0..SUBJECTS {
        let response = app
            .client
            .get(format!("{address}/v1/flags/{key}/evaluate?subject=user-{n}"))
            .bearer_auth(&app.admin_key)
            .send()
            .await
            .expect("request");
        let answer = expect_status(response, StatusCode::OK).await;
        answers.push((
            answer["enabled"].as_bool().expect("enabled"),
            answer["variant"].clone(),
        ));
    }
    answers
}

fn share_on(answers: &[(bool, Value)]) -> f64 {
    answers.iter().filter(|(on, _)| *on).count() as f64 / answers.len() as f64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_instance_answers_alike_before_and_after_a_restart_and_follows_changes_made_elsewhere() {
    // Thousands of evaluations from one key: the per-key rate limit has tests of its own.
    let mut settings = integration_tests::harness::test_settings();
    settings.security.rate_limit = None;
    let app = TestApp::spawn_with(settings).await;
    let flag = json!({ "enabled": true, "rollout_percent": 30, "reason": "canary",
                       "variants": [{ "name": "blue", "weight": 1 }, { "name": "green", "weight": 1 }] });
    let set = set_flag(&app, &app.address, "checkout.new_flow", flag).await;
    assert_eq!(set["rollout_percent"], 30.0);
    let first = answers(&app, &app.address, "checkout.new_flow").await;
    let share = share_on(&first);
    assert!((0.25..=0.35).contains(&share), "30 % rollout, {share} on");
    let variants: Vec<&Value> = first.iter().filter(|(on, _)| *on).map(|(_, v)| v).collect();
    assert!(variants.iter().all(|v| *v == "blue" || *v == "green"));
    assert!(first.iter().filter(|(on, _)| !on).all(|(_, v)| v.is_null()));

    // Another process, started after the change: it loads the flag and answers alike.
    let peer = app.spawn_peer().await;
    assert_eq!(answers(&app, &peer.address, "checkout.new_flow").await, first);

    // A change made on the peer reaches this process through the log.
    let wider = json!({ "enabled": true, "rollout_percent": 60, "reason": "widen",
                        "variants": [{ "name": "blue", "weight": 1 }, { "name": "green", "weight": 1 }] });
    let changed = set_flag(&app, &peer.address, "checkout.new_flow", wider).await;
    let version = changed["version"].as_i64().unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let seen = expect_status(
            app.get(
                "/v1/flags/checkout.new_flow/evaluate?subject=user-0",
                &app.admin_key,
            )
            .await,
            StatusCode::OK,
        )
        .await;
        if seen["version"].as_i64() == Some(version) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the change never reached the other process"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let widened = answers(&app, &app.address, "checkout.new_flow").await;
    assert!(
        first
            .iter()
            .zip(&widened)
            .all(|(before, after)| !before.0 || after == before),
        "a subject inside the rollout stays inside, with its variant"
    );
    assert!(share_on(&widened) > share);
    assert_eq!(answers(&app, &peer.address, "checkout.new_flow").await, widened);

    // After a restart (a fresh process on the same database), the same answers.
    drop(peer);
    app.stop();
    let restarted = app.spawn_peer().await;
    assert_eq!(
        answers(&app, &restarted.address, "checkout.new_flow").await,
        widened
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flags_are_checked_and_keep_their_history() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    let before = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    set_flag(
        &app,
        &app.address,
        "search.rerank",
        json!({ "enabled": false, "rollout_percent": 0, "reason": "built" }),
    )
    .await;
    let at_zero = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true);
    set_flag(
        &app,
        &app.address,
        "search.rerank",
        json!({ "enabled": true, "rollout_percent": 12.5, "reason": "start" }),
    )
    .await;

    let off = expect_status(
        app.get(&format!("/v1/flags/search.rerank?as_of={at_zero}"), key)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        (off["enabled"].as_bool(), off["rollout_percent"].as_f64()),
        (Some(false), Some(0.0))
    );
    let none_yet = app
        .get(&format!("/v1/flags/search.rerank?as_of={before}"), key)
        .await;
    expect_problem(none_yet, StatusCode::NOT_FOUND, "not-found").await;
    let history = expect_status(
        app.get("/v1/flags/search.rerank/history", key).await,
        StatusCode::OK,
    )
    .await;
    let last = &history["items"][1];
    assert_eq!(last["reason"], "start");
    assert_eq!(last["data"]["previous"]["enabled"], false);
    assert_eq!(last["data"]["settings"]["rollout"], 1250);
    assert_eq!(
        history["items"][0]["data"]["salt"], last["data"]["salt"],
        "the salt never changes"
    );
    let listed = expect_status(app.get("/v1/flags", key).await, StatusCode::OK).await;
    assert_eq!(listed["items"][0]["key"], "search.rerank");

    let events_before = app.event_count().await;
    for (body, field) in [
        (
            json!({ "enabled": true, "rollout_percent": 100.5, "reason": "r" }),
            "rollout_percent",
        ),
        (
            json!({ "enabled": true, "rollout_percent": 10.001, "reason": "r" }),
            "rollout_percent",
        ),
        (
            json!({ "enabled": true, "rollout_percent": -1, "reason": "r" }),
            "rollout_percent",
        ),
        (
            json!({ "enabled": true, "rollout_percent": 10, "reason": "r",
                    "variants": [{ "name": "a", "weight": 1 }, { "name": "a", "weight": 2 }] }),
            "variants",
        ),
        (json!({ "enabled": true, "rollout_percent": 10 }), "reason"),
    ] {
        let refused = app.put("/v1/flags/search.rerank", key, body).await;
        let problem = expect_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    assert_eq!(
        app.event_count().await,
        events_before,
        "nothing recorded for refused changes"
    );
    for bad in [
        "/v1/flags/search.rerank/evaluate",
        "/v1/flags/search.rerank/evaluate?subject=",
        "/v1/flags/search..rerank/evaluate?subject=a",
    ] {
        let refused = app.get(bad, key).await;
        expect_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
    }
    let unknown = app.get("/v1/flags/search.other/evaluate?subject=a", key).await;
    expect_problem(unknown, StatusCode::NOT_FOUND, "not-found").await;

    // Another tenant sees none of it, and its own flag of the same name is its own.
    let other = app.key("globex", "admin").await;
    expect_each_not_found(
        &app,
        &other,
        vec![
            (Method::GET, "/v1/flags/search.rerank".into(), None),
            (
                Method::GET,
                "/v1/flags/search.rerank?as_of=2999-01-01T00:00:00Z".into(),
                None,
            ),
            (Method::GET, "/v1/flags/search.rerank/history".into(), None),
            (
                Method::GET,
                "/v1/flags/search.rerank/evaluate?subject=a".into(),
                None,
            ),
        ],
        "acme",
    )
    .await;
    let theirs = expect_status(app.get("/v1/flags", &other).await, StatusCode::OK).await;
    assert_eq!(theirs["items"], json!([]));
    let viewer = app.key("acme", "viewer").await;
    let refused = app
        .put(
            "/v1/flags/search.rerank",
            &viewer,
            json!({ "enabled": true, "rollout_percent": 100, "reason": "r" }),
        )
        .await;
    expect_problem(refused, StatusCode::FORBIDDEN, "forbidden").await;
    let evaluated = expect_status(
        app.get("/v1/flags/search.rerank/evaluate?subject=a", &viewer)
            .await,
        StatusCode::OK,
    )
    .await;
    assert!(evaluated["reason"] == "in_rollout" || evaluated["reason"] == "outside_rollout");
}
