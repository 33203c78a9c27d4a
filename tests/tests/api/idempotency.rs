//! `Idempotency-Key`: retries are answered from the first attempt and append nothing, also
//! across concurrent retries, server crashes between commit and response, tenants and keys.

use std::time::{Duration, Instant};

use integration_tests::harness::{expect_problem, expect_status, TestApp};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use sqlx::Connection;

const KEY_HEADER: &str = "idempotency-key";

/// Everything a client sees of a response that a replay must repeat.
#[derive(Debug, Clone, PartialEq)]
struct Answer {
    status: StatusCode,
    etag: Option<String>,
    location: Option<String>,
    content_type: Option<String>,
    body: Value,
}

#[derive(Debug)]
struct Sent {
    answer: Answer,
    replayed: bool,
    retry_after: Option<u64>,
}

async fn send(
    app_address: &str,
    client: &reqwest::Client,
    method: Method,
    path: &str,
    api_key: &str,
    idempotency_key: &str,
    body: Option<Value>,
) -> Sent {
    let mut request = client
        .request(method, format!("{app_address}{path}"))
        .bearer_auth(api_key)
        .header(KEY_HEADER, idempotency_key);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("request");
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .map(|v| v.to_str().expect("header text").to_string())
    };
    let etag = header("etag");
    let location = header("location");
    let content_type = header("content-type");
    let replayed = header("idempotent-replayed").as_deref() == Some("true");
    let retry_after = header("retry-after").map(|v| v.parse().expect("Retry-After in seconds"));
    let status = response.status();
    let text = response.text().await.expect("body");
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).expect("JSON body")
    };
    Sent {
        answer: Answer {
            status,
            etag,
            location,
            content_type,
            body,
        },
        replayed,
        retry_after,
    }
}

/// A request with the admin key and an idempotency key.
async fn keyed(app: &TestApp, method: Method, path: &str, key: &str, body: Option<Value>) -> Sent {
    send(&app.address, &app.client, method, path, &app.admin_key, key, body).await
}

async fn events_with_key(app: &TestApp, key: &str) -> i64 {
    sqlx::query_scalar("select count(*) from events where metadata ->> 'idempotency_key' = $1")
        .bind(key)
        .fetch_one(app.pool())
        .await
        .expect("count")
}

async fn wait_until<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(30);
    while !condition().await {
        assert!(Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_gets_the_first_response_again_and_appends_nothing() {
    let app = TestApp::spawn().await;
    let created = keyed(
        &app,
        Method::POST,
        "/v1/prompts",
        "create-1",
        Some(json!({ "name": "greeting" })),
    )
    .await;
    assert_eq!(created.answer.status, StatusCode::CREATED);
    assert!(!created.replayed);
    let id = created.answer.body["id"].as_str().unwrap().to_string();

    // Each kind of command, then its retry: the same answer, marked as a replay, nothing new.
    let steps = [
        (
            Method::POST,
            "/v1/prompts".to_string(),
            "create-1",
            Some(json!({ "name": "greeting" })),
        ),
        (
            Method::POST,
            format!("/v1/prompts/{id}/versions"),
            "publish-1",
            Some(json!({ "template": "Hi {{name}}" })),
        ),
        (
            Method::PATCH,
            format!("/v1/prompts/{id}"),
            "patch-1",
            Some(json!({ "description": "says hi" })),
        ),
        (
            Method::PUT,
            format!("/v1/prompts/{id}/labels/production"),
            "label-1",
            Some(json!({ "version": 1 })),
        ),
        (
            Method::DELETE,
            format!("/v1/prompts/{id}/labels/production"),
            "unlabel-1",
            None,
        ),
        // A refused command is answered the same way again too.
        (
            Method::PUT,
            format!("/v1/prompts/{id}/labels/staging"),
            "label-2",
            Some(json!({ "version": 9 })),
        ),
    ];
    let mut first_answers = vec![created.answer.clone()];
    for (method, path, key, body) in steps.iter().skip(1).cloned() {
        let first = keyed(&app, method, &path, key, body).await;
        assert!(!first.replayed, "{path}");
        first_answers.push(first.answer);
    }
    assert_eq!(first_answers[5].status, StatusCode::UNPROCESSABLE_ENTITY);
    let events_before = app.event_count().await;
    for ((method, path, key, body), first) in steps.into_iter().zip(&first_answers) {
        let retry = keyed(&app, method, &path, key, body).await;
        assert!(retry.replayed, "{path}");
        assert_eq!(&retry.answer, first, "{path}");
    }
    assert_eq!(app.event_count().await, events_before, "retries appended nothing");
    assert!(first_answers[0].etag.is_some() && first_answers[0].location.is_some());
    assert_eq!(first_answers[1].etag.as_deref(), Some("\"2\""));
    assert_eq!(
        first_answers[1].location,
        Some(format!("/v1/prompts/{id}/versions/1"))
    );

    // The key is stored with the events it produced.
    assert_eq!(events_with_key(&app, "create-1").await, 1);
    assert_eq!(events_with_key(&app, "publish-1").await, 1);
    assert_eq!(events_with_key(&app, "label-2").await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_key_on_a_different_request_is_a_422_and_changes_nothing() {
    let app = TestApp::spawn().await;
    let first = keyed(
        &app,
        Method::POST,
        "/v1/prompts",
        "k",
        Some(json!({ "name": "first" })),
    )
    .await;
    assert_eq!(first.answer.status, StatusCode::CREATED);
    let events_before = app.event_count().await;

    // Another body, another path, another reason: each a different request.
    let others = [
        ("/v1/prompts", None, json!({ "name": "second" })),
        ("/v1/categories", None, json!({ "name": "first" })),
        (
            "/v1/prompts",
            Some("a different change"),
            json!({ "name": "first" }),
        ),
    ];
    for (path, reason, body) in others {
        let mut request = app
            .request(Method::POST, path, &app.admin_key)
            .header(KEY_HEADER, "k")
            .json(&body);
        if let Some(reason) = reason {
            request = request.header("x-reason", reason);
        }
        let response = request.send().await.unwrap();
        expect_problem(
            response,
            StatusCode::UNPROCESSABLE_ENTITY,
            "idempotency-key-reused",
        )
        .await;
    }
    assert_eq!(app.event_count().await, events_before);

    // The original request still replays.
    let again = keyed(
        &app,
        Method::POST,
        "/v1/prompts",
        "k",
        Some(json!({ "name": "first" })),
    )
    .await;
    assert!(again.replayed);
    assert_eq!(again.answer, first.answer);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_retries_append_once_and_the_others_are_told_to_retry() {
    let app = TestApp::spawn().await;
    // Half of the retries go to another server process on the same database.
    let peer = app.spawn_peer().await;
    let id = app.create_prompt("p").await;
    let path = format!("/v1/prompts/{id}/versions");
    let events_before = app.event_count().await;
    let body = json!({ "template": "once {{only}}" });
    let racers = (0..20).map(|i| {
        let server = if i % 2 == 0 { &app.address } else { &peer.address };
        let key = &app.admin_key;
        send(
            server,
            &app.client,
            Method::POST,
            &path,
            key,
            "race",
            Some(body.clone()),
        )
    });
    let results = futures::future::join_all(racers).await;

    assert_eq!(app.event_count().await, events_before + 1, "exactly one append");
    let mut created = Vec::new();
    for sent in results {
        match sent.answer.status {
            StatusCode::CREATED => created.push(sent.answer),
            StatusCode::CONFLICT => {
                assert_eq!(sent.answer.body["type"], "/problems/idempotency-in-progress");
                assert_eq!(
                    sent.answer.content_type.as_deref(),
                    Some("application/problem+json")
                );
                assert!(sent.retry_after.is_some_and(|s| s >= 1), "{sent:?}");
            }
            other => panic!("unexpected {other}: {}", sent.answer.body),
        }
    }
    assert!(!created.is_empty());
    assert!(created.iter().all(|answer| *answer == created[0]));
    assert_eq!(created[0].body["version"], 1);

    let later = keyed(&app, Method::POST, &path, "race", Some(body)).await;
    assert_eq!(later.answer, created[0]);
    assert_eq!(app.event_count().await, events_before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_append_under_one_key_fails_as_a_whole() {
    use commands::idempotency::{Claim, IdempotencyScope, IdempotencyStore};
    use domain::prompt::{Prompt, PromptCommand, PromptEvent, Template};
    let app = TestApp::spawn().await;
    let id = app.create_prompt("p").await;
    // Two attempts of one keyed request that both got past the claim (the first outlived
    // its lease and the second took over): the append itself refuses the second.
    let scope = IdempotencyScope {
        tenant: "acme".into(),
        owner: "key-1".into(),
        key: "fenced".into(),
    };
    let claims = IdempotencyStore::new(
        app.pool().clone(),
        Duration::from_secs(60),
        Duration::from_secs(60),
    );
    assert!(matches!(
        claims.claim(&scope, "f").await.unwrap(),
        Claim::Acquired(_)
    ));
    let metadata = commands::CommandMetadata {
        tenant: "acme".into(),
        actor_key_id: "key-1".into(),
        idempotency_key: Some("fenced".into()),
        ..Default::default()
    };
    let publish = |text: &str| PromptCommand::PublishPromptVersion {
        template: Template::parse(text).unwrap(),
        model: None,
        params: None,
        message: String::new(),
    };
    let store = commands::EventStore::new(app.pool().clone(), projections::inline()).aggregates::<Prompt>(());
    let first = store
        .execute(&id, publish("first"), None, &metadata)
        .await
        .unwrap();
    let events_after_first = app.event_count().await;
    let second = store.execute(&id, publish("second"), None, &metadata).await;
    assert!(
        matches!(second, Err(commands::CommandError::AlreadyApplied)),
        "{second:?}"
    );
    assert_eq!(app.event_count().await, events_after_first);

    // What the first attempt committed can be rebuilt from the log, as a retry needs it.
    let recorded = store.recorded(&scope).await.unwrap().expect("an outcome");
    assert_eq!(recorded, first);
    assert!(matches!(
        &recorded.events[..],
        [PromptEvent::PromptVersionPublished { version: 1, template, .. }] if template == "first"
    ));
    let categories = commands::EventStore::new(app.pool().clone(), projections::inline())
        .aggregates::<domain::category::PromptCategory>(());
    assert!(
        categories.recorded(&scope).await.is_err(),
        "an outcome of another aggregate type"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_is_kept_while_its_process_holds_its_lock_and_taken_over_once_the_lock_is_gone() {
    use commands::idempotency::{Claim, IdempotencyScope, IdempotencyStore};
    use projections::leader::{lock_name, Leadership};
    let app = TestApp::spawn().await;
    let scope = IdempotencyScope {
        tenant: "acme".into(),
        owner: "key-1".into(),
        key: "held".into(),
    };
    let lease = Duration::from_secs(600);
    let store = || IdempotencyStore::new(app.pool().clone(), Duration::from_secs(3600), lease);
    // The first process: a role of its own, as a server holds for as long as it lives.
    let role = format!("process {}", uuid::Uuid::new_v4());
    let presence = Leadership::spawn(app.pool(), role.clone(), std::future::pending::<()>);
    presence
        .watch()
        .wait_for(|leading| *leading)
        .await
        .expect("the presence lock");
    let first = store().held_by(lock_name(&role));
    let Claim::Acquired(attempt) = first.claim(&scope, "f").await.unwrap() else {
        panic!("the first claim is acquired");
    };
    // Another process retries while the first lives: told to come back after the lease.
    let other = store().held_by(lock_name(&format!("process {}", uuid::Uuid::new_v4())));
    match other.claim(&scope, "f").await.unwrap() {
        Claim::InFlight { retry_after } => assert!(retry_after > Duration::from_secs(500), "{retry_after:?}"),
        claim => panic!("a living holder keeps its claim: {claim:?}"),
    }
    // The first process dies (its lock's connection closes): the retry takes over at once.
    presence.stop();
    let deadline = Instant::now() + Duration::from_secs(10);
    let taken = loop {
        match other.claim(&scope, "f").await.unwrap() {
            Claim::Acquired(taken) => break taken,
            Claim::InFlight { .. } if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            claim => panic!("the dead holder's claim is taken over: {claim:?}"),
        }
    };
    assert!(taken.resumed);
    assert_eq!(taken.resource_id, attempt.resource_id);
    // The dead attempt can no longer answer for the key.
    let response = commands::idempotency::StoredResponse {
        status: 201,
        headers: Vec::new(),
        body: b"late".to_vec(),
    };
    assert!(!first.complete(&scope, attempt.id, &response).await.unwrap());
}

/// A server on a runtime of its own, so that it can die as a killed process does: none of
/// its tasks runs again and its sockets and database connections close.
struct DoomedServer {
    address: String,
    runtime: tokio::runtime::Runtime,
}

impl DoomedServer {
    async fn start(database_url: &str, settings: api::Settings) -> Self {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("runtime");
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("non-blocking");
        let address = format!("http://{}", listener.local_addr().expect("address"));
        let url = database_url.to_string();
        runtime.spawn(async move {
            let pool = api::db::connect(&url, 8).await.expect("pool");
            let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
            let _ = api::serve(settings, pool, listener).await;
        });
        let client = reqwest::Client::new();
        let health = format!("{address}/healthz");
        wait_until("the doomed server answers", || async {
            client
                .get(&health)
                .send()
                .await
                .is_ok_and(|r| r.status().is_success())
        })
        .await;
        Self { address, runtime }
    }

    fn crash(self) {
        self.runtime.shutdown_background();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retry_after_a_crash_between_commit_and_response_gets_the_original_response() {
    let mut settings = api::Settings::default();
    // Far longer than the test may take: the dead attempt's claim must be taken over because
    // its process is gone, not because its lease ran out.
    settings.idempotency.lease = Duration::from_secs(600);
    let app = TestApp::spawn_with(settings.clone()).await;
    let doomed = DoomedServer::start(&app.db.url, settings).await;

    // Hold the answer back after the commit: storing it for replay waits for a lock this
    // test holds, between commit and response.
    let mut hold = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    sqlx::query("select pg_advisory_lock(4242)")
        .execute(&mut hold)
        .await
        .unwrap();
    sqlx::raw_sql(
        "create function wait_for_the_test() returns trigger language plpgsql as $$
         begin perform pg_advisory_xact_lock(4242); return new; end $$;
         create trigger wait_for_the_test before update on idempotency_request
             for each row execute function wait_for_the_test();",
    )
    .execute(app.pool())
    .await
    .unwrap();
    let body = json!({ "name": "billing" });
    let first = tokio::spawn(
        app.client
            .post(format!("{}/v1/categories", doomed.address))
            .bearer_auth(&app.admin_key)
            .header(KEY_HEADER, "crash-1")
            .json(&body)
            .send(),
    );
    wait_until("the command has committed", || async {
        events_with_key(&app, "crash-1").await == 1
    })
    .await;
    let stored: Option<i16> = sqlx::query_scalar(
        "select response_status from idempotency_request where idempotency_key = 'crash-1'",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(stored, None, "committed, not yet answered");

    doomed.crash();
    let lost = tokio::time::timeout(Duration::from_secs(10), first)
        .await
        .expect("the request ends with the server")
        .unwrap();
    assert!(lost.is_err(), "the client never got an answer: {lost:?}");
    // The dead process's connections die with it; PostgreSQL notices a gone client only
    // when it next talks to it, so the one still waiting for the lock is ended here.
    sqlx::query(
        "select pg_terminate_backend(pid) from pg_locks
         where locktype = 'advisory' and objid = 4242 and not granted",
    )
    .execute(app.pool())
    .await
    .unwrap();
    sqlx::raw_sql(
        "drop trigger wait_for_the_test on idempotency_request; drop function wait_for_the_test();",
    )
    .execute(app.pool())
    .await
    .unwrap();
    sqlx::query("select pg_advisory_unlock(4242)")
        .execute(&mut hold)
        .await
        .unwrap();

    // Retried at the surviving server: answered, as soon as PostgreSQL has seen the dead
    // process's connections close, from what the dead attempt committed.
    let crashed = Instant::now();
    let retry = loop {
        let sent = keyed(
            &app,
            Method::POST,
            "/v1/categories",
            "crash-1",
            Some(body.clone()),
        )
        .await;
        if sent.answer.status != StatusCode::CONFLICT {
            break sent;
        }
        assert_eq!(sent.answer.body["type"], "/problems/idempotency-in-progress");
        assert!(
            crashed.elapsed() < Duration::from_secs(10),
            "the dead attempt's claim was not taken over: {sent:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        retry.answer.status,
        StatusCode::CREATED,
        "{:?}",
        retry.answer.body
    );
    let (committed_id, events): (String, i64) = sqlx::query_as(
        "select min(aggregate_id), count(*) from events where aggregate_type = 'prompt_category'",
    )
    .fetch_one(app.pool())
    .await
    .unwrap();
    assert_eq!(events, 1, "the retry appended nothing");
    assert_eq!(retry.answer.body["id"], committed_id.as_str());
    assert_eq!(retry.answer.body["name"], "billing");
    assert_eq!(retry.answer.body["version"], 1);
    assert_eq!(retry.answer.etag.as_deref(), Some("\"1\""));
    assert_eq!(
        retry.answer.location,
        Some(format!("/v1/categories/{committed_id}"))
    );

    let again = keyed(&app, Method::POST, "/v1/categories", "crash-1", Some(body)).await;
    assert!(again.replayed);
    assert_eq!(again.answer, retry.answer);
    let listed = expect_status(app.get("/v1/categories", &app.admin_key).await, StatusCode::OK).await;
    assert_eq!(listed["items"].as_array().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_key_counts_as_new() {
    let mut settings = api::Settings::default();
    settings.idempotency.ttl = Duration::from_secs(5);
    settings.idempotency.cleanup_interval = Duration::from_secs(3600); // expiry at claim time
    let app = TestApp::spawn_with(settings).await;
    let first = keyed(
        &app,
        Method::POST,
        "/v1/prompts",
        "daily",
        Some(json!({ "name": "monday" })),
    )
    .await;
    assert_eq!(first.answer.status, StatusCode::CREATED);
    let events_before = app.event_count().await;
    let next = || {
        keyed(
            &app,
            Method::POST,
            "/v1/prompts",
            "daily",
            Some(json!({ "name": "tuesday" })),
        )
    };
    let early = next().await;
    assert_eq!(
        early.answer.status,
        StatusCode::UNPROCESSABLE_ENTITY,
        "within its TTL the key is taken"
    );

    let mut later = next().await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while later.answer.status == StatusCode::UNPROCESSABLE_ENTITY {
        assert!(Instant::now() < deadline, "the key never expired");
        tokio::time::sleep(Duration::from_millis(200)).await;
        later = next().await;
    }
    assert_eq!(
        later.answer.status,
        StatusCode::CREATED,
        "{:?}",
        later.answer.body
    );
    assert!(!later.replayed);
    assert_eq!(later.answer.body["name"], "tuesday");
    assert_eq!(app.event_count().await, events_before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_keys_are_deleted_by_the_periodic_cleanup() {
    let mut settings = api::Settings::default();
    settings.idempotency.ttl = Duration::from_secs(1);
    settings.idempotency.cleanup_interval = Duration::from_millis(200);
    let app = TestApp::spawn_with(settings).await;
    let id = app.create_prompt("p").await;
    let first = keyed(
        &app,
        Method::POST,
        &format!("/v1/prompts/{id}/versions"),
        "v1",
        Some(json!({ "template": "x" })),
    )
    .await;
    assert_eq!(first.answer.status, StatusCode::CREATED);
    let rows = || async {
        let requests: i64 = sqlx::query_scalar("select count(*) from idempotency_request")
            .fetch_one(app.pool())
            .await
            .unwrap();
        let outcomes: i64 = sqlx::query_scalar("select count(*) from idempotency_outcome")
            .fetch_one(app.pool())
            .await
            .unwrap();
        (requests, outcomes)
    };
    assert_eq!(rows().await, (1, 1));
    wait_until("the expired key is deleted", || async { rows().await == (0, 0) }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_keys_are_400_problems_and_write_nothing() {
    let app = TestApp::spawn().await;
    let events_before = app.event_count().await;
    let too_long = "k".repeat(256);
    let bad: [&[u8]; 5] = [
        b"",
        too_long.as_bytes(),
        b"two words",
        b"tab\tinside",
        b"caf\xc3\xa9",
    ];
    for key in bad {
        let response = app
            .request(Method::POST, "/v1/prompts", &app.admin_key)
            .header(KEY_HEADER, reqwest::header::HeaderValue::from_bytes(key).unwrap())
            .json(&json!({ "name": "never" }))
            .send()
            .await
            .unwrap();
        let problem = expect_problem(response, StatusCode::BAD_REQUEST, "invalid-idempotency-key").await;
        assert!(problem["detail"].as_str().unwrap().contains("Idempotency-Key"));
    }
    let twice = app
        .request(Method::POST, "/v1/prompts", &app.admin_key)
        .header(KEY_HEADER, "a")
        .header(KEY_HEADER, "b")
        .json(&json!({ "name": "never" }))
        .send()
        .await
        .unwrap();
    expect_problem(twice, StatusCode::BAD_REQUEST, "invalid-idempotency-key").await;
    assert_eq!(app.event_count().await, events_before);

    // The body is read within the usual limit before the key is claimed.
    let oversized = reqwest::Client::new()
        .post(format!("{}/v1/prompts", app.address))
        .bearer_auth(&app.admin_key)
        .header(KEY_HEADER, "big")
        .header("content-type", "application/json")
        .body(vec![b' '; 2 * 1024 * 1024])
        .send()
        .await
        .unwrap();
    expect_problem(oversized, StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large").await;
    assert_eq!(app.event_count().await, events_before);

    let longest = "k".repeat(255);
    let ok = keyed(
        &app,
        Method::POST,
        "/v1/prompts",
        &longest,
        Some(json!({ "name": "fine" })),
    )
    .await;
    assert_eq!(ok.answer.status, StatusCode::CREATED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_are_scoped_to_the_api_key_that_sent_them_and_so_to_its_tenant() {
    let app = TestApp::spawn().await;
    let acme_other = app.key("acme", "editor").await;
    let globex = app.key("globex", "admin").await;
    let body = json!({ "name": "shared" });
    let mut ids = Vec::new();
    for api_key in [&app.admin_key, &acme_other, &globex] {
        let sent = send(
            &app.address,
            &app.client,
            Method::POST,
            "/v1/categories",
            api_key,
            "same-key",
            Some(body.clone()),
        )
        .await;
        ids.push(sent.answer.body["id"].clone());
        if api_key == &acme_other {
            // Not a replay of the admin's request: a new command, refused on its own merits.
            expect_name_taken(&sent);
        } else {
            assert_eq!(sent.answer.status, StatusCode::CREATED, "{:?}", sent.answer.body);
            assert!(!sent.replayed);
        }
    }
    assert_ne!(ids[0], ids[2], "each tenant got its own category");
    let globex_list = expect_status(app.get("/v1/categories", &globex).await, StatusCode::OK).await;
    assert_eq!(globex_list["items"][0]["id"], ids[2]);

    // Each caller's retry replays its own answer.
    let admin_retry = keyed(
        &app,
        Method::POST,
        "/v1/categories",
        "same-key",
        Some(body.clone()),
    )
    .await;
    assert!(admin_retry.replayed);
    assert_eq!(admin_retry.answer.body["id"], ids[0]);
    let globex_retry = send(
        &app.address,
        &app.client,
        Method::POST,
        "/v1/categories",
        &globex,
        "same-key",
        Some(body),
    )
    .await;
    assert!(globex_retry.replayed);
    assert_eq!(globex_retry.answer.body["id"], ids[2]);
}

fn expect_name_taken(sent: &Sent) {
    assert_eq!(sent.answer.status, StatusCode::CONFLICT, "{:?}", sent.answer.body);
    assert_eq!(sent.answer.body["type"], "/problems/name-taken");
    assert!(!sent.replayed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_key_issue_never_shows_a_secret_again() {
    let app = TestApp::spawn().await;
    let body = json!({ "name": "ci", "role": "viewer" });
    let first = keyed(&app, Method::POST, "/v1/keys", "issue-ci", Some(body.clone())).await;
    assert_eq!(first.answer.status, StatusCode::CREATED);
    let secret = first.answer.body["key"].as_str().unwrap().to_string();
    let key_id = first.answer.body["api_key"]["id"].as_str().unwrap().to_string();

    let retry = keyed(&app, Method::POST, "/v1/keys", "issue-ci", Some(body)).await;
    assert!(retry.replayed);
    assert_eq!(retry.answer.status, StatusCode::CONFLICT);
    assert_eq!(retry.answer.body["type"], "/problems/key-secret-not-replayable");
    assert!(retry.answer.body["detail"].as_str().unwrap().contains(&key_id));
    assert!(!retry.answer.body.to_string().contains(&secret));
    let stored: Vec<u8> = sqlx::query_scalar("select response_body from idempotency_request")
        .fetch_one(app.pool())
        .await
        .unwrap();
    assert!(
        !String::from_utf8_lossy(&stored).contains(&secret),
        "the secret is not stored"
    );

    let keys = expect_status(app.get("/v1/keys", &app.admin_key).await, StatusCode::OK).await;
    let named_ci = keys["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|k| k["name"] == "ci")
        .count();
    assert_eq!(named_ci, 1, "one key issued");
    // The issued key works.
    expect_status(app.get("/v1/prompts", &secret).await, StatusCode::OK).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_that_loses_every_race_is_answered_retryable_and_its_answer_is_not_kept() {
    let app = TestApp::spawn().await;
    let prompt = app.create_prompt("contended").await;
    // Every append to this prompt fails as if another writer had just taken its next
    // sequence number, as a hot aggregate under many writers would.
    sqlx::raw_sql(&format!(
        "create function lose_every_race() returns trigger language plpgsql as $$
         begin raise unique_violation using constraint = 'events_pkey', message = 'sequence taken'; end $$;
         create trigger lose_every_race before insert on events for each row
             when (new.aggregate_id = '{prompt}') execute function lose_every_race();"
    ))
    .execute(app.pool())
    .await
    .unwrap();
    let path = format!("/v1/prompts/{prompt}/versions");
    let body = json!({ "template": "Hello {{name}}" });
    let lost = keyed(&app, Method::POST, &path, "contended-1", Some(body.clone())).await;
    assert_eq!(lost.answer.status, StatusCode::CONFLICT, "{:?}", lost.answer);
    assert_eq!(lost.answer.body["type"], "/problems/contended");
    assert_eq!(lost.retry_after, Some(1));

    // Once the writers are gone, the retry runs the command instead of replaying the 409.
    sqlx::raw_sql("drop trigger lose_every_race on events; drop function lose_every_race();")
        .execute(app.pool())
        .await
        .unwrap();
    let retried = keyed(&app, Method::POST, &path, "contended-1", Some(body)).await;
    assert_eq!(retried.answer.status, StatusCode::CREATED, "{:?}", retried.answer);
    assert!(!retried.replayed);
    assert_eq!(retried.answer.body["version"], 1);
    assert_eq!(events_with_key(&app, "contended-1").await, 1);
}
