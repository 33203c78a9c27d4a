//! `TestApp`: a real aipm server on a fresh database, bound to a free port.

use std::time::Duration;

use reqwest::{Method, Response, StatusCode};
use serde_json::Value;
use sqlx::{Connection, PgConnection, PgPool};
use uuid::Uuid;

/// Where the tests' PostgreSQL lives; each test gets its own database on it.
pub fn server_url() -> String {
    std::env::var("AIPM_TEST_POSTGRES").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into())
}

/// A connection to another database of the same cluster, inside a transaction that holds
/// a transaction id (as any writing transaction does) until it is dropped.
pub async fn transaction_in_another_database() -> PgConnection {
    let url = format!("{}/postgres", server_url());
    let mut other = PgConnection::connect(&url).await.expect("connect to postgres");
    sqlx::query("begin").execute(&mut other).await.expect("begin");
    sqlx::query("select pg_current_xact_id()")
        .execute(&mut other)
        .await
        .expect("take a transaction id");
    other
}

/// A fresh, migrated database that is dropped when this value is.
pub struct TestDatabase {
    pub name: String,
    pub url: String,
    pub pool: PgPool,
}

impl TestDatabase {
    pub async fn create() -> Self {
        let name = format!("aipm_test_{}", Uuid::new_v4().simple());
        let url = format!("{}/{}", server_url(), name);
        let pool = api::db::connect(&url, 24).await.expect("test database");
        Self { name, url, pool }
    }

    /// A copy of this database as it is now, made with pg_dump and pg_restore (a backup
    /// restored next to the original, on the same server).
    pub async fn copy(&self) -> Self {
        let name = format!("aipm_test_{}", Uuid::new_v4().simple());
        crate::postgres::copy_database(&self.url, &server_url(), &name);
        let url = format!("{}/{}", server_url(), name);
        let pool = api::db::connect(&url, 24).await.expect("copied database");
        Self { name, url, pool }
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        let name = self.name.clone();
        let admin_url = format!("{}/postgres", server_url());
        // Drop runs outside async code: a short-lived thread with its own runtime.
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
                return;
            };
            runtime.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin_url).await {
                    let _ = sqlx::query(&format!("drop database if exists \"{name}\" with (force)"))
                        .execute(&mut conn)
                        .await;
                }
            });
        })
        .join();
    }
}

/// A running server with an admin key for tenant `acme`.
pub struct TestApp {
    pub address: String,
    pub db: TestDatabase,
    pub client: reqwest::Client,
    pub admin_key: String,
    /// What the server was started with; peers start with the same.
    pub settings: api::Settings,
    server: tokio::task::JoinHandle<()>,
}

/// Another server on a test database; see [`TestApp::spawn_peer`].
pub struct PeerServer {
    pub address: String,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for PeerServer {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.server.abort();
        if self
            .settings
            .exports
            .dir
            .starts_with(std::env::temp_dir().join("aipm-test-exports"))
        {
            let _ = std::fs::remove_dir_all(&self.settings.exports.dir);
        }
        if let Some(relay) = &self.settings.relay {
            crate::nats::delete_stream_blocking(&relay.nats_url, &relay.stream);
        }
        if let Some(anchors) = &self.settings.anchors {
            crate::nats::delete_stream_blocking(&anchors.nats_url, &anchors.stream);
        }
    }
}

/// What [`TestApp::spawn`] starts a server with: the NATS feed on the shared server, to a
/// stream and subject prefix of the test's own (deleted when the `TestApp` is dropped).
pub fn test_settings() -> api::Settings {
    api::Settings::default().with_relay(Some(crate::nats::unique_relay_settings(&crate::nats::nats_url())))
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(test_settings()).await
    }

    /// A server configured with `settings` (`api::Settings::default()`: no NATS feed). A
    /// feed's stream is deleted when the `TestApp` is dropped.
    pub async fn spawn_with(settings: api::Settings) -> Self {
        Self::spawn_on(TestDatabase::create().await, settings).await
    }

    /// A server on `db` (not a fresh database), with an admin key for tenant `acme`. It
    /// never probes providers in the background (tests register providers on the real
    /// internet's addresses, which must not be called): tests probe with
    /// `POST /v1/health/checks/run`.
    pub async fn spawn_on(db: TestDatabase, mut settings: api::Settings) -> Self {
        settings.health.prober = false;
        if settings.exports.dir == api::Settings::default().exports.dir {
            // Export files of the test's own, shared with its peers as processes on one
            // machine share a directory.
            settings.exports.dir = std::env::temp_dir().join("aipm-test-exports").join(&db.name);
        }
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = format!("http://{}", listener.local_addr().expect("address"));
        let pool = db.pool.clone();
        let server_settings = settings.clone();
        let server = tokio::spawn(async move {
            let _ = api::serve(server_settings, pool, listener).await;
        });
        let (_, admin_key) = api::cli::create_key(&db.pool, "acme", "admin", "test-admin")
            .await
            .expect("admin key");
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .expect("client");
        Self {
            address,
            db,
            client,
            admin_key,
            settings,
            server,
        }
    }

    /// A second server on the same database, as another aipm process would be: its own
    /// pool, aggregate cache and projection runners. Stops when the value is dropped.
    pub async fn spawn_peer(&self) -> PeerServer {
        self.spawn_peer_with(self.settings.clone()).await
    }

    /// [`Self::spawn_peer`] configured with `settings`.
    pub async fn spawn_peer_with(&self, settings: api::Settings) -> PeerServer {
        let pool = api::db::connect(&self.db.url, 16).await.expect("peer pool");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = format!("http://{}", listener.local_addr().expect("address"));
        let server = tokio::spawn(async move {
            let _ = api::serve(settings, pool, listener).await;
        });
        PeerServer { address, server }
    }

    pub fn pool(&self) -> &PgPool {
        &self.db.pool
    }

    /// Stops the server (and its relay), as a process that died would, keeping its database
    /// and stream.
    pub fn stop(&self) {
        self.server.abort();
    }

    /// A key with `role` in `tenant` (created if new), issued as the CLI does.
    pub async fn key(&self, tenant: &str, role: &str) -> String {
        api::cli::create_key(self.pool(), tenant, role, &format!("{tenant}-{role}"))
            .await
            .expect("key")
            .1
    }

    pub fn request(&self, method: Method, path: &str, key: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{}", self.address, path))
            .bearer_auth(key)
    }

    pub async fn get(&self, path: &str, key: &str) -> Response {
        self.request(Method::GET, path, key)
            .send()
            .await
            .expect("request")
    }

    pub async fn post(&self, path: &str, key: &str, body: Value) -> Response {
        self.request(Method::POST, path, key)
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    pub async fn put(&self, path: &str, key: &str, body: Value) -> Response {
        self.request(Method::PUT, path, key)
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    pub async fn patch(&self, path: &str, key: &str, body: Value) -> Response {
        self.request(Method::PATCH, path, key)
            .json(&body)
            .send()
            .await
            .expect("request")
    }

    pub async fn delete(&self, path: &str, key: &str) -> Response {
        self.request(Method::DELETE, path, key)
            .send()
            .await
            .expect("request")
    }

    /// Creates a prompt with the admin key and returns its id.
    pub async fn create_prompt(&self, name: &str) -> String {
        let response = self
            .post(
                "/v1/prompts",
                &self.admin_key,
                serde_json::json!({ "name": name }),
            )
            .await;
        let body = expect_status(response, StatusCode::CREATED).await;
        body["id"].as_str().expect("id").to_string()
    }

    /// Publishes a version with the admin key and returns its number.
    pub async fn publish(&self, prompt: &str, template: &str) -> i64 {
        let path = format!("/v1/prompts/{prompt}/versions");
        let response = self
            .post(
                &path,
                &self.admin_key,
                serde_json::json!({ "template": template }),
            )
            .await;
        let body = expect_status(response, StatusCode::CREATED).await;
        body["version"].as_i64().expect("version")
    }

    /// Registers the provider `openai` (an OpenAI-compatible server) with the admin key and
    /// returns its id.
    pub async fn register_openai(&self) -> String {
        let body = serde_json::json!({ "name": "openai", "kind": "openai", "base_url": "https://api.openai.com/v1",
                                       "credential_ref": "env:OPENAI_API_KEY" });
        let response = self.post("/v1/providers", &self.admin_key, body).await;
        let body = expect_status(response, StatusCode::CREATED).await;
        body["id"].as_str().expect("id").to_string()
    }

    /// Registers the model `openai/<model_id>` (with `extra` fields) with the admin key and
    /// returns its id.
    pub async fn register_model(&self, model_id: &str, extra: Value) -> String {
        let mut body = serde_json::json!({ "provider": "openai", "model_id": model_id });
        if let (Some(body), Some(extra)) = (body.as_object_mut(), extra.as_object()) {
            body.extend(extra.clone());
        }
        let response = self.post("/v1/models", &self.admin_key, body).await;
        let body = expect_status(response, StatusCode::CREATED).await;
        body["id"].as_str().expect("id").to_string()
    }

    /// Number of rows in the event log.
    pub async fn event_count(&self) -> i64 {
        sqlx::query_scalar("select count(*) from events")
            .fetch_one(self.pool())
            .await
            .expect("count")
    }
}

/// The keys and values of a configuration listing (`GET /v1/config`), in its order.
pub fn keys_and_values(listing: &Value) -> Vec<(String, Value)> {
    listing["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| {
            (
                item["key"].as_str().expect("key").to_string(),
                item["value"].clone(),
            )
        })
        .collect()
}

/// The cursor of the last event in the global order.
pub async fn last_event_cursor(pool: &PgPool) -> domain::position::GlobalCursor {
    let (transaction_id, position): (i64, i64) = sqlx::query_as(
        "select transaction_id::text::bigint, position from events
         order by transaction_id desc, position desc limit 1",
    )
    .fetch_one(pool)
    .await
    .expect("last event");
    domain::position::GlobalCursor::new(transaction_id, position)
}

/// Asserts the status and returns the JSON body (`Null` when empty).
pub async fn expect_status(response: Response, status: StatusCode) -> Value {
    let actual = response.status();
    let text = response.text().await.expect("body");
    assert_eq!(actual, status, "unexpected status; body: {text}");
    if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).expect("JSON body")
    }
}

/// Asserts a problem+json response with `status` and `type` ending in `/problems/<slug>`.
pub async fn expect_problem(response: Response, status: StatusCode, slug: &str) -> Value {
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    let body = expect_status(response, status).await;
    assert_eq!(content_type, "application/problem+json", "body: {body}");
    assert_eq!(body["type"], format!("/problems/{slug}"), "body: {body}");
    assert_eq!(body["status"], status.as_u16());
    assert!(body["detail"].is_string());
    body
}

/// Sends each request (method, path, optional JSON body) with `key` and asserts that every
/// answer is a `404 not-found` problem that does not mention `hidden` (another tenant's name).
pub async fn expect_each_not_found(
    app: &TestApp,
    key: &str,
    requests: Vec<(Method, String, Option<Value>)>,
    hidden: &str,
) {
    for (method, path, body) in requests {
        let mut request = app.request(method.clone(), &path, key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("request");
        let problem = expect_problem(response, StatusCode::NOT_FOUND, "not-found").await;
        assert!(
            !problem.to_string().contains(hidden),
            "{method} {path} leaks: {problem}"
        );
    }
}

/// The value of the series `series` (name and labels as Prometheus prints them) in `text`.
pub fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}
