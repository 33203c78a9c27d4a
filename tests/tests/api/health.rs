//! Provider health checks, against a fake provider: an HTTP server in the test whose
//! answers can be made slow or failing. Probes are run with `POST /v1/health/checks/run`
//! (test servers do not probe in the background), never against the network.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode as AxumStatus;
use axum::routing::get;
use axum::Router;
use integration_tests::harness::{expect_each_not_found, expect_problem, expect_status, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

/// How the fake provider answers `GET /v1/models`.
#[derive(Debug, Clone, Copy)]
pub enum Behaviour {
    Ok,
    /// Answers 200 after this long.
    Slow(Duration),
    /// Answers 500.
    Failing,
}

#[derive(Clone)]
struct FakeState {
    behaviour: Arc<Mutex<Behaviour>>,
    hits: Arc<AtomicUsize>,
}

/// An OpenAI-compatible server on 127.0.0.1 that answers as told; stops when dropped.
pub struct FakeProvider {
    address: String,
    state: FakeState,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.server.abort();
    }
}

async fn models(State(state): State<FakeState>) -> (AxumStatus, &'static str) {
    state.hits.fetch_add(1, Ordering::SeqCst);
    let behaviour = *state.behaviour.lock().expect("behaviour");
    match behaviour {
        Behaviour::Ok => (AxumStatus::OK, r#"{"object":"list","data":[]}"#),
        Behaviour::Slow(delay) => {
            // The provider being slow is what is under test.
            tokio::time::sleep(delay).await;
            (AxumStatus::OK, r#"{"object":"list","data":[]}"#)
        }
        Behaviour::Failing => (AxumStatus::INTERNAL_SERVER_ERROR, "upstream exploded"),
    }
}

impl FakeProvider {
    pub async fn start() -> Self {
        let state = FakeState {
            behaviour: Arc::new(Mutex::new(Behaviour::Ok)),
            hits: Arc::new(AtomicUsize::new(0)),
        };
        let router = Router::new()
            .route("/v1/models", get(models))
            .with_state(state.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = format!("http://{}", listener.local_addr().expect("address"));
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, router).await;
        });
        Self {
            address,
            state,
            server,
        }
    }

    pub fn base_url(&self) -> String {
        format!("{}/v1", self.address)
    }

    pub fn set(&self, behaviour: Behaviour) {
        *self.state.behaviour.lock().expect("behaviour") = behaviour;
    }

    pub fn hits(&self) -> usize {
        self.state.hits.load(Ordering::SeqCst)
    }
}

/// Registers the provider `local` at `fake` with the admin key; returns its id.
pub async fn register_local(app: &TestApp, fake: &FakeProvider) -> String {
    let body = json!({ "name": "local", "kind": "openai", "base_url": fake.base_url(),
                       "credential_ref": "env:LOCAL_KEY" });
    let created = expect_status(
        app.post("/v1/providers", &app.admin_key, body).await,
        StatusCode::CREATED,
    )
    .await;
    created["id"].as_str().expect("id").to_string()
}

/// Runs the checks with `key` and returns the result for `provider`.
pub async fn run_checks(app: &TestApp, key: &str, provider: &str) -> Value {
    let ran = expect_status(
        app.post("/v1/health/checks/run", key, json!({})).await,
        StatusCode::OK,
    )
    .await;
    ran["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|item| item["provider_id"] == provider)
        .cloned()
        .unwrap_or_else(|| panic!("no result for {provider}: {ran}"))
}

/// The recorded state changes of `provider`'s health, as `from→to`.
async fn changes(app: &TestApp, provider: &str) -> Vec<String> {
    let payloads: Vec<Value> = sqlx::query_scalar(
        "select payload -> 'ProviderHealthChanged' from events
         where aggregate_type = 'provider_health' and aggregate_id = $1 order by sequence",
    )
    .bind(provider)
    .fetch_all(app.pool())
    .await
    .expect("changes");
    payloads
        .iter()
        .map(|p| {
            format!(
                "{}→{}",
                p["from"].as_str().expect("from"),
                p["to"].as_str().expect("to")
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_is_healthy_degraded_or_down_as_its_latest_probes_say() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    let fake = FakeProvider::start().await;
    let provider = register_local(&app, &fake).await;
    let set = expect_status(
        app.put(
            &format!("/v1/providers/{provider}/health-check"),
            key,
            json!({ "timeout_ms": 1000, "degraded_latency_ms": 100, "reason": "tighter" }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        set["health_check"],
        json!({ "interval_seconds": 60, "timeout_ms": 1000, "degraded_latency_ms": 100,
                "open_incident_on_down": false })
    );

    let before = expect_status(app.get("/v1/health", key).await, StatusCode::OK).await;
    assert_eq!(before["items"][0]["state"], "unknown");
    assert_eq!(before["items"][0]["uptime_24h"], Value::Null);

    let healthy = run_checks(&app, key, &provider).await;
    assert_eq!(fake.hits(), 1, "the probe asked the fake provider");
    assert_eq!(healthy["state"], "healthy");
    assert_eq!(healthy["changed"], true);
    assert_eq!(healthy["probe"]["ok"], true);
    assert_eq!(healthy["probe"]["status_code"], 200);

    fake.set(Behaviour::Slow(Duration::from_millis(300)));
    let slow = run_checks(&app, key, &provider).await;
    assert_eq!(slow["state"], "degraded", "{slow}");
    assert_eq!(slow["probe"]["ok"], true);

    fake.set(Behaviour::Failing);
    for expected in ["degraded", "degraded", "down", "down"] {
        let failed = run_checks(&app, key, &provider).await;
        assert_eq!(failed["state"], expected, "{failed}");
        assert_eq!(failed["probe"]["ok"], false);
        assert_eq!(failed["probe"]["status_code"], 500);
        assert_eq!(failed["probe"]["error"], "answered 500");
    }
    let overview = expect_status(app.get("/v1/health", key).await, StatusCode::OK).await;
    let local = &overview["items"][0];
    assert_eq!(local["provider"], "local");
    assert_eq!(local["state"], "down");
    assert!(local["since"].is_string());
    assert_eq!(local["probes_24h"], 6);
    let uptime = local["uptime_24h"].as_f64().unwrap();
    assert!((uptime - 2.0 / 6.0).abs() < 1e-9, "{uptime}");
    let recent = local["recent_probes"].as_array().unwrap();
    assert_eq!(recent.len(), 6);
    assert_eq!(recent[0]["ok"], false, "newest first");
    assert_eq!(recent[5]["ok"], true);

    // A probe that times out fails too; one good probe heals.
    fake.set(Behaviour::Slow(Duration::from_millis(1500)));
    let timed_out = run_checks(&app, key, &provider).await;
    assert_eq!(timed_out["probe"]["ok"], false);
    assert_eq!(timed_out["probe"]["error"], "no answer within 1000 ms");
    fake.set(Behaviour::Ok);
    assert_eq!(run_checks(&app, key, &provider).await["state"], "healthy");

    // Each change is an event, recorded once; a probe that changes nothing records none.
    assert_eq!(
        changes(&app, &provider).await,
        [
            "unknown→healthy",
            "healthy→degraded",
            "degraded→down",
            "down→healthy"
        ]
    );
    let actor: String = sqlx::query_scalar(
        "select metadata ->> 'actor_name' from events where aggregate_type = 'provider_health' limit 1",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(actor, "health-prober");

    // A disabled provider is not probed.
    expect_status(
        app.patch(
            &format!("/v1/providers/{provider}"),
            key,
            json!({ "enabled": false }),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    let ran = expect_status(
        app.post("/v1/health/checks/run", key, json!({})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(ran["items"], json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_check_settings_are_checked_and_scoped_to_the_tenant() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    let fake = FakeProvider::start().await;
    let provider = register_local(&app, &fake).await;
    let path = format!("/v1/providers/{provider}/health-check");
    let problem = expect_problem(
        app.put(
            &path,
            key,
            json!({ "interval_seconds": 1, "timeout_ms": 1000, "degraded_latency_ms": 2000 }),
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
    assert_eq!(fields, ["interval_seconds", "degraded_latency_ms"]);
    for body in [
        json!({ "timeout_ms": -1 }),
        json!({ "every": 5 }),
        json!({ "open_incident_on_down": "yes" }),
    ] {
        expect_problem(
            app.put(&path, key, body).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed",
        )
        .await;
    }
    let history = expect_status(
        app.get(&format!("/v1/providers/{provider}/history"), key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        history["items"].as_array().unwrap().len(),
        1,
        "nothing refused was recorded"
    );

    // Only an admin runs the checks; anyone may read the health.
    let viewer = app.key("acme", "viewer").await;
    expect_problem(
        app.post("/v1/health/checks/run", &viewer, json!({})).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    expect_status(app.get("/v1/health", &viewer).await, StatusCode::OK).await;

    // Another tenant sees none of it, and probes none of it.
    let other = app.key("globex", "admin").await;
    let theirs = expect_status(app.get("/v1/health", &other).await, StatusCode::OK).await;
    assert_eq!(theirs["items"], json!([]));
    let ran = expect_status(
        app.post("/v1/health/checks/run", &other, json!({})).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(ran["items"], json!([]));
    assert_eq!(fake.hits(), 0);
    expect_each_not_found(
        &app,
        &other,
        vec![(Method::PUT, path.clone(), Some(json!({ "timeout_ms": 3000 })))],
        "local",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_probing_at_once_record_each_change_once() {
    let app = TestApp::spawn().await;
    let peer = app.spawn_peer().await;
    let key = &app.admin_key;
    let fake = FakeProvider::start().await;
    let provider = register_local(&app, &fake).await;
    fake.set(Behaviour::Failing);
    let run = |address: String| {
        let client = app.client.clone();
        let key = key.clone();
        async move {
            let response = client
                .post(format!("{address}/v1/health/checks/run"))
                .bearer_auth(key)
                .json(&json!({}))
                .send()
                .await
                .unwrap();
            expect_status(response, StatusCode::OK).await
        }
    };
    for _ in 0..3 {
        let (first, second) = tokio::join!(run(app.address.clone()), run(peer.address.clone()));
        assert_eq!(first["items"].as_array().unwrap().len(), 1, "{first}");
        assert_eq!(second["items"].as_array().unwrap().len(), 1, "{second}");
    }
    assert_eq!(fake.hits(), 6);
    assert_eq!(
        changes(&app, &provider).await,
        ["unknown→degraded", "degraded→down"]
    );
}
