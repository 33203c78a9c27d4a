//! NATS for the tests: a stream and subject prefix of each test's own on the shared server,
//! a private `nats-server` that a test may kill and restart, and reading a stream back.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream::{self, consumer::push};
use futures::StreamExt;
use projections::relay::RelaySettings;
use serde_json::Value;
use uuid::Uuid;

/// The shared NATS server the tests publish to.
pub fn nats_url() -> String {
    std::env::var("AIPM_TEST_NATS").unwrap_or_else(|_| "nats://127.0.0.1:4222".into())
}

/// Feed settings on `nats_url` with a stream (`AIPM_TEST_<uuid>`) and subject prefix
/// (`aipmtest.<uuid>`) that no other test uses.
pub fn unique_relay_settings(nats_url: &str) -> RelaySettings {
    let id = Uuid::new_v4().simple().to_string();
    RelaySettings {
        nats_url: nats_url.to_string(),
        stream: format!("AIPM_TEST_{}", id.to_uppercase()),
        subject_prefix: format!("aipmtest.{id}"),
    }
}

async fn connect(url: &str) -> Result<async_nats::Client, async_nats::ConnectError> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(2))
        .connect(url)
        .await
}

/// Deletes the feed's stream; a stream or server already gone is not an error.
pub async fn delete_stream(settings: &RelaySettings) {
    delete_stream_named(&settings.nats_url, &settings.stream).await;
}

/// Deletes the stream `stream` of the NATS server at `nats_url`, if both are there.
pub async fn delete_stream_named(nats_url: &str, stream: &str) {
    if let Ok(client) = connect(nats_url).await {
        let _ = jetstream::new(client).delete_stream(stream).await;
    }
}

/// [`delete_stream_named`] from synchronous code (a `Drop`), on a thread of its own.
pub fn delete_stream_blocking(nats_url: &str, stream: &str) {
    let (nats_url, stream) = (nats_url.to_string(), stream.to_string());
    let _ = std::thread::spawn(move || {
        let Ok(runtime) = tokio::runtime::Builder::new_current_thread().enable_all().build() else {
            return;
        };
        runtime.block_on(delete_stream_named(&nats_url, &stream));
    })
    .join();
}

/// Anchoring to a stream and subject prefix of the test's own, signed with a fresh key
/// made as README says (`openssl genpkey -algorithm ed25519`).
pub fn unique_anchor_settings(nats_url: &str) -> projections::audit::anchor::AnchorSettings {
    let unique = Uuid::new_v4().simple().to_string();
    let key = std::env::temp_dir().join(format!("aipm-test-anchor-key-{unique}.pem"));
    let key = key.to_string_lossy().to_string();
    crate::postgres::run_client_program("openssl", &["genpkey", "-algorithm", "ed25519", "-out", &key]);
    let signing = projections::audit::anchor::AnchorKey::signing_from_pem_file(&key).expect("the key");
    let _ = std::fs::remove_file(&key);
    projections::audit::anchor::AnchorSettings {
        nats_url: nats_url.to_string(),
        stream: format!("AIPM_TEST_ANCHORS_{unique}"),
        subject_prefix: format!("aipmtest.anchors.{unique}"),
        key: signing,
        interval: Duration::from_secs(3600),
    }
}

/// One message of the stream as a subscriber receives it.
#[derive(Debug, Clone)]
pub struct FeedMessage {
    pub stream_sequence: u64,
    pub subject: String,
    /// The last value of each header.
    pub headers: HashMap<String, String>,
    pub body: Value,
}

/// Every message of the feed's stream, in stream order, read with an ordered push consumer.
pub async fn read_stream(settings: &RelaySettings) -> Vec<FeedMessage> {
    let client = connect(&settings.nats_url).await.expect("connect to NATS");
    let context = jetstream::new(client.clone());
    let mut stream = context.get_stream(&settings.stream).await.expect("the stream");
    let expected = stream.info().await.expect("stream info").state.messages as usize;
    let consumer = stream
        .create_consumer(push::OrderedConfig {
            deliver_subject: client.new_inbox(),
            ..Default::default()
        })
        .await
        .expect("ordered consumer");
    let mut messages = consumer.messages().await.expect("consumer messages");
    let mut read = Vec::with_capacity(expected);
    while read.len() < expected {
        let message = tokio::time::timeout(Duration::from_secs(10), messages.next())
            .await
            .expect("the stream's messages arrive")
            .expect("the consumer is open")
            .expect("a message");
        let stream_sequence = message.info().expect("JetStream metadata").stream_sequence;
        let headers = message
            .headers
            .iter()
            .flat_map(|headers| headers.iter())
            .filter_map(|(name, values)| {
                let value = values.last()?;
                Some((name.to_string(), value.as_str().to_string()))
            })
            .collect();
        read.push(FeedMessage {
            stream_sequence,
            subject: message.subject.to_string(),
            headers,
            body: serde_json::from_slice(&message.payload).unwrap_or(Value::Null),
        });
    }
    read
}

/// A `nats-server` with JetStream of a test's own, on a free port with its own store, that
/// the test may kill and start again on the same port and store.
pub struct NatsServer {
    pub port: u16,
    store: PathBuf,
    process: Option<Child>,
}

impl NatsServer {
    /// Picks a free port and a store directory without starting the server.
    pub fn reserve() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port")
            .port();
        let store = std::env::temp_dir().join(format!("aipm-test-nats-{}", Uuid::new_v4().simple()));
        std::fs::create_dir_all(&store).expect("store directory");
        Self {
            port,
            store,
            process: None,
        }
    }

    /// A started server.
    pub async fn start() -> Self {
        let mut server = Self::reserve();
        server.start_again().await;
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Starts the server (again) and waits until it accepts connections.
    pub async fn start_again(&mut self) {
        assert!(self.process.is_none(), "the server is already running");
        let binary =
            std::env::var("AIPM_TEST_NATS_SERVER").unwrap_or_else(|_| "/usr/sbin/nats-server".into());
        let process = Command::new(binary)
            .args(["-a", "127.0.0.1", "-p", &self.port.to_string(), "-js", "-sd"])
            .arg(&self.store)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        self.process = Some(process);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            // The server enables JetStream, recovering its store, before it listens.
            if connect(&self.url()).await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "nats-server did not start on port {}",
                self.port
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Kills the server at once (SIGKILL), as a crash would.
    pub fn kill(&mut self) {
        if let Some(mut process) = self.process.take() {
            let _ = process.kill();
            let _ = process.wait();
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.store);
    }
}
