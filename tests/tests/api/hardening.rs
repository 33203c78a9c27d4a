//! Limits and hardening: rate limits, brute-force protection, body limits, timeouts, load
//! shedding, CORS, security headers and request ids, against a real server.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use api::settings::SecuritySettings;
use domain::access::RateLimit;
use integration_tests::harness::{expect_problem, expect_status, TestApp};
use reqwest::{Method, Response, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

/// Upper bound for every wait, so that a bug fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(10);

/// Three at once, then one every 100 s: a limit a test exhausts and never sees refill.
const THREE_THEN_ALMOST_NONE: RateLimit = RateLimit {
    requests_per_second: 0.01,
    burst: 3,
};

async fn spawn(security: SecuritySettings) -> TestApp {
    // Every other setting keeps its default, however many there are.
    #[allow(clippy::needless_update)]
    let settings = api::Settings {
        security,
        ..api::Settings::default()
    };
    TestApp::spawn_with(settings).await
}

/// A GET without a key.
async fn anonymous_get(app: &TestApp, path: &str) -> Response {
    app.client
        .get(format!("{}{path}", app.address))
        .send()
        .await
        .expect("request")
}

fn header<'a>(response: &'a Response, name: &str) -> &'a str {
    response
        .headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_else(|| panic!("no {name} header in {:?}", response.headers()))
}

/// A key's id, from the key listing of its tenant.
async fn key_id(app: &TestApp, name: &str) -> String {
    let keys = expect_status(app.get("/v1/keys", &app.admin_key).await, StatusCode::OK).await;
    keys["items"]
        .as_array()
        .expect("items")
        .iter()
        .find(|k| k["name"] == name)
        .and_then(|k| k["id"].as_str())
        .unwrap_or_else(|| panic!("no key {name} in {keys}"))
        .to_string()
}

/// A command whose body arrives slowly: the headers and the start of a 100-byte body are
/// sent, the rest never is, so the server holds the request until the body comes, the
/// connection closes or the request times out.
fn start_slow_command(app: &TestApp, key: &str) -> TcpStream {
    let address = app.address.trim_start_matches("http://");
    let mut stream = TcpStream::connect(address).expect("connect");
    let head = format!(
        "POST /v1/prompts HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{{\"name\":"
    );
    stream.write_all(head.as_bytes()).expect("send");
    stream
}

/// Whatever a raw connection has received so far, without waiting: what the server said to
/// a command that should still be waiting for its body.
fn pending_answer(stream: &TcpStream) -> String {
    let mut buffer = [0u8; 512];
    let _ = stream.set_nonblocking(true);
    let mut reader = stream;
    let answer = match std::io::Read::read(&mut reader, &mut buffer) {
        Ok(0) => "closed by the server".to_string(),
        Ok(n) => String::from_utf8_lossy(&buffer[..n]).to_string(),
        Err(error) if error.kind() == std::io::ErrorKind::WouldBlock => "nothing yet".to_string(),
        Err(error) => error.to_string(),
    };
    let _ = stream.set_nonblocking(false);
    answer
}

/// Reads one HTTP response from a raw connection: its status and JSON body.
fn read_response(mut stream: TcpStream) -> (u16, Vec<(String, String)>, Value) {
    stream.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut received = Vec::new();
    let mut buffer = [0u8; 4096];
    loop {
        let text = String::from_utf8_lossy(&received).to_string();
        if let Some(end) = text.find("\r\n\r\n") {
            let head = &text[..end];
            let length = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().to_string())
                })
                .and_then(|v| v.parse::<usize>().ok())
                .expect("content-length");
            if received.len() >= end + 4 + length {
                let mut lines = head.lines();
                let status = lines
                    .next()
                    .and_then(|line| line.split(' ').nth(1))
                    .and_then(|code| code.parse().ok())
                    .expect("status line");
                let headers = lines
                    .filter_map(|l| l.split_once(':'))
                    .map(|(n, v)| (n.trim().to_ascii_lowercase(), v.trim().to_string()))
                    .collect();
                let body = serde_json::from_slice(&received[end + 4..end + 4 + length]).expect("JSON body");
                return (status, headers, body);
            }
        }
        let n = stream.read(&mut buffer).expect("read");
        assert!(n > 0, "connection closed before a whole response: {text}");
        received.extend_from_slice(&buffer[..n]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_response_carries_the_security_headers() {
    let app = spawn(SecuritySettings::default()).await;
    let probe = anonymous_get(&app, "/healthz").await;
    let read = app.get("/v1/prompts", &app.admin_key).await;
    let problem = app
        .get(&format!("/v1/prompts/{}", Uuid::new_v4()), &app.admin_key)
        .await;
    let anonymous = anonymous_get(&app, "/v1/prompts").await;
    for response in [&probe, &read, &problem, &anonymous] {
        assert_eq!(header(response, "x-content-type-options"), "nosniff");
        assert_eq!(header(response, "x-frame-options"), "DENY");
        assert_eq!(header(response, "referrer-policy"), "no-referrer");
        assert_eq!(
            header(response, "content-security-policy"),
            "default-src 'none'; frame-ancestors 'none'"
        );
        assert!(response.headers().get("strict-transport-security").is_none());
    }
    for authenticated in [&read, &problem] {
        assert_eq!(header(authenticated, "cache-control"), "no-store");
    }
    assert!(probe.headers().get("cache-control").is_none());

    let behind_tls = spawn(SecuritySettings {
        hsts: true,
        ..SecuritySettings::default()
    })
    .await;
    let probe = anonymous_get(&behind_tls, "/healthz").await;
    assert_eq!(
        header(&probe, "strict-transport-security"),
        "max-age=31536000; includeSubDomains"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cors_is_off_by_default_and_on_for_the_configured_origins_only() {
    let preflight = |app: &TestApp, origin: &str| {
        app.client
            .request(Method::OPTIONS, format!("{}/v1/prompts", app.address))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization, content-type")
            .send()
    };
    let closed = spawn(SecuritySettings::default()).await;
    let refused = preflight(&closed, "https://app.example.com").await.unwrap();
    assert!(refused.headers().get("access-control-allow-origin").is_none());
    expect_problem(refused, StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed").await;
    let read = closed
        .request(Method::GET, "/v1/prompts", &closed.admin_key)
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    assert!(read.headers().get("access-control-allow-origin").is_none());

    let open = spawn(SecuritySettings {
        cors_origins: vec!["https://app.example.com".parse().unwrap()],
        ..SecuritySettings::default()
    })
    .await;
    let allowed = preflight(&open, "https://app.example.com").await.unwrap();
    assert_eq!(allowed.status(), StatusCode::OK);
    assert_eq!(
        header(&allowed, "access-control-allow-origin"),
        "https://app.example.com"
    );
    assert!(header(&allowed, "access-control-allow-headers").contains("authorization"));
    assert!(header(&allowed, "access-control-allow-methods").contains("POST"));
    let stranger = preflight(&open, "https://evil.example.net").await.unwrap();
    assert!(stranger.headers().get("access-control-allow-origin").is_none());
    let read = open
        .request(Method::GET, "/v1/prompts", &open.admin_key)
        .header("origin", "https://app.example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(read.status(), StatusCode::OK);
    assert_eq!(
        header(&read, "access-control-allow-origin"),
        "https://app.example.com"
    );
    assert!(header(&read, "access-control-expose-headers").contains("ratelimit-remaining"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_over_the_limit_get_a_413_problem_and_write_nothing() {
    let app = spawn(SecuritySettings {
        body_limit: 1024,
        ..SecuritySettings::default()
    })
    .await;
    let events_before = app.event_count().await;
    let small = app
        .post("/v1/prompts", &app.admin_key, json!({ "name": "fits" }))
        .await;
    expect_status(small, StatusCode::CREATED).await;
    let large = app
        .request(Method::POST, "/v1/prompts", &app.admin_key)
        .header("connection", "close")
        .json(&json!({ "name": "too big", "description": "y".repeat(2000) }))
        .send()
        .await
        .unwrap();
    let problem = expect_problem(large, StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large").await;
    assert!(
        problem["detail"].as_str().unwrap().contains("1024 bytes"),
        "{problem}"
    );

    // Without Content-Length (chunked), the limit is enforced while reading.
    let address = app.address.trim_start_matches("http://").to_string();
    let key = app.admin_key.clone();
    let (status, _, problem) = tokio::task::spawn_blocking(move || {
        let mut stream = TcpStream::connect(&address).unwrap();
        let chunk = format!("{{\"name\":\"chunked\",\"description\":\"{}\"}}", "z".repeat(3000));
        let request = format!(
            "POST /v1/prompts HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {key}\r\n\
             Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{chunk}\r\n0\r\n\r\n",
            chunk.len()
        );
        stream.write_all(request.as_bytes()).unwrap();
        read_response(stream)
    })
    .await
    .unwrap();
    assert_eq!(status, 413);
    assert_eq!(problem["type"], "/problems/payload-too-large");
    assert_eq!(
        app.event_count().await,
        events_before + 1,
        "only the small prompt was written"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_over_its_rate_limit_gets_a_429_problem_with_rate_limit_headers() {
    let app = spawn(SecuritySettings {
        rate_limit: Some(THREE_THEN_ALMOST_NONE),
        ..SecuritySettings::default()
    })
    .await;
    let viewer = app.key("acme", "viewer").await;
    for remaining in ["2", "1", "0"] {
        let read = app.get("/v1/prompts", &viewer).await;
        assert_eq!(read.status(), StatusCode::OK);
        assert_eq!(header(&read, "ratelimit-limit"), "3");
        assert_eq!(header(&read, "ratelimit-remaining"), remaining);
        assert!(header(&read, "ratelimit-reset").parse::<u64>().unwrap() > 0);
    }
    let limited = app.get("/v1/prompts", &viewer).await;
    assert_eq!(header(&limited, "ratelimit-limit"), "3");
    assert_eq!(header(&limited, "ratelimit-remaining"), "0");
    let retry_after: u64 = header(&limited, "retry-after").parse().unwrap();
    assert!(
        (1..=100).contains(&retry_after),
        "one request accrues in 100 s: {retry_after}"
    );
    expect_problem(limited, StatusCode::TOO_MANY_REQUESTS, "rate-limited").await;
    let writes = app.post("/v1/prompts", &viewer, json!({ "name": "x" })).await;
    expect_problem(writes, StatusCode::TOO_MANY_REQUESTS, "rate-limited").await;

    // Each key has its own bucket, and probes are never limited nor counted.
    let other = app.key("acme", "editor").await;
    expect_status(app.get("/v1/prompts", &other).await, StatusCode::OK).await;
    for _ in 0..10 {
        for probe in ["/healthz", "/readyz"] {
            let response = app
                .client
                .get(format!("{}{probe}", app.address))
                .bearer_auth(&viewer)
                .send()
                .await
                .unwrap();
            assert_eq!(response.status(), StatusCode::OK, "{probe}");
            assert!(response.headers().get("ratelimit-limit").is_none());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_keys_own_rate_limit_takes_effect_at_once_and_can_be_cleared() {
    let app = spawn(SecuritySettings::default()).await;
    let viewer = app.key("acme", "viewer").await;
    let viewer_id = key_id(&app, "acme-viewer").await;
    let path = format!("/v1/keys/{viewer_id}/rate-limit");
    expect_status(app.get("/v1/prompts", &viewer).await, StatusCode::OK).await;

    let set = app
        .request(Method::PUT, &path, &app.admin_key)
        .header("x-request-id", "throttle-ci")
        .json(&json!({ "requests_per_second": 0.01, "burst": 2, "reason": "runaway CI job" }))
        .send()
        .await
        .unwrap();
    let view = expect_status(set, StatusCode::OK).await;
    assert_eq!(
        view["rate_limit"],
        json!({ "requests_per_second": 0.01, "burst": 2 })
    );
    // The default allowed 1,000 at once; the key's own burst of 2 applies from its next
    // request on (less what it used), so the third request at the latest is refused.
    let first = app.get("/v1/prompts", &viewer).await;
    assert_eq!(header(&first, "ratelimit-limit"), "2");
    assert_eq!(first.status(), StatusCode::OK);
    let _second = app.get("/v1/prompts", &viewer).await;
    let limited = app.get("/v1/prompts", &viewer).await;
    expect_problem(limited, StatusCode::TOO_MANY_REQUESTS, "rate-limited").await;
    let listed = expect_status(app.get("/v1/keys", &app.admin_key).await, StatusCode::OK).await;
    let listed_viewer = listed["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|k| k["id"] == viewer_id.as_str())
        .unwrap();
    assert_eq!(listed_viewer["rate_limit"]["burst"], 2);
    let (event_type, request_id, reason): (String, String, String) = sqlx::query_as(
        "select event_type, metadata->>'request_id', metadata->>'reason' from events
         where aggregate_type = 'api_key' and aggregate_id = $1 order by sequence desc limit 1",
    )
    .bind(&viewer_id)
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(
        (event_type.as_str(), request_id.as_str(), reason.as_str()),
        ("ApiKeyRateLimitSet", "throttle-ci", "runaway CI job")
    );

    let cleared = app.delete(&path, &app.admin_key).await;
    expect_status(cleared, StatusCode::NO_CONTENT).await;
    let read = app.get("/v1/prompts", &viewer).await;
    assert_eq!(read.status(), StatusCode::OK, "back on the default limit");
    assert_eq!(header(&read, "ratelimit-limit"), "1000");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_for_admins_of_the_keys_tenant_and_must_make_sense() {
    let app = spawn(SecuritySettings::default()).await;
    let editor = app.key("acme", "editor").await;
    let editor_id = key_id(&app, "acme-editor").await;
    let path = format!("/v1/keys/{editor_id}/rate-limit");
    let limit = json!({ "requests_per_second": 5, "burst": 10 });
    expect_problem(
        app.put(&path, &editor, limit.clone()).await,
        StatusCode::FORBIDDEN,
        "forbidden",
    )
    .await;
    let other_tenant_admin = app.key("globex", "admin").await;
    expect_problem(
        app.put(&path, &other_tenant_admin, limit.clone()).await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
    let unknown = format!("/v1/keys/{}/rate-limit", Uuid::new_v4());
    expect_problem(
        app.put(&unknown, &app.admin_key, limit.clone()).await,
        StatusCode::NOT_FOUND,
        "not-found",
    )
    .await;
    for (body, field) in [
        (
            json!({ "requests_per_second": 0, "burst": 10 }),
            "requests_per_second",
        ),
        (json!({ "requests_per_second": 5, "burst": 0 }), "burst"),
        (json!({ "requests_per_second": 5, "burst": 10_000_000 }), "burst"),
    ] {
        let refused = app.put(&path, &app.admin_key, body).await;
        let problem = expect_problem(refused, StatusCode::UNPROCESSABLE_ENTITY, "validation-failed").await;
        assert_eq!(problem["errors"][0]["field"], field, "{problem}");
    }
    let events_before = app.event_count().await;
    // Clearing a limit that is not set changes nothing and records nothing.
    expect_status(app.delete(&path, &app.admin_key).await, StatusCode::NO_CONTENT).await;
    assert_eq!(app.event_count().await, events_before);
    expect_status(
        app.delete(&format!("/v1/keys/{editor_id}"), &app.admin_key).await,
        StatusCode::NO_CONTENT,
    )
    .await;
    expect_problem(
        app.put(&path, &app.admin_key, limit).await,
        StatusCode::CONFLICT,
        "conflict",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_failed_authentications_are_refused_before_any_key_lookup() {
    let app = spawn(SecuritySettings {
        auth_failure_limit: Some(THREE_THEN_ALMOST_NONE),
        ..SecuritySettings::default()
    })
    .await;
    // Requests without a key guess nothing and are not counted.
    for _ in 0..5 {
        let anonymous = anonymous_get(&app, "/v1/prompts").await;
        expect_problem(anonymous, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    let guess = || format!("aipm_{}", Uuid::new_v4().simple().to_string().repeat(2));
    for _ in 0..3 {
        expect_problem(
            app.get("/v1/prompts", &guess()).await,
            StatusCode::UNAUTHORIZED,
            "unauthorized",
        )
        .await;
    }
    let refused = app.get("/v1/prompts", &guess()).await;
    assert!(header(&refused, "retry-after").parse::<u64>().unwrap() >= 1);
    expect_problem(
        refused,
        StatusCode::TOO_MANY_REQUESTS,
        "too-many-failed-authentications",
    )
    .await;

    // Refused before the lookup: with the key table locked, a lookup would wait for the lock,
    // yet even the valid key from this address is refused at once.
    let mut lock = app.pool().begin().await.unwrap();
    sqlx::query("lock table api_key in access exclusive mode")
        .execute(&mut *lock)
        .await
        .unwrap();
    let valid = tokio::time::timeout(DEADLINE, app.get("/v1/prompts", &app.admin_key))
        .await
        .expect("answered without waiting for the locked key table");
    expect_problem(
        valid,
        StatusCode::TOO_MANY_REQUESTS,
        "too-many-failed-authentications",
    )
    .await;
    lock.rollback().await.unwrap();

    let probe = anonymous_get(&app, "/readyz").await;
    assert_eq!(
        probe.status(),
        StatusCode::OK,
        "probes need no key and are never refused"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_in_flight_limit_are_shed_at_once_and_the_server_recovers() {
    // Polled without pause until the slow commands are admitted: the key's rate limit
    // would answer 429 first on a busy machine. Shedding is what this test is about.
    let app = spawn(SecuritySettings {
        max_in_flight: Some(2),
        rate_limit: None,
        ..SecuritySettings::default()
    })
    .await;
    // The server answers before the slow commands are sent, so that they are read as soon
    // as they arrive rather than queued behind its start.
    expect_status(app.get("/v1/prompts", &app.admin_key).await, StatusCode::OK).await;
    let mut slow: Vec<TcpStream> = (0..2).map(|_| start_slow_command(&app, &app.admin_key)).collect();
    // The slow commands are admitted as soon as the server has read their headers. One that
    // arrives while a poll below holds the other slot is itself shed: send it again.
    let started = Instant::now();
    let shed = loop {
        for stream in slow.iter_mut() {
            if pending_answer(stream).starts_with("HTTP/1.1 503") {
                *stream = start_slow_command(&app, &app.admin_key);
            }
        }
        let sent = Instant::now();
        let response = app.get("/v1/prompts", &app.admin_key).await;
        if response.status() == StatusCode::SERVICE_UNAVAILABLE {
            break (response, sent.elapsed());
        }
        let status = response.status();
        assert_eq!(
            status,
            StatusCode::OK,
            "{}",
            response.text().await.unwrap_or_default()
        );
        if started.elapsed() >= DEADLINE {
            let answers: Vec<String> = slow.iter().map(pending_answer).collect();
            panic!("never shed; the slow commands got: {answers:?}");
        }
    };
    let (response, latency) = shed;
    assert!(
        latency < Duration::from_secs(2),
        "shedding is immediate, took {latency:?}"
    );
    assert_eq!(header(&response, "retry-after"), "1");
    assert!(response.headers().get("x-request-id").is_some());
    expect_problem(response, StatusCode::SERVICE_UNAVAILABLE, "overloaded").await;
    for probe in ["/healthz", "/readyz"] {
        let response = anonymous_get(&app, probe).await;
        assert_eq!(response.status(), StatusCode::OK, "{probe} is never shed");
    }

    drop(slow);
    let started = Instant::now();
    loop {
        let response = app.get("/v1/prompts", &app.admin_key).await;
        if response.status() == StatusCode::OK {
            break;
        }
        expect_problem(response, StatusCode::SERVICE_UNAVAILABLE, "overloaded").await;
        assert!(started.elapsed() < DEADLINE, "never recovered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_that_takes_too_long_gets_a_503_timeout_problem() {
    let app = spawn(SecuritySettings {
        request_timeout: Some(Duration::from_millis(500)),
        ..SecuritySettings::default()
    })
    .await;
    let events_before = app.event_count().await;
    let stream = start_slow_command(&app, &app.admin_key);
    let started = Instant::now();
    let (status, headers, problem) = tokio::task::spawn_blocking(move || read_response(stream))
        .await
        .unwrap();
    assert_eq!(status, 503);
    assert_eq!(problem["type"], "/problems/timeout", "{problem}");
    assert!(headers.iter().any(|(name, _)| name == "x-request-id"));
    assert!(started.elapsed() >= Duration::from_millis(450));
    assert_eq!(app.event_count().await, events_before);
    // Quick requests are unaffected.
    expect_status(app.get("/v1/prompts", &app.admin_key).await, StatusCode::OK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_ids_are_echoed_or_generated_and_stored_with_the_events() {
    let app = spawn(SecuritySettings::default()).await;
    let created = app
        .request(Method::POST, "/v1/prompts", &app.admin_key)
        .header("x-request-id", "deploy-42")
        .json(&json!({ "name": "traced" }))
        .send()
        .await
        .unwrap();
    assert_eq!(header(&created, "x-request-id"), "deploy-42");
    let id = expect_status(created, StatusCode::CREATED).await["id"]
        .as_str()
        .unwrap()
        .to_string();
    let stored: String = sqlx::query_scalar(
        "select metadata->>'request_id' from events where aggregate_id = $1 and sequence = 1",
    )
    .bind(&id)
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(stored, "deploy-42");

    // None sent, or one that is not a sensible id: the server makes one up.
    let unsent = app.get("/v1/prompts", &app.admin_key).await;
    let too_long = app
        .request(Method::GET, "/v1/prompts", &app.admin_key)
        .header("x-request-id", "x".repeat(200))
        .send()
        .await
        .unwrap();
    let anonymous = anonymous_get(&app, "/v1/nothing").await;
    for response in [&unsent, &too_long, &anonymous] {
        let generated = header(response, "x-request-id");
        assert!(Uuid::parse_str(generated).is_ok(), "{generated}");
    }
    assert_ne!(header(&unsent, "x-request-id"), header(&too_long, "x-request-id"));
}
