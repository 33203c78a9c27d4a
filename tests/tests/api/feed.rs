//! The live feed over HTTP: Server-Sent Events and WebSocket subscribers get exactly their
//! tenant's events, in global order, history then live, resumable by cursor without a gap
//! or a duplicate; subscribers that fall behind catch up from the log, and those that fall
//! too far behind are cut off with a reason and can resume.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use integration_tests::harness::{
    expect_problem, expect_status, transaction_in_another_database, TestApp, TestDatabase,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Upper bound for every wait, so that a bug fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(20);

/// One event of the log as the feed should deliver it: its cursor and CloudEvents type.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Expected {
    cursor: String,
    cloud_type: String,
}

/// The tenant's events in global order, optionally only some aggregate and event types,
/// after `after` (a cursor, or everything).
async fn tenant_events(
    pool: &PgPool,
    tenant: &str,
    aggregate_types: Option<&[&str]>,
    event_types: Option<&[&str]>,
    after: Option<&str>,
) -> Vec<Expected> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "select transaction_id::text || '-' || position, 'aipm.' || aggregate_type || '.' || event_type
         from events
         where tenant_id = $1
           and ($2::text[] is null or aggregate_type = any($2))
           and ($3::text[] is null or event_type = any($3))
         order by transaction_id, position",
    )
    .bind(tenant)
    .bind(aggregate_types)
    .bind(event_types)
    .fetch_all(pool)
    .await
    .expect("tenant events");
    let events: Vec<Expected> = rows
        .into_iter()
        .map(|(cursor, cloud_type)| Expected { cursor, cloud_type })
        .collect();
    match after {
        None => events,
        Some(after) => {
            let start = events
                .iter()
                .position(|e| e.cursor == after)
                .expect("the cursor is one of the tenant's events");
            events[start + 1..].to_vec()
        }
    }
}

/// One block of a Server-Sent Events stream.
#[derive(Debug, Clone, PartialEq)]
enum Frame {
    Comment(String),
    Message {
        id: Option<String>,
        event: Option<String>,
        data: String,
    },
}

/// A feed message: its SSE id and name, and the parsed data.
#[derive(Debug, Clone)]
struct Received {
    id: String,
    event: String,
    data: Value,
}

impl Received {
    fn expected(&self) -> Expected {
        Expected {
            cursor: self.id.clone(),
            cloud_type: self.data["type"].as_str().unwrap_or_default().to_string(),
        }
    }
}

type Chunks = Pin<Box<dyn Stream<Item = Vec<u8>> + Send>>;

/// A minimal Server-Sent Events reader over any byte stream (spec: html.spec.whatwg.org,
/// "Parsing an event stream"; only what aipm sends: `\n` line ends, one `data:` per line).
struct SseStream {
    chunks: Chunks,
    buffer: Vec<u8>,
}

impl SseStream {
    /// `GET path` with `key`, and `Last-Event-ID` if given; asserts a 200 event stream.
    async fn open(app: &TestApp, key: &str, path: &str, last_event_id: Option<&str>) -> Self {
        Self::open_at(&app.address, key, path, last_event_id).await
    }

    /// [`SseStream::open`] on the server at `address`.
    async fn open_at(address: &str, key: &str, path: &str, last_event_id: Option<&str>) -> Self {
        // No overall timeout: the response lasts as long as the test reads it.
        let client = reqwest::Client::new();
        let mut request = client.get(format!("{address}{path}")).bearer_auth(key);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.expect("request");
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["content-type"], "text/event-stream");
        let chunks = response
            .bytes_stream()
            .map(|chunk| chunk.expect("stream chunk").to_vec());
        Self {
            chunks: Box::pin(chunks),
            buffer: Vec::new(),
        }
    }

    /// The body of a raw HTTP/1.0 response (which the server sends unchunked) on `socket`.
    async fn raw(mut socket: TcpStream) -> Self {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let byte = timeout(DEADLINE, socket.read_u8())
                .await
                .expect("response head")
                .expect("byte");
            head.push(byte);
        }
        let head = String::from_utf8(head).expect("head");
        assert!(
            head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
            "{head}"
        );
        let chunks = futures::stream::unfold(socket, |mut socket| async move {
            let mut chunk = vec![0u8; 64 * 1024];
            let n = socket.read(&mut chunk).await.ok().filter(|n| *n > 0)?;
            chunk.truncate(n);
            Some((chunk, socket))
        });
        Self {
            chunks: Box::pin(chunks),
            buffer: Vec::new(),
        }
    }

    /// The next block; `None` when the server closed the stream.
    async fn next_frame(&mut self) -> Option<Frame> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let block = String::from_utf8(block).expect("UTF-8 stream");
                return Some(parse_block(&block));
            }
            let chunk = timeout(DEADLINE, self.chunks.next())
                .await
                .expect("next chunk in time")?;
            self.buffer.extend_from_slice(&chunk);
        }
    }

    /// The next message, skipping keep-alive comments; panics if the stream ends or no
    /// message comes in time (keep-alive comments do not extend the deadline).
    async fn next_message(&mut self) -> Received {
        timeout(DEADLINE, self.next_message_unbounded())
            .await
            .expect("a message in time")
    }

    async fn next_message_unbounded(&mut self) -> Received {
        loop {
            match self.next_frame().await.expect("the stream continues") {
                Frame::Comment(_) => continue,
                Frame::Message { id, event, data } => {
                    return Received {
                        id: id.expect("every message has an id"),
                        event: event.expect("every message has an event name"),
                        data: serde_json::from_str(&data).expect("JSON data"),
                    }
                }
            }
        }
    }

    async fn take(&mut self, n: usize) -> Vec<Received> {
        let mut received = Vec::with_capacity(n);
        for _ in 0..n {
            received.push(self.next_message().await);
        }
        received
    }
}

fn parse_block(block: &str) -> Frame {
    let (mut id, mut event, mut data, mut comment) = (None, None, Vec::new(), None);
    for line in block.lines().filter(|line| !line.is_empty()) {
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value).to_string();
        match field {
            "" => comment = Some(value),
            "id" => id = Some(value),
            "event" => event = Some(value),
            "data" => data.push(value),
            other => panic!("unexpected field {other:?} in {block:?}"),
        }
    }
    match (id, event, data.is_empty(), comment) {
        (None, None, true, Some(comment)) => Frame::Comment(comment),
        (id, event, _, _) => Frame::Message {
            id,
            event,
            data: data.join("\n"),
        },
    }
}

/// Asserts that `received` are exactly `expected`, in order, all of `tenant`, each a
/// well-formed feed message.
fn assert_delivered(received: &[Received], expected: &[Expected], tenant: &str) {
    let actual: Vec<Expected> = received.iter().map(Received::expected).collect();
    assert_eq!(actual, expected);
    for message in received {
        assert_eq!(message.event, "cloudevent");
        assert_eq!(message.data["specversion"], "1.0");
        assert_eq!(message.data["aipmtenant"], tenant, "{}", message.data);
        assert_eq!(message.data["aipmcursor"], message.id.as_str());
    }
}

type WebSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

type WsRequest = tokio_tungstenite::tungstenite::handshake::client::Request;

fn ws_request(app: &TestApp, key: &str, query: &str) -> WsRequest {
    ws_request_at(&app.address, key, query)
}

fn ws_request_at(address: &str, key: &str, query: &str) -> WsRequest {
    let url = format!("{}/v1/events/ws{query}", address.replacen("http://", "ws://", 1));
    let mut request = url.into_client_request().expect("request");
    request
        .headers_mut()
        .insert("authorization", format!("Bearer {key}").parse().expect("header"));
    request
}

async fn ws_connect(app: &TestApp, key: &str, query: &str) -> WebSocket {
    let (socket, response) = timeout(
        DEADLINE,
        tokio_tungstenite::connect_async(ws_request(app, key, query)),
    )
    .await
    .expect("connect in time")
    .expect("WebSocket handshake");
    assert_eq!(response.status(), 101);
    socket
}

/// What a WebSocket subscriber can receive next.
#[derive(Debug)]
enum WsItem {
    Event(Value),
    Ping,
    Closed(Option<(CloseCode, String)>),
}

async fn ws_next<S>(socket: &mut WebSocketStream<S>) -> WsItem
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let message = timeout(DEADLINE, socket.next()).await.expect("message in time");
    match message {
        None => WsItem::Closed(None),
        Some(Err(error)) => panic!("WebSocket error: {error}"),
        Some(Ok(Message::Text(text))) => {
            WsItem::Event(serde_json::from_str(text.as_str()).expect("JSON text message"))
        }
        Some(Ok(Message::Ping(_))) => WsItem::Ping,
        Some(Ok(Message::Close(frame))) => WsItem::Closed(frame.map(|f| (f.code, f.reason.to_string()))),
        Some(Ok(other)) => panic!("unexpected message {other:?}"),
    }
}

/// The next event on `socket`, skipping pings (which do not extend the deadline).
async fn ws_event<S>(socket: &mut WebSocketStream<S>) -> Value
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let event = async {
        loop {
            match ws_next(socket).await {
                WsItem::Event(event) => return event,
                WsItem::Ping => continue,
                WsItem::Closed(frame) => panic!("closed early: {frame:?}"),
            }
        }
    };
    timeout(DEADLINE, event).await.expect("an event in time")
}

/// The next `n` events on `socket`.
async fn ws_take<S>(socket: &mut WebSocketStream<S>, n: usize) -> Vec<Value>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut events = Vec::with_capacity(n);
    for _ in 0..n {
        events.push(ws_event(socket).await);
    }
    events
}

fn ws_expected(events: &[Value]) -> Vec<Expected> {
    events
        .iter()
        .map(|e| Expected {
            cursor: e["aipmcursor"].as_str().expect("cursor").to_string(),
            cloud_type: e["type"].as_str().expect("type").to_string(),
        })
        .collect()
}

/// Creates a prompt with `key` and returns its id.
async fn create_prompt_as(app: &TestApp, key: &str, name: &str) -> String {
    let response = app.post("/v1/prompts", key, json!({ "name": name })).await;
    assert_eq!(response.status(), StatusCode::CREATED);
    let body: Value = response.json().await.expect("body");
    body["id"].as_str().expect("id").to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_from_the_start_has_exactly_the_tenants_events_in_order_then_live_ones() {
    let app = TestApp::spawn().await;
    let globex = app.key("globex", "admin").await;
    let viewer = app.key("acme", "viewer").await;
    let prompt = app.create_prompt("greeting").await;
    app.publish(&prompt, "Hello {{name}}").await;
    create_prompt_as(&app, &globex, "other-tenant").await;

    let mut stream = SseStream::open(&app, &viewer, "/v1/events/stream", None).await;
    let expected = tenant_events(app.pool(), "acme", None, None, None).await;
    assert!(
        expected.len() >= 5,
        "tenant, two keys, a prompt and a version: {expected:?}"
    );
    let history = stream.take(expected.len()).await;
    assert_delivered(&history, &expected, "acme");
    assert_eq!(history[0].data["type"], "aipm.tenant.TenantCreated");

    // Live: another tenant's event first, then ours. Had the other leaked, it would come next.
    create_prompt_as(&app, &globex, "other-live").await;
    let live = app.create_prompt("live").await;
    let next = stream.next_message().await;
    assert_eq!(next.data["type"], "aipm.prompt.PromptCreated");
    assert_eq!(next.data["aipmaggregateid"], live.as_str());
    assert_eq!(next.data["data"]["name"], "live");
    let all = tenant_events(app.pool(), "acme", None, None, None).await;
    assert_delivered(&[next], &all[expected.len()..], "acme");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filters_select_aggregate_and_event_types() {
    let app = TestApp::spawn().await;
    let first = app.create_prompt("first").await;
    app.publish(&first, "one").await;
    let second = app.create_prompt("second").await;
    let category = expect_status(
        app.post("/v1/categories", &app.admin_key, json!({ "name": "support" }))
            .await,
        StatusCode::CREATED,
    )
    .await;
    let category = category["id"].as_str().expect("category id").to_string();

    let types = ["PromptCreated", "PromptVersionPublished"];
    let mut prompts = SseStream::open(
        &app,
        &app.admin_key,
        "/v1/events/stream?aggregate_type=prompt&event_type=PromptCreated,%20PromptVersionPublished",
        None,
    )
    .await;
    let mut categories = SseStream::open(
        &app,
        &app.admin_key,
        "/v1/events/stream?aggregate_type=prompt_category",
        None,
    )
    .await;
    let expected = tenant_events(app.pool(), "acme", Some(&["prompt"]), Some(&types), None).await;
    assert_eq!(expected.len(), 3);
    assert_delivered(&prompts.take(3).await, &expected, "acme");
    let expected = tenant_events(app.pool(), "acme", Some(&["prompt_category"]), None, None).await;
    assert_eq!(expected.len(), 1);
    assert_delivered(&categories.take(1).await, &expected, "acme");

    // Live events that do not match are skipped: a tag, then a version that matches.
    let tagged = app
        .post(
            &format!("/v1/prompts/{second}/tags"),
            &app.admin_key,
            json!({ "tags": ["x"] }),
        )
        .await;
    assert_eq!(tagged.status(), StatusCode::OK);
    app.publish(&second, "two").await;
    let next = prompts.next_message().await;
    assert_eq!(next.data["type"], "aipm.prompt.PromptVersionPublished");
    assert_eq!(next.data["aipmaggregateid"], second.as_str());
    let renamed = app
        .patch(
            &format!("/v1/categories/{category}"),
            &app.admin_key,
            json!({ "name": "care" }),
        )
        .await;
    assert_eq!(renamed.status(), StatusCode::OK);
    assert_eq!(
        categories.next_message().await.data["type"],
        "aipm.prompt_category.CategoryRenamed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resuming_with_last_event_id_delivers_exactly_the_missed_events_then_live_ones() {
    let app = TestApp::spawn().await;
    let prompt = app.create_prompt("resumable").await;
    let mut first = SseStream::open(&app, &app.admin_key, "/v1/events/stream", None).await;
    let before = tenant_events(app.pool(), "acme", None, None, None).await;
    let mut received = first.take(before.len()).await;
    drop(first);
    let last_seen = received.last().expect("some events").id.clone();

    // Missed while disconnected.
    app.publish(&prompt, "v1").await;
    app.create_prompt("missed").await;
    let missed = tenant_events(app.pool(), "acme", None, None, Some(&last_seen)).await;
    assert_eq!(missed.len(), 2);

    // `from` points at the very start: Last-Event-ID must win over it.
    let mut second = SseStream::open(
        &app,
        &app.admin_key,
        "/v1/events/stream?from=0-0",
        Some(&last_seen),
    )
    .await;
    let resumed = second.take(missed.len()).await;
    assert_delivered(&resumed, &missed, "acme");
    received.extend(resumed);

    app.publish(&prompt, "v2").await;
    received.push(second.next_message().await);
    let all = tenant_events(app.pool(), "acme", None, None, None).await;
    // Across both connections: every event once, in order.
    assert_delivered(&received, &all, "acme");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_joining_during_concurrent_writes_miss_nothing_and_repeat_nothing() {
    let app = Arc::new(TestApp::spawn().await);
    // The tenant and the admin key, then per writer a prompt and its versions.
    let total = 2 + 3 * 13;
    let writers: Vec<_> = (0..3)
        .map(|writer| {
            let app = app.clone();
            tokio::spawn(async move {
                let prompt = app.create_prompt(&format!("writer-{writer}")).await;
                for version in 0..12 {
                    app.publish(&prompt, &format!("version {version}")).await;
                }
            })
        })
        .collect();
    // Subscribers join while the writers run, each at a different point of the log.
    let mut sse = Vec::new();
    let mut websockets = Vec::new();
    for _ in 0..3 {
        sse.push(SseStream::open(&app, &app.admin_key, "/v1/events/stream", None).await);
        websockets.push(ws_connect(&app, &app.admin_key, "").await);
        let next_join = (app.event_count().await + 6).min(total);
        let waited = timeout(DEADLINE, async {
            while app.event_count().await < next_join {
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "the writers stalled");
    }
    for writer in writers {
        writer.await.expect("writer");
    }
    let expected = tenant_events(app.pool(), "acme", None, None, None).await;
    assert_eq!(expected.len() as i64, total);
    for stream in &mut sse {
        assert_delivered(&stream.take(expected.len()).await, &expected, "acme");
    }
    for socket in &mut websockets {
        assert_eq!(ws_expected(&ws_take(socket, expected.len()).await), expected);
    }
    // Nothing extra is queued behind them: the next message of each is the next event.
    let marker = app.create_prompt("marker").await;
    for stream in &mut sse {
        assert_eq!(
            stream.next_message().await.data["aipmaggregateid"],
            marker.as_str()
        );
    }
    for socket in &mut websockets {
        assert_eq!(ws_event(socket).await["aipmaggregateid"], marker.as_str());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_from_a_cursor_gets_the_events_after_it_then_live_ones() {
    let app = TestApp::spawn().await;
    let prompt = app.create_prompt("socket").await;
    app.publish(&prompt, "one").await;
    app.publish(&prompt, "two").await;
    let all = tenant_events(app.pool(), "acme", None, None, None).await;
    let from = all[2].cursor.clone();
    let expected = tenant_events(app.pool(), "acme", None, None, Some(&from)).await;
    assert_eq!(expected.len(), all.len() - 3);

    let mut socket = ws_connect(&app, &app.admin_key, &format!("?from={from}")).await;
    assert_eq!(ws_expected(&ws_take(&mut socket, expected.len()).await), expected);

    let mut filtered = ws_connect(&app, &app.admin_key, "?event_type=PromptVersionPublished").await;
    let versions = tenant_events(app.pool(), "acme", None, Some(&["PromptVersionPublished"]), None).await;
    assert_eq!(
        ws_expected(&ws_take(&mut filtered, versions.len()).await),
        versions
    );

    app.publish(&prompt, "three").await;
    let live = ws_event(&mut socket).await;
    assert_eq!(live["type"], "aipm.prompt.PromptVersionPublished");
    assert_eq!(live["data"]["version"], 3);
    assert_eq!(ws_event(&mut filtered).await["aipmcursor"], live["aipmcursor"]);
    socket.close(None).await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_streams_get_keep_alive_comments_and_pings() {
    let mut settings = api::Settings::default();
    settings.feed.heartbeat_ms = 100;
    let app = TestApp::spawn_with(settings).await;
    let mut stream = SseStream::open(
        &app,
        &app.admin_key,
        "/v1/events/stream?event_type=NeverHappens",
        None,
    )
    .await;
    assert_eq!(
        stream.next_frame().await,
        Some(Frame::Comment("keep-alive".into()))
    );
    let mut socket = ws_connect(&app, &app.admin_key, "?event_type=NeverHappens").await;
    assert!(matches!(ws_next(&mut socket).await, WsItem::Ping));
}

/// A 100 kB payload, so that a few dozen events fill any socket buffer.
const PROBE_INSERT: &str = "insert into events
    (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, tenant_id)
    values ('FeedProbe', 'probe', $1, 'Probed', '1.0.0',
            jsonb_build_object('Probed', jsonb_build_object('n', $1, 'blob', repeat('x', 100000))),
            '{}', 'acme')";

/// A client socket with a small receive buffer, so that a client that stops reading stops
/// the server's writes soon.
async fn small_socket(app: &TestApp) -> TcpStream {
    let address = app
        .address
        .trim_start_matches("http://")
        .parse()
        .expect("address");
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("receive buffer");
    socket.connect(address).await.expect("connect")
}

/// An SSE stream on a [`small_socket`], over HTTP/1.0 so that the body comes unchunked.
async fn slow_sse_stream(app: &TestApp, path: &str) -> SseStream {
    let mut socket = small_socket(app).await;
    let request = format!(
        "GET {path} HTTP/1.0\r\nAuthorization: Bearer {}\r\nAccept: text/event-stream\r\n\r\n",
        app.admin_key
    );
    socket.write_all(request.as_bytes()).await.expect("request");
    SseStream::raw(socket).await
}

/// Inserts probe events `numbers` of tenant acme straight into the log, and wakes the
/// server's feed as an append through it would.
async fn insert_probes(pool: &PgPool, numbers: std::ops::RangeInclusive<i64>) {
    for n in numbers {
        sqlx::query(PROBE_INSERT)
            .bind(n)
            .execute(pool)
            .await
            .expect("insert");
    }
    wake_feed(pool).await;
}

/// Wakes the server's feed as an append through the server would.
async fn wake_feed(pool: &PgPool) {
    sqlx::query("select pg_notify('aipm_events', '')")
        .execute(pool)
        .await
        .expect("notify");
}

/// A server whose feed holds only `events` events for subscribers that are behind.
async fn app_with_feed_buffer(events: usize) -> TestApp {
    let mut settings = api::Settings::default();
    settings.feed.buffer = events;
    TestApp::spawn_with(settings).await
}

/// Inserts probes `numbers` of tenant acme in one transaction, so that the feed reads and
/// broadcasts them together, and wakes the server's feed.
async fn insert_probe_burst(pool: &PgPool, numbers: std::ops::RangeInclusive<i64>) {
    sqlx::query(
        "insert into events
             (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, tenant_id)
         select 'FeedProbe', 'probe', n, 'Probed', '1.0.0',
                jsonb_build_object('Probed', jsonb_build_object('n', n, 'blob', repeat('x', 100000))),
                '{}', 'acme'
         from generate_series($1::bigint, $2::bigint) as n",
    )
    .bind(numbers.start())
    .bind(numbers.end())
    .execute(pool)
    .await
    .expect("insert");
    wake_feed(pool).await;
}

/// Inserts probes `numbers` one at a time, each once `follower` has received the one
/// before: a subscriber that keeps up never falls behind, whatever the buffer.
async fn insert_probes_in_step(
    pool: &PgPool,
    follower: &mut SseStream,
    numbers: std::ops::RangeInclusive<i64>,
) {
    for n in numbers {
        insert_probes(pool, n..=n).await;
        assert_eq!(follower.next_message().await.data["data"]["n"], n);
    }
}

/// Asserts that nothing else is queued on `stream`: a new event comes next.
async fn assert_next_is_a_new_event(app: &TestApp, stream: &mut SseStream) {
    let marker = app
        .create_prompt(&format!("marker-{}", uuid::Uuid::new_v4()))
        .await;
    assert_eq!(
        stream.next_message().await.data["aipmaggregateid"],
        marker.as_str()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_written_while_a_subscriber_is_still_sending_history_follow_it() {
    let app = TestApp::spawn().await;
    // 10 MB of history, read by the server in one page (of 128 events): more than the sockets between
    // server and client hold, so the server is still sending that page when the client
    // stops reading after its first event.
    insert_probes(app.pool(), 1..=100).await;
    let mut stream = slow_sse_stream(&app, "/v1/events/stream").await;
    let mut received = stream.take(1).await;

    // Written after the server read that history from the database, before it sent it.
    for n in 0..3 {
        app.create_prompt(&format!("meanwhile-{n}")).await;
    }
    let all = tenant_events(app.pool(), "acme", None, None, None).await;
    assert_eq!(all.len(), 2 + 100 + 3);
    received.extend(stream.take(all.len() - 1).await);
    assert_delivered(&received, &all, "acme");
    assert_next_is_a_new_event(&app, &mut stream).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_overflowing_the_buffer_while_sending_history_catches_up_from_the_log() {
    let app = app_with_feed_buffer(8).await;
    insert_probes(app.pool(), 1..=100).await;
    let mut fast = SseStream::open(&app, &app.admin_key, "/v1/events/stream", None).await;
    fast.take(102).await;
    // Still sending its one history page (10 MB) when it stops reading after one event.
    let mut replaying = slow_sse_stream(&app, "/v1/events/stream").await;
    let mut received = replaying.take(1).await;

    // Three times the buffer goes live meanwhile, one event at a time so that the fast
    // subscriber keeps up: the replaying one has no live event yet, so this is not its
    // fault, and it must not be cut off for it.
    insert_probes_in_step(app.pool(), &mut fast, 101..=124).await;
    let all = tenant_events(app.pool(), "acme", None, None, None).await;
    received.extend(replaying.take(all.len() - 1).await);
    assert_delivered(&received, &all, "acme");
    assert_next_is_a_new_event(&app, &mut replaying).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_larger_than_the_buffer_reaches_subscribers_that_keep_reading() {
    let app = app_with_feed_buffer(8).await;
    let start = tenant_events(app.pool(), "acme", None, None, None).await;
    let mut sse = SseStream::open(&app, &app.admin_key, "/v1/events/stream", None).await;
    let mut received = sse.take(start.len()).await;
    let mut ws = ws_connect(&app, &app.admin_key, "").await;
    let mut ws_received = ws_take(&mut ws, start.len()).await;
    // Both are live: they have had an event from the broadcast.
    app.create_prompt("before-the-burst").await;
    received.extend(sse.take(1).await);
    ws_received.extend(ws_take(&mut ws, 1).await);

    // Twelve times the buffer, committed together: the feed broadcasts them faster than
    // any subscriber takes them, so both fall behind and catch up from the log.
    insert_probe_burst(app.pool(), 1..=100).await;
    let all = tenant_events(app.pool(), "acme", None, None, None).await;
    assert_eq!(all.len(), start.len() + 1 + 100);
    received.extend(sse.take(all.len() - received.len()).await);
    assert_delivered(&received, &all, "acme");
    assert_next_is_a_new_event(&app, &mut sse).await;
    // The WebSocket was not read meanwhile: it fell further behind, not too far.
    ws_received.extend(ws_take(&mut ws, all.len() - ws_received.len()).await);
    assert_eq!(ws_expected(&ws_received), all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_falling_behind_again_and_again_miss_nothing_and_repeat_nothing() {
    // A buffer of two events: concurrent writers' batches overflow it over and over, so
    // subscribers that keep reading fall behind and catch up from the log many times.
    let app = Arc::new(app_with_feed_buffer(2).await);
    let writers = 4;
    let versions = 14;
    let total = tenant_events(app.pool(), "acme", None, None, None).await.len() + writers * (1 + versions);
    let mut sse = Vec::new();
    for _ in 0..2 {
        let stream = SseStream::open(&app, &app.admin_key, "/v1/events/stream", None).await;
        sse.push(tokio::spawn(async move {
            let mut stream = stream;
            stream.take(total).await
        }));
    }
    let mut socket = ws_connect(&app, &app.admin_key, "").await;
    let websocket = tokio::spawn(async move { ws_take(&mut socket, total).await });

    let writing: Vec<_> = (0..writers)
        .map(|writer| {
            let app = app.clone();
            tokio::spawn(async move {
                let prompt = app.create_prompt(&format!("writer-{writer}")).await;
                for version in 0..versions {
                    app.publish(&prompt, &format!("version {version}")).await;
                }
            })
        })
        .collect();
    for writer in writing {
        writer.await.expect("writer");
    }
    let expected = tenant_events(app.pool(), "acme", None, None, None).await;
    assert_eq!(expected.len(), total);
    for reader in sse {
        let received = timeout(DEADLINE, reader)
            .await
            .expect("SSE in time")
            .expect("reader");
        assert_delivered(&received, &expected, "acme");
    }
    let received = timeout(DEADLINE, websocket)
        .await
        .expect("WebSocket in time")
        .expect("reader");
    assert_eq!(ws_expected(&received), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_disconnected_with_the_reason_and_resumes_where_it_stopped() {
    const MAX_LAG: Duration = Duration::from_millis(500);
    let mut settings = api::Settings::default();
    settings.feed.buffer = 8;
    settings.feed.max_lag_ms = MAX_LAG.as_millis() as u64;
    let app = TestApp::spawn_with(settings).await;
    let start = tenant_events(app.pool(), "acme", None, None, None).await;

    // Two consumers that stop reading after the history, one per protocol, and one that
    // keeps up.
    let mut slow_sse = slow_sse_stream(&app, "/v1/events/stream").await;
    let mut received = slow_sse.take(start.len()).await;
    let (mut slow_ws, _) =
        tokio_tungstenite::client_async(ws_request(&app, &app.admin_key, ""), small_socket(&app).await)
            .await
            .expect("WebSocket handshake");
    let mut ws_received = ws_take(&mut slow_ws, start.len()).await;
    let mut fast = SseStream::open(&app, &app.admin_key, "/v1/events/stream", None).await;
    fast.take(start.len()).await;

    // 150 events of 100 kB, each written once the fast consumer has had the previous one:
    // it never falls behind, while the slow ones are 15 MB behind, far past any buffer.
    insert_probes_in_step(app.pool(), &mut fast, 1..=150).await;
    let all = tenant_events(app.pool(), "acme", None, None, None).await;
    // By the time they read again, what they would catch up on is older than the lag allowed.
    tokio::time::sleep(MAX_LAG * 2).await;

    // SSE: a prefix of the log, then a problem naming the cursor to resume from, then the end.
    let problem = loop {
        match slow_sse
            .next_frame()
            .await
            .expect("an error message before the end")
        {
            Frame::Comment(_) => continue,
            Frame::Message { id, event, data } if event.as_deref() == Some("error") => {
                let problem: Value = serde_json::from_str(&data).expect("problem JSON");
                assert_eq!(id.as_deref(), problem["resume_from"].as_str());
                break problem;
            }
            Frame::Message { id, event, data } => received.push(Received {
                id: id.expect("id"),
                event: event.expect("event"),
                data: serde_json::from_str(&data).expect("JSON"),
            }),
        }
    };
    assert_eq!(
        slow_sse.next_frame().await,
        None,
        "the stream ends after the problem"
    );
    assert_eq!(problem["type"], "/problems/consumer-too-slow");
    assert!(problem["detail"].as_str().expect("detail").contains("resume"));
    eprintln!("SSE got {} of {}", received.len(), all.len());
    assert!(received.len() < all.len(), "the slow consumer was not cut off");
    assert_delivered(&received, &all[..received.len()], "acme");
    let resume_from = received.last().expect("events").id.clone();
    assert_eq!(problem["resume_from"], resume_from.as_str());

    // Resuming from that cursor delivers exactly the rest.
    let mut resumed = SseStream::open(&app, &app.admin_key, "/v1/events/stream", Some(&resume_from)).await;
    received.extend(resumed.take(all.len() - received.len()).await);
    assert_delivered(&received, &all, "acme");

    // WebSocket: a prefix, then a close frame with the policy code and where to resume.
    let close = loop {
        match ws_next(&mut slow_ws).await {
            WsItem::Event(event) => ws_received.push(event),
            WsItem::Ping => continue,
            WsItem::Closed(frame) => break frame.expect("a close frame with a reason"),
        }
    };
    eprintln!("WS got {} of {}", ws_received.len(), all.len());
    assert!(
        ws_received.len() < all.len(),
        "the slow WebSocket consumer was not cut off"
    );
    assert_eq!(ws_expected(&ws_received), all[..ws_received.len()]);
    let ws_resume_from = ws_received.last().expect("events")["aipmcursor"]
        .as_str()
        .expect("cursor")
        .to_string();
    assert_eq!(close.0, CloseCode::Policy);
    assert_eq!(
        close.1,
        format!("consumer-too-slow; resume from {ws_resume_from}")
    );
    let mut resumed = ws_connect(&app, &app.admin_key, &format!("?from={ws_resume_from}")).await;
    ws_received.extend(ws_take(&mut resumed, all.len() - ws_received.len()).await);
    assert_eq!(ws_expected(&ws_received), all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_problems_before_any_stream_starts() {
    let app = TestApp::spawn().await;
    let ingest = app.key("acme", "ingest").await;
    let cases: [(&str, Option<&str>, StatusCode, &str); 7] = [
        (
            "/v1/events/stream?from=yesterday",
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed",
        ),
        (
            "/v1/events/stream?from=-1-2",
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed",
        ),
        (
            "/v1/events/stream",
            Some("12"),
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed",
        ),
        (
            "/v1/events/stream?aggregate_type=prompt,,x",
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed",
        ),
        (
            "/v1/events/stream?event_type=Prompt%20Created",
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed",
        ),
        (
            "/v1/events/stream?tenant=globex",
            None,
            StatusCode::UNPROCESSABLE_ENTITY,
            "validation-failed",
        ),
        (
            "/v1/events/ws",
            None,
            StatusCode::BAD_REQUEST,
            "malformed-request",
        ),
    ];
    for (path, last_event_id, status, slug) in cases {
        let mut request = app.request(reqwest::Method::GET, path, &app.admin_key);
        if let Some(id) = last_event_id {
            request = request.header("Last-Event-ID", id);
        }
        let response = request.send().await.expect("request");
        let problem = expect_problem(response, status, slug).await;
        assert!(!problem.to_string().contains("cloudevent"), "{path}: {problem}");
    }
    let anonymous = app
        .client
        .get(format!("{}/v1/events/stream", app.address))
        .send()
        .await
        .expect("request");
    expect_problem(anonymous, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let forbidden = app.get("/v1/events/stream", &ingest).await;
    expect_problem(forbidden, StatusCode::FORBIDDEN, "forbidden").await;

    // A WebSocket handshake with a bad cursor is refused with the problem, not upgraded.
    let refused = tokio_tungstenite::connect_async(ws_request(&app, &app.admin_key, "?from=nope")).await;
    match refused {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 422);
            assert_eq!(response.headers()["content-type"], "application/problem+json");
            let body: Value =
                serde_json::from_slice(response.body().as_deref().expect("body")).expect("JSON");
            assert_eq!(body["type"], "/problems/validation-failed");
            assert_eq!(body["errors"][0]["field"], "from");
        }
        other => panic!("expected a refused handshake, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shutting_down_server_ends_its_streams_instead_of_waiting_for_them() {
    let db = TestDatabase::create().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = format!("http://{}", listener.local_addr().expect("address"));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let pool = db.pool.clone();
    let server = tokio::spawn(async move {
        let shutdown = async {
            let _ = stopped.await;
        };
        api::app::serve_until(api::Settings::default(), pool, listener, shutdown).await
    });
    let (_, key) = api::cli::create_key(&db.pool, "acme", "admin", "shutdown")
        .await
        .expect("key");
    let mut stream = SseStream::open_at(&address, &key, "/v1/events/stream", None).await;
    let history = stream.take(2).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(ws_request_at(&address, &key, ""))
        .await
        .expect("WebSocket handshake");
    assert_eq!(ws_event(&mut socket).await["type"], "aipm.tenant.TenantCreated");
    assert_eq!(ws_event(&mut socket).await["type"], "aipm.api_key.ApiKeyIssued");

    stop.send(()).expect("server running");
    let ended = timeout(DEADLINE, async {
        loop {
            match stream.next_frame().await {
                None => break,
                Some(Frame::Comment(_)) => continue,
                Some(other) => panic!("unexpected {other:?}"),
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the event stream did not end");
    match ws_next(&mut socket).await {
        WsItem::Closed(Some((code, reason))) => {
            assert_eq!(code, CloseCode::Away);
            assert_eq!(
                reason,
                format!("server shutting down; resume from {}", history[1].id)
            );
        }
        other => panic!("expected a close frame, got {other:?}"),
    }
    let finished = timeout(DEADLINE, server).await.expect("the server stops in time");
    finished.expect("server task").expect("server");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_transaction_in_another_database_holds_no_feed_back() {
    let app = TestApp::spawn().await;
    let _other = transaction_in_another_database().await;
    let mut stream = SseStream::open(&app, &app.admin_key, "/v1/events/stream", None).await;
    let mut received = Vec::new();
    // Written while the other transaction is open: history, then live.
    app.create_prompt("history").await;
    let history = tenant_events(app.pool(), "acme", None, None, None).await;
    received.extend(stream.take(history.len()).await);
    app.create_prompt("live").await;
    let all = tenant_events(app.pool(), "acme", None, None, None).await;
    received.extend(stream.take(all.len() - history.len()).await);
    assert_delivered(&received, &all, "acme");
}
