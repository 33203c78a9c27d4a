//! Several aipm processes on one database and one NATS server: commands on any of them,
//! each projection and the relay led by exactly one at a time and taken over within seconds
//! when it dies, and read-your-writes on whichever process answers.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use integration_tests::harness::{expect_problem, expect_status, last_event_cursor, TestApp};
use integration_tests::nats::unique_relay_settings;
use reqwest::StatusCode;
use serde_json::{json, Value};

use crate::process::ServerProcess;
use crate::relay::assert_stream_is_the_log;

const DEADLINE: Duration = Duration::from_secs(60);
/// How soon another process must lead what a killed one led.
const TAKEOVER: Duration = Duration::from_secs(10);
const CLIENTS: usize = 6;
const ROUNDS: usize = 12;

/// The roles led by one process at a time: every runner's projection, and the relay.
fn roles(stream: &str) -> Vec<String> {
    let mut roles: Vec<String> = projections::all()
        .iter()
        .filter(|projection| !projection.inline())
        .map(|projection| format!("projection {}", projection.name()))
        .collect();
    roles.push(format!("relay {stream}"));
    roles
}

/// The roles `address` says it leads (`aipm_leader` at 1); `None` when it does not answer.
async fn led_by(app: &TestApp, address: &str) -> Option<BTreeSet<String>> {
    let response = app
        .client
        .get(format!("{address}/metrics"))
        .bearer_auth(&app.admin_key)
        .send()
        .await
        .ok()?;
    let text = response.text().await.ok()?;
    Some(
        text.lines()
            .filter_map(|line| line.strip_prefix("aipm_leader{role=\""))
            .filter_map(|rest| rest.strip_suffix("\"} 1"))
            .map(str::to_string)
            .collect(),
    )
}

/// Waits until every role is led by exactly one of `addresses`; returns who leads what.
async fn one_leader_each(app: &TestApp, addresses: &[&str], roles: &[String]) -> Vec<BTreeSet<String>> {
    let started = Instant::now();
    loop {
        let mut led = Vec::new();
        for address in addresses {
            led.push(led_by(app, address).await.unwrap_or_default());
        }
        let settled = roles
            .iter()
            .all(|role| led.iter().filter(|roles| roles.contains(role)).count() == 1);
        if settled {
            return led;
        }
        assert!(
            started.elapsed() < TAKEOVER,
            "after {:?} the roles are not led once each: {led:?}",
            started.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The processes a client may send to: addresses with whether each is still alive.
struct Instances {
    addresses: Vec<String>,
    alive: Vec<AtomicBool>,
}

impl Instances {
    /// The `n`th living instance counted from `start`.
    fn pick(&self, start: usize) -> &str {
        (0..self.addresses.len())
            .map(|offset| (start + offset) % self.addresses.len())
            .find(|&i| self.alive[i].load(Ordering::SeqCst))
            .map(|i| self.addresses[i].as_str())
            .expect("a living instance")
    }
}

/// Sends `request` (built for an instance's address) to the instance `start` points at, and
/// to the next living one if that one does not answer: a process killed while the request
/// was in flight. Commands carry an `Idempotency-Key`, so a resent one applies once; while
/// the dead attempt's claim on the key lasts, the resend is told to come back after
/// `Retry-After` (409), as a client would.
async fn send(
    instances: &Instances,
    start: usize,
    request: impl Fn(&str) -> reqwest::RequestBuilder,
) -> reqwest::Response {
    let mut last_error = None;
    for attempt in 0..10 {
        match request(instances.pick(start + attempt)).send().await {
            Ok(response) if response.status() == StatusCode::CONFLICT && attempt > 0 => {
                let wait = response
                    .headers()
                    .get("retry-after")
                    .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
                let Some(seconds) = wait else { return response };
                tokio::time::sleep(Duration::from_secs(seconds)).await;
            }
            Ok(response) => return response,
            Err(error) => last_error = Some(error),
        }
    }
    panic!("no instance answered: {last_error:?}")
}

/// [`send`] for a command, with one `Idempotency-Key` for every resend.
async fn send_command(
    instances: &Instances,
    start: usize,
    request: impl Fn(&str) -> reqwest::RequestBuilder,
) -> reqwest::Response {
    let idempotency = uuid::Uuid::new_v4().to_string();
    send(instances, start, |address| {
        request(address).header("idempotency-key", &idempotency)
    })
    .await
}

async fn body(response: reqwest::Response, status: StatusCode) -> (Value, Option<String>) {
    let cursor = response
        .headers()
        .get("aipm-cursor")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let got = response.status();
    let body: Value = response.json().await.unwrap_or(Value::Null);
    assert_eq!(got, status, "{body}");
    (body, cursor)
}

/// One client's work: prompts created and published through one instance and read, with
/// their audit entries, on another; flags set on one instance and evaluated on another with `Aipm-Read-After`,
/// which must see the change at once. Returns the prompts it created.
async fn client(
    app: Arc<TestApp>,
    instances: Arc<Instances>,
    n: usize,
    done: Arc<AtomicUsize>,
) -> Vec<String> {
    let key = app.admin_key.clone();
    let http = &app.client;
    let mut prompts = Vec::new();
    for round in 0..ROUNDS {
        let (write, read) = (n + round, n + round + 1);
        let created = send_command(&instances, write, |address| {
            http.post(format!("{address}/v1/prompts"))
                .bearer_auth(&key)
                .json(&json!({"name": format!("client {n} round {round}")}))
        })
        .await;
        let (created, cursor) = body(created, StatusCode::CREATED).await;
        assert!(cursor.is_some(), "a command answers with its Aipm-Cursor");
        let id = created["id"].as_str().expect("id").to_string();

        let published = send_command(&instances, read, |address| {
            http.post(format!("{address}/v1/prompts/{id}/versions"))
                .bearer_auth(&key)
                .json(&json!({"template": format!("Hello {{{{name}}}} from {n}/{round}")}))
        })
        .await;
        body(published, StatusCode::CREATED).await;
        let read_back = send(&instances, write + 2, |address| {
            http.get(format!("{address}/v1/prompts/{id}")).bearer_auth(&key)
        })
        .await;
        let (read_back, _) = body(read_back, StatusCode::OK).await;
        assert_eq!(read_back["latest_version"], 1, "{read_back}");
        // The audit log, led by one process, answers on every process with what came before.
        let audited = send(&instances, write + 1, |address| {
            http.get(format!("{address}/v1/audit?aggregate_id={id}"))
                .bearer_auth(&key)
        })
        .await;
        let (audited, _) = body(audited, StatusCode::OK).await;
        let audited: Vec<&str> = audited["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|entry| entry["event_type"].as_str().unwrap_or("?"))
            .collect();
        assert_eq!(audited, ["PromptCreated", "PromptVersionPublished"]);
        prompts.push(id);

        // A flag changed on one instance is evaluated from another's memory.
        let flag = format!("client{n}.flag");
        let enabled = round % 2 == 0;
        let set = send_command(&instances, write, |address| {
            http.put(format!("{address}/v1/flags/{flag}"))
                .bearer_auth(&key)
                .json(&json!({"enabled": enabled, "rollout_percent": 100, "reason": "instances"}))
        })
        .await;
        let (_, cursor) = body(set, StatusCode::OK).await;
        // A change resent after its instance died mid-request may find it already made,
        // by a response that never arrived: nothing new to wait for then.
        let Some(cursor) = cursor else {
            done.fetch_add(1, Ordering::SeqCst);
            continue;
        };
        let evaluated = send(&instances, read, |address| {
            http.get(format!("{address}/v1/flags/{flag}/evaluate?subject=someone"))
                .bearer_auth(&key)
                .header("aipm-read-after", &cursor)
        })
        .await;
        let (evaluated, _) = body(evaluated, StatusCode::OK).await;
        assert_eq!(evaluated["enabled"], enabled, "round {round}: {evaluated}");
        done.fetch_add(1, Ordering::SeqCst);
    }
    prompts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_instances_share_the_work_and_lose_their_leader_to_sigkill_without_a_gap_or_a_duplicate() {
    let app = TestApp::spawn_with(api::Settings::default()).await;
    // Only the three processes work on this database.
    app.stop();
    let feed = unique_relay_settings(&integration_tests::nats::nats_url());
    let env = [
        ("NATS_URL", feed.nats_url.as_str()),
        ("AIPM_NATS_STREAM", feed.stream.as_str()),
        ("AIPM_NATS_SUBJECT_PREFIX", feed.subject_prefix.as_str()),
        ("AIPM_RATE_LIMIT_RPS", "0"),
        ("AIPM_HEALTH_PROBER", "false"),
        // A request in flight on the killed process holds its key until PostgreSQL sees the
        // process's connections close, and at most this long.
        ("AIPM_IDEMPOTENCY_LEASE", "2s"),
        ("AIPM_REQUEST_TIMEOUT", "2s"),
    ];
    let mut processes = Vec::new();
    for _ in 0..3 {
        processes.push(ServerProcess::start_with(&app, &env).await);
    }
    let addresses: Vec<String> = processes.iter().map(|p| p.address.clone()).collect();
    let roles = roles(&feed.stream);
    let led = one_leader_each(
        &app,
        &addresses.iter().map(String::as_str).collect::<Vec<_>>(),
        &roles,
    )
    .await;
    // The others say they stand by for the feed; readiness does not depend on leading.
    for (address, roles) in addresses.iter().zip(&led) {
        let ready: Value = app
            .client
            .get(format!("{address}/readyz"))
            .send()
            .await
            .expect("readyz")
            .json()
            .await
            .expect("readyz body");
        let feed_status = ready["nats_feed"]["status"].as_str().unwrap_or("?");
        if roles.contains(&format!("relay {}", feed.stream)) {
            assert_ne!(feed_status, "standby", "{ready}");
        } else {
            assert_eq!(feed_status, "standby", "{ready}");
        }
    }

    let app = Arc::new(app);
    let instances = Arc::new(Instances {
        addresses: addresses.clone(),
        alive: (0..3).map(|_| AtomicBool::new(true)).collect(),
    });
    let done = Arc::new(AtomicUsize::new(0));
    let clients: Vec<_> = (0..CLIENTS)
        .map(|n| tokio::spawn(client(app.clone(), instances.clone(), n, done.clone())))
        .collect();

    // Mid-load, the process leading the relay dies.
    let started = Instant::now();
    while done.load(Ordering::SeqCst) < CLIENTS * ROUNDS / 3 {
        if clients.iter().any(|client| client.is_finished()) || started.elapsed() > DEADLINE {
            // A client failed (or nothing moves): its panic says why.
            for client in clients {
                client.await.expect("client");
            }
            panic!("the load never got a third of the way");
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let leader = led
        .iter()
        .position(|roles| roles.contains(&format!("relay {}", feed.stream)))
        .expect("a relay leader");
    instances.alive[leader].store(false, Ordering::SeqCst);
    processes[leader].kill();
    let killed_at = Instant::now();
    let survivors: Vec<&str> = addresses
        .iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, a)| a.as_str())
        .collect();
    one_leader_each(&app, &survivors, &roles).await;
    let takeover = killed_at.elapsed();
    assert!(
        done.load(Ordering::SeqCst) < CLIENTS * ROUNDS,
        "the load went on through the takeover"
    );

    let mut created = BTreeSet::new();
    for client in clients {
        for id in client.await.expect("client") {
            assert!(created.insert(id), "a prompt created twice");
        }
    }

    // Every prompt once in the read model, as many as the clients created.
    let listed: Vec<String> = sqlx::query_scalar("select prompt_id::text from prompt")
        .fetch_all(app.pool())
        .await
        .expect("prompts");
    assert_eq!(listed.len(), CLIENTS * ROUNDS);
    assert_eq!(listed.into_iter().collect::<BTreeSet<_>>(), created);

    // The audit log and the feed hold the whole log, once each, whoever led them.
    let last = last_event_cursor(app.pool()).await;
    let survivor = survivors[0];
    let started = Instant::now();
    loop {
        let lag = app
            .client
            .get(format!("{survivor}/v1/system/projections"))
            .bearer_auth(&app.admin_key)
            .send()
            .await
            .expect("lag")
            .json::<Value>()
            .await
            .expect("lag body");
        let behind: BTreeMap<String, i64> = lag["projections"]
            .as_array()
            .expect("projections")
            .iter()
            .map(|p| {
                (
                    p["name"].as_str().unwrap_or("?").to_string(),
                    p["events_behind"].as_i64().unwrap_or(-1),
                )
            })
            .filter(|(_, behind)| *behind != 0)
            .collect();
        if behind.is_empty() {
            break;
        }
        assert!(started.elapsed() < DEADLINE, "still behind: {behind:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_stream_is_the_log(app.pool(), &feed).await;
    let report = projections::audit::verify::verify(app.pool(), None, None)
        .await
        .expect("verify");
    assert!(report.ok(), "{report:?}");
    let (entries, events): (i64, i64) =
        sqlx::query_as("select (select count(*) from audit_entry), (select count(*) from events)")
            .fetch_one(app.pool())
            .await
            .expect("counts");
    assert_eq!(entries, events, "one audit entry per event");
    for projection in projections::all() {
        let report = replay::verify(
            app.pool(),
            projection.as_ref(),
            20,
            &replay::ProgressBar::hidden(),
        )
        .await
        .expect("verify");
        assert!(report.is_clean(), "{report}");
    }
    assert!(
        takeover < TAKEOVER,
        "taken over in {takeover:?}, last event {last}"
    );
    integration_tests::nats::delete_stream(&feed).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_cursor_that_is_malformed_or_beyond_the_log_is_refused_and_probes_ignore_it() {
    let app = TestApp::spawn().await;
    let created = app
        .post("/v1/prompts", &app.admin_key, json!({"name": "read-after"}))
        .await;
    let cursor = created
        .headers()
        .get("aipm-cursor")
        .and_then(|v| v.to_str().ok())
        .expect("a command answers with Aipm-Cursor")
        .to_string();
    expect_status(created, StatusCode::CREATED).await;
    let read = |value: String| {
        app.request(reqwest::Method::GET, "/v1/prompts", &app.admin_key)
            .header("aipm-read-after", value)
            .send()
    };
    // The process's own change: answered.
    expect_status(read(cursor.clone()).await.expect("request"), StatusCode::OK).await;
    for malformed in ["yesterday", "12", "-1-0", "12-x"] {
        let refused = expect_problem(
            read(malformed.into()).await.expect("request"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed",
        )
        .await;
        assert_eq!(refused["errors"][0]["field"], "Aipm-Read-After", "{refused}");
    }
    // A point the log has not reached cannot be waited for.
    let (transaction, _) = cursor.split_once('-').expect("a cursor");
    let beyond = format!(
        "{}-0",
        transaction.parse::<i64>().expect("a transaction") + 1_000_000
    );
    expect_problem(
        read(beyond.clone()).await.expect("request"),
        StatusCode::UNPROCESSABLE_ENTITY,
        "validation-failed",
    )
    .await;
    // Authentication comes first: without a valid key, the header is neither checked nor
    // waited for.
    let anonymous = app
        .client
        .get(format!("{}/v1/prompts", app.address))
        .header("aipm-read-after", "yesterday")
        .send()
        .await
        .expect("request");
    expect_problem(anonymous, StatusCode::UNAUTHORIZED, "unauthorized").await;
    // A probe says how the process is now, whatever the header.
    for value in ["yesterday".to_string(), beyond] {
        let probe = app
            .client
            .get(format!("{}/healthz", app.address))
            .header("aipm-read-after", value)
            .send()
            .await
            .expect("probe");
        assert_eq!(probe.status(), StatusCode::OK);
    }
}
