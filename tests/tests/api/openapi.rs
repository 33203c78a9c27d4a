//! The OpenAPI document describes every route the server has and what they answer, and
//! the docs page works offline.
//!
//! How a route missing from the document is caught: axum has no API that lists a router's
//! routes, but its `Debug` output prints the router's own path table (`Node { paths: {..} }`),
//! into which every `.route(..)`, `merge` and `nest` writes, whether or not it went through
//! `utoipa_axum::routes!`. The test reads the paths from there, asks each path every method
//! (a method it does not serve is the router's `method-not-allowed` problem), and requires
//! each (method, path) found to be in the document. It checks itself on a router with a
//! route added with plain axum, and fails if the table cannot be read (an axum upgrade that
//! changes the format), so it cannot pass by finding nothing. The other direction, that each
//! documented operation exists, is checked over HTTP.

use std::collections::BTreeSet;
use std::sync::Arc;

use api::state::{App, AppState};
use axum::body::Body;
use axum::http::{Method, Request};
use axum::Router;
use integration_tests::harness::{expect_status, TestApp, TestDatabase};
use reqwest::StatusCode;
use serde_json::{json, Value};
use tower::ServiceExt;

/// The methods the API may use; HEAD comes with GET.
const METHODS: [Method; 5] = [
    Method::GET,
    Method::POST,
    Method::PUT,
    Method::PATCH,
    Method::DELETE,
];

/// `{prompt_id}` and `{*rest}` alike become `{}`: parameter names do not matter.
fn normalise(path: &str) -> String {
    path.split('/')
        .map(|segment| if segment.starts_with('{') { "{}" } else { segment })
        .collect::<Vec<_>>()
        .join("/")
}

/// A concrete path for a template: every parameter filled with a value that matches any
/// route segment (handlers may reject it; the router must still route it).
fn concrete(path: &str) -> String {
    path.split('/')
        .map(|segment| if segment.starts_with('{') { "1" } else { segment })
        .collect::<Vec<_>>()
        .join("/")
}

fn is_event_stream(headers: &reqwest::header::HeaderMap) -> bool {
    headers
        .get("content-type")
        .is_some_and(|value| value.as_bytes().starts_with(b"text/event-stream"))
}

/// The (method, normalised path) pairs the document describes.
fn documented(document: &Value) -> BTreeSet<(String, String)> {
    let mut operations = BTreeSet::new();
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in METHODS {
            if item.get(method.as_str().to_lowercase()).is_some() {
                operations.insert((method.to_string(), normalise(path)));
            }
        }
    }
    operations
}

/// The paths in the router's own table, read from its `Debug` output.
fn router_paths(router: &Router) -> BTreeSet<String> {
    let debug = format!("{router:?}");
    // `Router { path_router: .., fallback_router: .. }`: the fallback router holds only the
    // router's fallback, at `/` and a catch-all.
    let (path_router, _) = debug
        .split_once("fallback_router:")
        .unwrap_or_else(|| panic!("unexpected Debug output of axum's Router: {debug}"));
    let mut paths = BTreeSet::new();
    let mut rest = path_router;
    // Entries look like `RouteId(3): "/v1/prompts/{prompt_id}"`.
    while let Some(start) = rest.find("RouteId(") {
        rest = &rest[start + "RouteId(".len()..];
        let Some(after_id) = rest.find("): \"") else {
            continue;
        };
        if !rest[..after_id].chars().all(|c| c.is_ascii_digit()) {
            continue;
        }
        let quoted = &rest[after_id + "): \"".len()..];
        let Some(end) = quoted.find('"') else { continue };
        let path = &quoted[..end];
        // axum's own catch-alls for nesting are not routes.
        if !path.contains("__private__axum") {
            paths.insert(path.to_string());
        }
    }
    paths
}

/// The problem type of a response, if it is a problem.
async fn problem_type(response: axum::response::Response) -> Option<String> {
    let bytes = axum::body::to_bytes(response.into_body(), 10 * 1024 * 1024)
        .await
        .ok()?;
    let body: Value = serde_json::from_slice(&bytes).ok()?;
    body["type"].as_str().map(str::to_string)
}

/// Every (method, normalised path) the router serves: its table's paths, each asked every
/// method. Requests carry no key, so nothing changes.
async fn served(router: &Router) -> BTreeSet<(String, String)> {
    let paths = router_paths(router);
    assert!(
        paths.contains("/healthz") && paths.contains("/v1/prompts/{prompt_id}"),
        "could not read the routes from the router's Debug output (axum changed it?): {paths:?}"
    );
    let mut operations = BTreeSet::new();
    for path in &paths {
        for method in METHODS {
            let request = Request::builder()
                .method(method.clone())
                .uri(concrete(path))
                .body(Body::empty())
                .expect("request");
            let response = router.clone().oneshot(request).await.expect("infallible");
            // 405 is the router's own answer for a method the path does not serve.
            let not_served = response.status() == StatusCode::METHOD_NOT_ALLOWED;
            let kind = problem_type(response).await;
            assert_ne!(kind.as_deref(), Some("/problems/no-route"), "{method} {path}");
            if !not_served {
                operations.insert((method.to_string(), normalise(path)));
            }
        }
    }
    operations
}

/// The router the server runs, on a fresh database, and its document.
async fn router_and_document(db: &TestDatabase) -> (Router, Value) {
    let app = App::start(db.pool.clone(), &api::Settings::default())
        .await
        .expect("start");
    let state = AppState(Arc::new(app));
    let router = api::build_router(state);
    let request = Request::builder()
        .uri("/openapi.json")
        .body(Body::empty())
        .expect("request");
    let response = router.clone().oneshot(request).await.expect("infallible");
    let bytes = axum::body::to_bytes(response.into_body(), 10 * 1024 * 1024)
        .await
        .expect("document");
    (router, serde_json::from_slice(&bytes).expect("JSON document"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_the_router_serves_is_in_the_document() {
    let db = TestDatabase::create().await;
    let (router, document) = router_and_document(&db).await;
    let documented = documented(&document);
    let served = served(&router).await;
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert!(
        undocumented.is_empty(),
        "routes missing from /openapi.json: {undocumented:?}"
    );
    let unserved: Vec<_> = documented.difference(&served).collect();
    assert!(
        unserved.is_empty(),
        "documented operations the router does not serve: {unserved:?}"
    );

    // The check itself: a route added with plain axum, outside `routes!`, is caught.
    let extended = router.route(
        "/v1/undocumented/{id}",
        axum::routing::delete(|| async { "not in the document" }),
    );
    let served = self::served(&extended).await;
    let undocumented: Vec<_> = served.difference(&documented).collect();
    assert_eq!(
        undocumented,
        [&("DELETE".to_string(), "/v1/undocumented/{}".to_string())]
    );
}

/// A server whose brute-force limit lets the many keyless requests of these tests reach
/// the routes instead of answering them 429.
async fn spawn() -> TestApp {
    let security = api::settings::SecuritySettings {
        auth_failure_limit: None,
        ..Default::default()
    };
    #[allow(clippy::needless_update)] // every other setting keeps its default
    let settings = api::Settings {
        security,
        ..Default::default()
    };
    TestApp::spawn_with(settings).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_documented_operation_is_served_and_secured_as_documented() {
    let app = spawn().await;
    // Redirects are answers too: `/docs` documents its 303.
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let document = expect_status(
        client
            .get(format!("{}/openapi.json", app.address))
            .send()
            .await
            .expect("request"),
        StatusCode::OK,
    )
    .await;
    assert_eq!(document["openapi"], "3.1.0");
    let scheme = &document["components"]["securitySchemes"][api::openapi::BEARER];
    assert_eq!(scheme["type"], "http");
    assert_eq!(scheme["scheme"], "bearer");
    let public = [
        "/healthz",
        "/readyz",
        "/openapi.json",
        "/docs",
        "/docs/",
        "/docs/{file}",
    ];
    let mut count = 0;
    for (path, item) in document["paths"].as_object().expect("paths") {
        for method in METHODS {
            let Some(operation) = item.get(method.as_str().to_lowercase()) else {
                continue;
            };
            count += 1;
            let operation_name = format!("{method} {path}");
            let security = operation["security"].as_array().expect("security stated");
            let responses = &operation["responses"];
            if public.contains(&path.as_str()) {
                assert!(security.is_empty(), "{operation_name} is public");
            } else {
                assert_eq!(security, &[json!({ "bearer": [] })], "{operation_name}");
                for status in ["401", "403", "429"] {
                    assert!(responses.get(status).is_some(), "{operation_name} lists {status}");
                }
            }
            // Served: neither the router's no-route nor its method-not-allowed problem, with
            // a key or without.
            let url = format!("{}{}", app.address, concrete(path));
            for key in [None, Some(&app.admin_key)] {
                let mut request = client
                    .request(method.clone(), &url)
                    .header("content-type", "application/json")
                    .body("{}");
                if let Some(key) = key {
                    request = request.bearer_auth(key);
                }
                let response = request.send().await.expect("request");
                let status = response.status();
                // A live feed answers with a stream that does not end: its status says enough.
                let body: Value = if is_event_stream(response.headers()) {
                    Value::Null
                } else {
                    response.json().await.unwrap_or(Value::Null)
                };
                assert_ne!(body["type"], "/problems/no-route", "{operation_name}");
                assert_ne!(body["type"], "/problems/method-not-allowed", "{operation_name}");
                assert!(
                    responses.get(status.as_str()).is_some(),
                    "{operation_name} answered {status}, which it does not document: {body}"
                );
            }
        }
    }
    assert!(count >= 30, "only {count} operations documented");

    // Every reference points at something in the document.
    let text = document.to_string();
    for (start, _) in text.match_indices("\"$ref\":\"") {
        let reference = &text[start + "\"$ref\":\"".len()..];
        let reference = &reference[..reference.find('"').expect("closing quote")];
        assert!(
            document.pointer(reference.trim_start_matches('#')).is_some(),
            "{reference} is not in the document"
        );
    }
}

/// Checks `response` against what the document says `method path` answers: the status is
/// listed, its headers are sent, the content type is a listed one and the body matches the
/// schema (formats included). Returns the body.
async fn conforms(document: &Value, method: Method, path: &str, response: reqwest::Response) -> Value {
    let name = format!("{method} {path}");
    let status = response.status();
    let headers = response.headers().clone();
    // A live feed's body does not end; its status, headers and type are checked below.
    let text = if is_event_stream(&headers) {
        String::new()
    } else {
        response.text().await.expect("body")
    };
    let operation = &document["paths"][path][method.as_str().to_lowercase()];
    assert!(operation.is_object(), "{name} is not documented");
    let mut described = &operation["responses"][status.as_str()];
    if let Some(reference) = described["$ref"].as_str() {
        described = document
            .pointer(reference.trim_start_matches('#'))
            .unwrap_or(&Value::Null);
    }
    assert!(
        described.is_object(),
        "{name} answered {status}, which it does not document: {text}"
    );
    for header in described["headers"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(h, _)| h)
    {
        assert!(
            headers.contains_key(header.as_str()),
            "{name} {status} lacks {header}"
        );
    }
    let Some(content) = described["content"].as_object().filter(|c| !c.is_empty()) else {
        assert!(
            text.is_empty(),
            "{name} {status} documents no body but sent {text}"
        );
        return Value::Null;
    };
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .unwrap_or_default();
    let media = content.get(content_type).unwrap_or_else(|| {
        panic!(
            "{name} {status} sent {content_type}, documented: {:?}",
            content.keys()
        )
    });
    if content_type == "text/event-stream" {
        return Value::Null;
    }
    if content_type != "application/json" && !content_type.ends_with("+json") {
        return Value::String(text); // a download (CSV, NDJSON): its type is what is documented
    }
    let body: Value = serde_json::from_str(&text).expect("JSON body");
    let mut schema = media["schema"].clone();
    // The schema's `$ref`s point into the document's components.
    schema["components"] = document["components"].clone();
    let validator = jsonschema::options()
        .should_validate_formats(true)
        .build(&schema)
        .unwrap_or_else(|error| panic!("{name} {status}: invalid schema: {error}"));
    let errors: Vec<String> = validator
        .iter_errors(&body)
        .map(|error| format!("{} at {}", error, error.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "{name} {status} does not match its schema: {errors:?}\n{body}"
    );
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sample_responses_match_the_document() {
    let app = TestApp::spawn().await;
    let key = &app.admin_key;
    let document = expect_status(
        app.client
            .get(format!("{}/openapi.json", app.address))
            .send()
            .await
            .expect("request"),
        StatusCode::OK,
    )
    .await;
    let doc = &document;
    let url = |path: &str| format!("{}{}", app.address, path);
    let app = &app;
    let get = |path: String| async move { app.get(&path, key).await };

    conforms(
        doc,
        Method::GET,
        "/healthz",
        app.client.get(url("/healthz")).send().await.unwrap(),
    )
    .await;
    conforms(
        doc,
        Method::GET,
        "/readyz",
        app.client.get(url("/readyz")).send().await.unwrap(),
    )
    .await;
    conforms(
        doc,
        Method::GET,
        "/v1/system/projections",
        get("/v1/system/projections".into()).await,
    )
    .await;

    // Categories.
    let category = conforms(
        doc,
        Method::POST,
        "/v1/categories",
        app.post("/v1/categories", key, json!({ "name": "support" }))
            .await,
    )
    .await;
    let category_id = category["id"].as_str().expect("id").to_string();
    let category_path = format!("/v1/categories/{category_id}");
    conforms(
        doc,
        Method::GET,
        "/v1/categories",
        get("/v1/categories".into()).await,
    )
    .await;
    conforms(
        doc,
        Method::GET,
        "/v1/categories/{category_id}",
        get(category_path.clone()).await,
    )
    .await;
    let renamed = app
        .patch(
            &category_path,
            key,
            json!({ "name": "Support", "reason": "capital" }),
        )
        .await;
    conforms(doc, Method::PATCH, "/v1/categories/{category_id}", renamed).await;

    // Prompts, versions, labels.
    let created = app
        .post(
            "/v1/prompts",
            key,
            json!({ "name": "support-reply", "category": category_id, "tags": ["support"], "description": "First answer" }),
        )
        .await;
    let prompt = conforms(doc, Method::POST, "/v1/prompts", created).await;
    let id = prompt["id"].as_str().expect("id").to_string();
    app.create_prompt("second").await;
    let p = |suffix: &str| format!("/v1/prompts/{id}{suffix}");
    let listed = conforms(
        doc,
        Method::GET,
        "/v1/prompts",
        get("/v1/prompts?limit=1".into()).await,
    )
    .await;
    assert!(
        listed["next_cursor"].is_string(),
        "a page with a next cursor: {listed}"
    );
    let first = app
        .post(
            &p("/versions"),
            key,
            json!({ "template": "Answer {{customer}}.", "model": "openai/gpt-4o-mini", "params": { "temperature": 0.2 } }),
        )
        .await;
    conforms(doc, Method::POST, "/v1/prompts/{prompt_id}/versions", first).await;
    let second = app
        .post(
            &p("/versions"),
            key,
            json!({ "template": "Answer {{customer}} about {{topic}}.", "message": "topic" }),
        )
        .await;
    conforms(doc, Method::POST, "/v1/prompts/{prompt_id}/versions", second).await;
    let label = app
        .put(&p("/labels/production"), key, json!({ "version": 2 }))
        .await;
    conforms(doc, Method::PUT, "/v1/prompts/{prompt_id}/labels/{label}", label).await;
    let after_label = chrono::Utc::now().to_rfc3339();
    for (template, path) in [
        ("/v1/prompts/{prompt_id}", p("")),
        (
            "/v1/prompts/{prompt_id}",
            p(&format!("?as_of={}", after_label.replace('+', "%2B"))),
        ),
        ("/v1/prompts/{prompt_id}/versions", p("/versions?limit=1")),
        ("/v1/prompts/{prompt_id}/versions/{version}", p("/versions/1")),
        ("/v1/prompts/{prompt_id}/resolve", p("/resolve?label=production")),
        ("/v1/prompts/{prompt_id}/diff", p("/diff?from=1&to=2")),
        ("/v1/prompts/{prompt_id}/history", p("/history?limit=2")),
        ("/v1/prompts/{prompt_id}/history", p("/history")),
    ] {
        conforms(doc, Method::GET, template, get(path).await).await;
    }
    let changes = [
        (
            Method::PATCH,
            "/v1/prompts/{prompt_id}",
            p(""),
            json!({ "description": "Second answer" }),
        ),
        (
            Method::PUT,
            "/v1/prompts/{prompt_id}/category",
            p("/category"),
            json!({ "category": null }),
        ),
        (
            Method::POST,
            "/v1/prompts/{prompt_id}/tags",
            p("/tags"),
            json!({ "tags": ["email"] }),
        ),
    ];
    for (method, template, path, body) in changes {
        let response = app
            .request(method.clone(), &path, key)
            .json(&body)
            .send()
            .await
            .unwrap();
        conforms(doc, method, template, response).await;
    }
    for (method, template, path) in [
        (
            Method::DELETE,
            "/v1/prompts/{prompt_id}/tags/{tag}",
            p("/tags/email"),
        ),
        (
            Method::DELETE,
            "/v1/prompts/{prompt_id}/labels/{label}",
            p("/labels/production"),
        ),
        (Method::POST, "/v1/prompts/{prompt_id}/archive", p("/archive")),
        (Method::POST, "/v1/prompts/{prompt_id}/restore", p("/restore")),
        (
            Method::DELETE,
            "/v1/categories/{category_id}",
            category_path.clone(),
        ),
    ] {
        let response = app.request(method.clone(), &path, key).send().await.unwrap();
        conforms(doc, method, template, response).await;
    }

    // Keys.
    let issued = app
        .post("/v1/keys", key, json!({ "name": "ci", "role": "viewer" }))
        .await;
    let issued = conforms(doc, Method::POST, "/v1/keys", issued).await;
    conforms(doc, Method::GET, "/v1/keys", get("/v1/keys".into()).await).await;
    let viewer = issued["key"].as_str().expect("key").to_string();
    let issued_path = format!("/v1/keys/{}", issued["api_key"]["id"].as_str().expect("id"));
    let limited = app
        .put(
            &format!("{issued_path}/rate-limit"),
            key,
            json!({ "requests_per_second": 0.5, "burst": 10 }),
        )
        .await;
    let limited = conforms(doc, Method::PUT, "/v1/keys/{key_id}/rate-limit", limited).await;
    assert_eq!(limited["rate_limit"]["burst"], 10, "{limited}");
    let unlimited = app.delete(&format!("{issued_path}/rate-limit"), key).await;
    conforms(doc, Method::DELETE, "/v1/keys/{key_id}/rate-limit", unlimited).await;
    let revoked = app.delete(&issued_path, key).await;
    conforms(doc, Method::DELETE, "/v1/keys/{key_id}", revoked).await;

    // The audit log: a page, the downloads, the chain's verification, permissions then.
    let page = conforms(
        doc,
        Method::GET,
        "/v1/audit",
        get("/v1/audit?limit=2".into()).await,
    )
    .await;
    assert!(page["next_cursor"].is_i64(), "{page}");
    for format in ["ndjson", "csv"] {
        let download = get(format!("/v1/audit?format={format}&limit=2")).await;
        let text = conforms(doc, Method::GET, "/v1/audit", download).await;
        assert!(!text.as_str().unwrap_or_default().is_empty(), "{format}");
    }
    let verified = conforms(
        doc,
        Method::GET,
        "/v1/audit/verify",
        get("/v1/audit/verify".into()).await,
    )
    .await;
    assert_eq!(verified["ok"], true, "{verified}");
    let permissions = get("/v1/audit/permissions".into()).await;
    conforms(doc, Method::GET, "/v1/audit/permissions", permissions).await;
    let bad_filter = get("/v1/audit?from=yesterday".into()).await;
    conforms(doc, Method::GET, "/v1/audit", bad_filter).await;

    // The live feed: a stream, and the problems answered before it starts.
    let stream = get("/v1/events/stream?aggregate_type=prompt".into()).await;
    conforms(doc, Method::GET, "/v1/events/stream", stream).await;
    let bad_cursor = get("/v1/events/stream?from=yesterday".into()).await;
    conforms(doc, Method::GET, "/v1/events/stream", bad_cursor).await;
    let not_upgraded = get("/v1/events/ws".into()).await;
    let problem = conforms(doc, Method::GET, "/v1/events/ws", not_upgraded).await;
    assert_eq!(problem["type"], "/problems/malformed-request", "{problem}");

    // Problems.
    let missing = get(format!("/v1/prompts/{}", uuid::Uuid::new_v4())).await;
    let problem = conforms(doc, Method::GET, "/v1/prompts/{prompt_id}", missing).await;
    assert_eq!(problem["type"], "/problems/not-found");
    let invalid = app
        .post("/v1/prompts", key, json!({ "name": " ", "tags": ["Bad"] }))
        .await;
    let problem = conforms(doc, Method::POST, "/v1/prompts", invalid).await;
    assert_eq!(problem["errors"].as_array().map(Vec::len), Some(2), "{problem}");
    let no_key = app.client.get(url("/v1/prompts")).send().await.unwrap();
    conforms(doc, Method::GET, "/v1/prompts", no_key).await;
    let forbidden = app.post("/v1/prompts", &viewer, json!({ "name": "x" })).await;
    // The viewer key was revoked above: 401, which is documented too.
    conforms(doc, Method::POST, "/v1/prompts", forbidden).await;
    let viewer = app.key("acme", "viewer").await;
    let forbidden = app.post("/v1/prompts", &viewer, json!({ "name": "x" })).await;
    let problem = conforms(doc, Method::POST, "/v1/prompts", forbidden).await;
    assert_eq!(problem["type"], "/problems/forbidden");
    let stale = app
        .request(Method::PATCH, &p(""), key)
        .header("if-match", "\"1\"")
        .json(&json!({ "name": "renamed" }))
        .send()
        .await
        .unwrap();
    let problem = conforms(doc, Method::PATCH, "/v1/prompts/{prompt_id}", stale).await;
    assert_eq!(problem["type"], "/problems/version-mismatch");
    let malformed = app
        .request(Method::POST, "/v1/categories", key)
        .header("content-type", "application/json")
        .body("{")
        .send()
        .await
        .unwrap();
    conforms(doc, Method::POST, "/v1/categories", malformed).await;
    let untyped = app
        .request(Method::POST, "/v1/categories", key)
        .body("{}")
        .send()
        .await
        .unwrap();
    conforms(doc, Method::POST, "/v1/categories", untyped).await;
    let nul = app
        .post(&p("/versions"), key, json!({ "template": "a\u{0}b" }))
        .await;
    let problem = conforms(doc, Method::POST, "/v1/prompts/{prompt_id}/versions", nul).await;
    assert_eq!(problem["errors"][0]["field"], "body.template", "{problem}");
    let nul_query = get("/v1/prompts?q=%00".into()).await;
    let problem = conforms(doc, Method::GET, "/v1/prompts", nul_query).await;
    assert_eq!(problem["errors"][0]["field"], "q", "{problem}");
    // `1.0` is a JSON integer as much as `1` is (JSON Schema's `integer` allows both).
    let label = app
        .put(&p("/labels/staging"), key, json!({ "version": 1.0 }))
        .await;
    let prompt = conforms(doc, Method::PUT, "/v1/prompts/{prompt_id}/labels/{label}", label).await;
    assert_eq!(prompt["labels"]["staging"], 1, "{prompt}");

    // Provider health, against a provider in the test, and an incident.
    let fake = crate::health::FakeProvider::start().await;
    let provider = crate::health::register_local(app, &fake).await;
    conforms(
        doc,
        Method::PUT,
        "/v1/providers/{provider_id}/health-check",
        app.put(
            &format!("/v1/providers/{provider}/health-check"),
            key,
            json!({ "timeout_ms": 1000, "degraded_latency_ms": 500 }),
        )
        .await,
    )
    .await;
    conforms(doc, Method::GET, "/v1/health", get("/v1/health".into()).await).await;
    conforms(
        doc,
        Method::POST,
        "/v1/health/checks/run",
        app.post("/v1/health/checks/run", key, json!({})).await,
    )
    .await;
    fake.set(crate::health::Behaviour::Failing);
    conforms(
        doc,
        Method::POST,
        "/v1/health/checks/run",
        app.post("/v1/health/checks/run", key, json!({})).await,
    )
    .await;
    conforms(doc, Method::GET, "/v1/health", get("/v1/health".into()).await).await;
    let incident = conforms(
        doc,
        Method::POST,
        "/v1/incidents",
        app.post(
            "/v1/incidents",
            key,
            json!({ "severity": "sev2", "title": "Local is failing", "affected": { "providers": ["local"] } }),
        )
        .await,
    )
    .await;
    let incident_path = format!("/v1/incidents/{}", incident["id"].as_str().expect("id"));
    conforms(
        doc,
        Method::POST,
        "/v1/incidents/{incident_id}/updates",
        app.post(
            &format!("{incident_path}/updates"),
            key,
            json!({ "message": "Looking", "status": "identified" }),
        )
        .await,
    )
    .await;
    conforms(
        doc,
        Method::POST,
        "/v1/incidents/{incident_id}/resolve",
        app.post(
            &format!("{incident_path}/resolve"),
            key,
            json!({ "summary": "Back" }),
        )
        .await,
    )
    .await;
    conforms(
        doc,
        Method::GET,
        "/v1/incidents/{incident_id}",
        get(incident_path.clone()).await,
    )
    .await;
    conforms(
        doc,
        Method::GET,
        "/v1/incidents/{incident_id}/history",
        get(format!("{incident_path}/history")).await,
    )
    .await;
    conforms(
        doc,
        Method::GET,
        "/v1/incidents",
        get("/v1/incidents?status=resolved".into()).await,
    )
    .await;

    // Idempotent retries: the replay, a key reused for another request, a malformed key.
    let keyed = |body: Value| {
        app.request(Method::POST, "/v1/categories", key)
            .header("idempotency-key", "sample-1")
            .json(&body)
            .send()
    };
    let first = conforms(
        doc,
        Method::POST,
        "/v1/categories",
        keyed(json!({ "name": "keyed" })).await.unwrap(),
    )
    .await;
    let replay = keyed(json!({ "name": "keyed" })).await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    assert_eq!(conforms(doc, Method::POST, "/v1/categories", replay).await, first);
    let reused = keyed(json!({ "name": "other" })).await.unwrap();
    let problem = conforms(doc, Method::POST, "/v1/categories", reused).await;
    assert_eq!(problem["type"], "/problems/idempotency-key-reused");
    let bad_key = app
        .request(Method::POST, &p("/archive"), key)
        .header("idempotency-key", "not visible ascii")
        .send()
        .await
        .unwrap();
    let problem = conforms(doc, Method::POST, "/v1/prompts/{prompt_id}/archive", bad_key).await;
    assert_eq!(problem["type"], "/problems/invalid-idempotency-key");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_docs_page_works_offline_under_its_own_csp() {
    let app = TestApp::spawn().await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let url = |path: &str| format!("{}{}", app.address, path);
    let csp = api::routes::docs::DOCS_CONTENT_SECURITY_POLICY;

    let redirect = client.get(url("/docs")).send().await.unwrap();
    assert_eq!(redirect.status(), StatusCode::SEE_OTHER);
    assert_eq!(redirect.headers()["location"], "/docs/");

    let page = client.get(url("/docs/")).send().await.unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert_eq!(page.headers()["content-security-policy"], csp);
    assert!(page.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(
        !html.contains("http://") && !html.contains("https://"),
        "no CDN: {html}"
    );
    let mut assets = Vec::new();
    for attribute in ["src=\"", "href=\""] {
        for (start, _) in html.match_indices(attribute) {
            let value = &html[start + attribute.len()..];
            let value = &value[..value.find('"').expect("closing quote")];
            assets.push(value.trim_start_matches("./").to_string());
        }
    }
    assert!(assets.iter().any(|a| a == "swagger-ui-bundle.js"), "{assets:?}");
    for asset in &assets {
        let response = client.get(url(&format!("/docs/{asset}"))).send().await.unwrap();
        assert_eq!(response.status(), StatusCode::OK, "{asset}");
        assert_eq!(response.headers()["content-security-policy"], csp, "{asset}");
        if asset == "swagger-initializer.js" {
            let script = response.text().await.unwrap();
            assert!(script.contains("\"url\": \"/openapi.json\""), "{script}");
            assert!(script.contains("\"validatorUrl\": \"none\""), "{script}");
        }
    }
    let missing = client.get(url("/docs/missing.js")).send().await.unwrap();
    integration_tests::harness::expect_problem(missing, StatusCode::NOT_FOUND, "not-found").await;
}
