//! The NATS JetStream feed: every event reaches the stream exactly once, in global order,
//! whatever crashes, and commands never wait for NATS.

use std::time::{Duration, Instant};

use domain::position::GlobalCursor;
use futures::StreamExt;
use integration_tests::harness::{expect_status, last_event_cursor, TestApp};
use integration_tests::nats::{
    self, delete_stream, read_stream, unique_relay_settings, FeedMessage, NatsServer,
};
use projections::relay::{Relay, RelaySettings, CONTENT_TYPE, DATABASE_HEADER};
use projections::{cloudevent, global_order, StoredEvent};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::sync::watch;

const DEADLINE: Duration = Duration::from_secs(30);

/// The whole event log, in global order: every committed event. Not the settled read a
/// tailing reader makes, whose horizon may stop short for a moment when a transaction of
/// another database (another test's) ends while it is computed.
pub(crate) async fn the_log(pool: &PgPool) -> Vec<StoredEvent> {
    let mut conn = pool.acquire().await.expect("connection");
    global_order::read_committed_for(
        &mut conn,
        GlobalCursor::START,
        1_000_000,
        global_order::Wanted::EVERYTHING,
    )
    .await
    .expect("the log")
}

/// Reads the stream back and checks that it holds every event of the log exactly once, in
/// global order: no duplicate, no gap.
pub(crate) async fn assert_stream_is_the_log(
    pool: &PgPool,
    settings: &RelaySettings,
) -> (Vec<FeedMessage>, Vec<StoredEvent>) {
    let events = the_log(pool).await;
    let messages = read_stream(settings).await;
    let published: Vec<&str> = messages
        .iter()
        .map(|m| m.body["id"].as_str().unwrap_or("?"))
        .collect();
    let logged: Vec<String> = events.iter().map(cloudevent::event_id).collect();
    assert_eq!(published, logged, "the stream must be the log, once and in order");
    (messages, events)
}

/// The feed's entry in `GET /v1/system/projections`.
async fn feed_lag(app: &TestApp) -> Value {
    let lag = expect_status(
        app.get("/v1/system/projections", &app.admin_key).await,
        StatusCode::OK,
    )
    .await;
    let stream = &app.settings.relay.as_ref().expect("a feed").stream;
    lag["projections"]
        .as_array()
        .expect("projections")
        .iter()
        .find(|p| p["stream"] == stream.as_str())
        .cloned()
        .unwrap_or_else(|| panic!("no feed in {lag}"))
}

/// The feed's entry in `GET /readyz`, which must answer 200 whatever the feed's state.
async fn feed_readiness(app: &TestApp) -> Value {
    let response = app
        .client
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .expect("readyz");
    expect_status(response, StatusCode::OK).await["nats_feed"].clone()
}

/// Polls the feed's lag until `done` holds; panics with the last report after the deadline.
async fn wait_for_feed(app: &TestApp, what: &str, done: impl Fn(&Value) -> bool) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let report = feed_lag(app).await;
        if done(&report) {
            return report;
        }
        assert!(Instant::now() < deadline, "the feed never {what}: {report}");
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Waits until the feed has published the whole log.
async fn wait_until_caught_up(app: &TestApp) -> Value {
    let last = last_event_cursor(app.pool()).await.to_string();
    // The relay commits its checkpoint just before it reports itself publishing (again), so
    // both are awaited.
    wait_for_feed(app, "caught up", |report| {
        report["events_behind"] == 0 && report["checkpoint"] == last.as_str() && report["status"] == "ok"
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_the_stream_once_in_global_order_as_a_cloud_event() {
    let app = TestApp::spawn().await;
    let settings = app.settings.relay.clone().expect("TestApp runs the feed");
    // A live subscriber on plain NATS, as `nats sub '<prefix>.acme.>'` would be.
    let client = async_nats::connect(&settings.nats_url).await.expect("NATS");
    let mut live = client
        .subscribe(format!("{}.acme.prompt.>", settings.subject_prefix))
        .await
        .expect("subscribe");
    client.flush().await.expect("flush");

    let prompt = app.create_prompt("greeting").await;
    app.publish(&prompt, "Hello {{name}}").await;
    app.publish(&prompt, "Hi {{name}}, about {{topic}}").await;
    let labelled = app
        .put(
            &format!("/v1/prompts/{prompt}/labels/production"),
            &app.admin_key,
            json!({ "version": 2 }),
        )
        .await;
    expect_status(labelled, StatusCode::OK).await;
    let archived = app
        .post(
            &format!("/v1/prompts/{prompt}/archive"),
            &app.admin_key,
            json!({}),
        )
        .await;
    assert!(archived.status().is_success(), "{}", archived.status());
    let category = app
        .post("/v1/categories", &app.admin_key, json!({ "name": "Support" }))
        .await;
    expect_status(category, StatusCode::CREATED).await;
    app.key("globex", "viewer").await;

    let first = tokio::time::timeout(DEADLINE, live.next())
        .await
        .expect("a live message")
        .expect("subscription open");
    let first: Value = serde_json::from_slice(&first.payload).expect("JSON");
    assert_eq!(first["type"], "aipm.prompt.PromptCreated");
    assert_eq!(first["aipmaggregateid"], prompt.as_str());

    let report = wait_until_caught_up(&app).await;
    assert_eq!(report["name"], settings.checkpoint_name());
    assert_eq!(report["status"], "ok", "{report}");
    assert_eq!(report["connected"], true, "{report}");
    assert_eq!(report["duplicates"], 0, "{report}");

    let (messages, events) = assert_stream_is_the_log(app.pool(), &settings).await;
    assert!(
        events.iter().any(|e| e.tenant_id == "globex"),
        "events of another tenant"
    );
    for (index, (message, event)) in messages.iter().zip(&events).enumerate() {
        assert_eq!(message.stream_sequence, index as u64 + 1);
        assert_eq!(
            message.subject,
            cloudevent::nats_subject(&settings.subject_prefix, event)
        );
        assert_eq!(
            message.headers.get("Nats-Msg-Id").map(String::as_str),
            Some(cloudevent::event_id(event).as_str())
        );
        assert_eq!(
            message.headers.get("Content-Type").map(String::as_str),
            Some(CONTENT_TYPE)
        );
        let expected: Value =
            serde_json::from_str(&cloudevent::to_json(event).expect("encode")).expect("JSON");
        assert_eq!(message.body, expected);
        assert_eq!(message.body["specversion"], "1.0");
        assert_eq!(message.body["aipmcursor"], event.cursor.to_string());
        assert_eq!(
            message.body["type"],
            format!("aipm.{}.{}", event.aggregate_type, event.event_type)
        );
        for field in ["id", "source", "subject", "time", "datacontenttype", "data"] {
            assert!(
                !message.body[field].is_null(),
                "{field} missing in {}",
                message.body
            );
        }
    }
    let published_version = messages
        .iter()
        .find(|m| m.body["type"] == "aipm.prompt.PromptVersionPublished")
        .expect("a published version");
    assert_eq!(published_version.body["data"]["version"], 1);
    assert_eq!(published_version.body["aipmactor"], "test-admin");
    assert!(published_version.body["aipmrequestid"].is_string());

    let context = async_nats::jetstream::new(client);
    let mut stream = context.get_stream(&settings.stream).await.expect("stream");
    let config = stream.info().await.expect("info").config.clone();
    assert_eq!(config.subjects, vec![settings.subjects()]);
    assert_eq!(config.storage, async_nats::jetstream::stream::StorageType::File);
    assert_eq!(config.duplicate_window, Duration::from_secs(120));

    let readiness = feed_readiness(&app).await;
    assert_eq!(readiness["status"], "ok", "{readiness}");
    assert_eq!(readiness["events_behind"], 0, "{readiness}");
}

/// Publishes `events` the way a relay that crashed after its acks but before its commit
/// left them: in the stream, but not in its checkpoint. Without `Nats-Msg-Id`, so that
/// JetStream's duplicate detection cannot hide a re-publish: only the relay's reading of
/// the stream can keep them from appearing twice. The stream's duplicate window is shorter
/// than the relay's, which the relay must correct.
async fn publish_as_a_crashed_relay(settings: &RelaySettings, events: &[StoredEvent]) {
    let client = async_nats::connect(&settings.nats_url).await.expect("NATS");
    let context = async_nats::jetstream::new(client);
    context
        .create_stream(async_nats::jetstream::stream::Config {
            name: settings.stream.clone(),
            subjects: vec![settings.subjects()],
            duplicate_window: Duration::from_secs(30),
            ..Default::default()
        })
        .await
        .expect("create the stream");
    for event in events {
        let body = cloudevent::to_json(event).expect("encode");
        context
            .publish(
                cloudevent::nats_subject(&settings.subject_prefix, event),
                body.into(),
            )
            .await
            .expect("publish")
            .await
            .expect("ack");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_relay_killed_at_any_moment_and_restarted_publishes_every_event_once() {
    // The server runs no feed: the test starts and kills relays itself, as processes would.
    let app = TestApp::spawn_with(api::Settings::default()).await;
    let settings = unique_relay_settings(&nats::nats_url());
    for n in 0..4 {
        app.create_prompt(&format!("before {n}")).await;
    }
    let early = the_log(app.pool()).await;
    publish_as_a_crashed_relay(&settings, &early[..early.len() - 2]).await;

    let (wake, woken) = watch::channel(0u64);
    let commands = async {
        for n in 0..60 {
            let prompt = app.create_prompt(&format!("during {n}")).await;
            app.publish(&prompt, "Hello {{name}}").await;
            wake.send_modify(|w| *w += 1);
        }
    };
    let crashes = async {
        for round in 0..16u32 {
            // Every third round two relays race, as two aipm processes would.
            let relays: Vec<Relay> = (0..1 + usize::from(round % 3 == 0))
                .map(|_| Relay::spawn(app.pool().clone(), settings.clone(), woken.clone()))
                .collect();
            let lifetime = 2 + (uuid::Uuid::new_v4().as_u128() % 80) as u64;
            tokio::time::sleep(Duration::from_millis(lifetime)).await;
            drop(relays);
        }
    };
    tokio::join!(commands, crashes);

    let relay = Relay::spawn(app.pool().clone(), settings.clone(), woken.clone());
    let last = last_event_cursor(app.pool()).await;
    assert!(
        relay.wait_for(last, DEADLINE).await,
        "the last relay never caught up: {:?}",
        relay.status()
    );
    let (messages, events) = assert_stream_is_the_log(app.pool(), &settings).await;
    assert_eq!(
        events.len(),
        2 + 4 + 60 * 2,
        "tenant, key, and every command's event"
    );
    // What the "crashed" relay published is followed by the relay's own messages.
    assert!(!messages[early.len() - 3].headers.contains_key("Nats-Msg-Id"));
    assert!(messages[early.len() - 2].headers.contains_key("Nats-Msg-Id"));
    let client = async_nats::connect(&settings.nats_url).await.expect("NATS");
    let mut stream = async_nats::jetstream::new(client)
        .get_stream(&settings.stream)
        .await
        .expect("stream");
    let window = stream.info().await.expect("info").config.duplicate_window;
    assert_eq!(
        window,
        Duration::from_secs(120),
        "the relay widens the duplicate window"
    );
    drop(relay);
    delete_stream(&settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_run_at_full_speed_through_a_nats_outage_and_the_feed_catches_up() {
    let mut nats_server = NatsServer::start().await;
    let relay_settings = unique_relay_settings(&nats_server.url());
    let app = TestApp::spawn_with(api::Settings::default().with_relay(Some(relay_settings.clone()))).await;
    let prompt = app.create_prompt("through the outage").await;
    wait_until_caught_up(&app).await;

    nats_server.kill();
    for n in 0..10 {
        let started = Instant::now();
        app.publish(&prompt, &format!("version {n} while NATS is down"))
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "a command waited {:?} for NATS",
            started.elapsed()
        );
    }
    let down = wait_for_feed(&app, "reported the outage", |report| {
        report["status"] == "down" && report["events_behind"] == 10
    })
    .await;
    assert_eq!(down["connected"], false, "{down}");
    assert!(down["seconds_behind"].as_f64().unwrap_or(0.0) > 0.0, "{down}");
    let readiness = feed_readiness(&app).await;
    assert_eq!(readiness["status"], "down", "{readiness}");
    assert_eq!(readiness["events_behind"], 10, "{readiness}");

    nats_server.start_again().await;
    let report = wait_until_caught_up(&app).await;
    assert_eq!(report["status"], "ok", "{report}");
    assert_stream_is_the_log(app.pool(), &relay_settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_starts_and_serves_while_nats_is_down_and_the_feed_catches_up_later() {
    let mut nats_server = NatsServer::reserve();
    let relay_settings = unique_relay_settings(&nats_server.url());
    let app = TestApp::spawn_with(api::Settings::default().with_relay(Some(relay_settings.clone()))).await;

    let prompt = app.create_prompt("before NATS").await;
    app.publish(&prompt, "Hello {{name}}").await;
    let logged = the_log(app.pool()).await.len();
    let down = wait_for_feed(&app, "reported NATS as down", |report| {
        report["status"] == "down" && report["events_behind"] == logged
    })
    .await;
    assert!(down["last_error"].is_string(), "{down}");
    assert_eq!(feed_readiness(&app).await["status"], "down");

    nats_server.start_again().await;
    wait_until_caught_up(&app).await;
    assert_stream_is_the_log(app.pool(), &relay_settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_fed_from_another_database_is_refused_not_mixed() {
    let first = TestApp::spawn().await;
    first.create_prompt("first-log").await;
    wait_until_caught_up(&first).await;
    let settings = first.settings.relay.clone().expect("a feed");
    let first_database: String = sqlx::query_scalar("select id::text from database_identity")
        .fetch_one(first.pool())
        .await
        .expect("identity");
    let published = read_stream(&settings).await;
    assert!(published
        .iter()
        .all(|m| m.headers.get(DATABASE_HEADER) == Some(&first_database)));

    // Another database whose feed is pointed at the same stream, by mistake.
    let second = TestApp::spawn_with(api::Settings::default().with_relay(Some(settings.clone()))).await;
    second.create_prompt("second-log").await;
    let refused = wait_for_feed(&second, "refused the stream", |report| {
        report["last_error"]
            .as_str()
            .is_some_and(|error| error.contains("another aipm database"))
    })
    .await;
    assert_eq!(feed_readiness(&second).await["last_error"], refused["last_error"]);
    assert!(
        refused["last_error"]
            .as_str()
            .is_some_and(|error| error.contains(&first_database) && error.contains("AIPM_NATS_STREAM")),
        "{refused}"
    );
    // The stream still holds the first log alone, and the first relay carries on.
    let after: Vec<u64> = read_stream(&settings)
        .await
        .iter()
        .map(|m| m.stream_sequence)
        .collect();
    let before: Vec<u64> = published.iter().map(|m| m.stream_sequence).collect();
    assert_eq!(after, before);
    first.create_prompt("first-log-again").await;
    wait_until_caught_up(&first).await;
    assert_stream_is_the_log(first.pool(), &settings).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_on_a_log_restored_from_before_the_stream_stops_instead_of_skipping_events() {
    let original = TestApp::spawn().await;
    original.create_prompt("before-the-backup").await;
    wait_until_caught_up(&original).await;
    let backup = original.db.copy().await;
    // Published, and then lost with the original: not in the backup.
    let lost = original.create_prompt("after-the-backup").await;
    wait_until_caught_up(&original).await;
    original.stop();
    let settings = original.settings.relay.clone().expect("a feed");
    let published: Vec<u64> = read_stream(&settings)
        .await
        .iter()
        .map(|m| m.stream_sequence)
        .collect();

    // The backup restored, serving with the same feed; a new event gets a cursor the stream
    // knows nothing of, and the stream's last event is not in this log.
    let restored = TestApp::spawn_on(
        backup,
        api::Settings::default().with_relay(Some(settings.clone())),
    )
    .await;
    restored.create_prompt("after-the-restore").await;
    let stopped = wait_for_feed(&restored, "stopped", |report| {
        report["last_error"]
            .as_str()
            .is_some_and(|error| error.contains("does not hold"))
    })
    .await;
    let error = stopped["last_error"].as_str().unwrap_or_default();
    assert!(
        error.contains(&format!("prompt-{lost}-1")) && error.contains("AIPM_NATS_STREAM"),
        "{stopped}"
    );
    assert_eq!(
        feed_readiness(&restored).await["last_error"],
        stopped["last_error"]
    );
    let after: Vec<u64> = read_stream(&settings)
        .await
        .iter()
        .map(|m| m.stream_sequence)
        .collect();
    assert_eq!(
        after, published,
        "nothing is published after a stream that is ahead of the log"
    );
}
