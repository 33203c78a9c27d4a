//! `aipm-load`: load generator and benchmarks for aipm.
//!
//! - `http`: closed-loop HTTP load (N concurrent clients, each sending its next request as
//!   soon as the previous one answered) against a running server, per client count.
//! - `overload`: open-loop load at fixed arrival rates beyond capacity: what is admitted,
//!   what is shed, the server's memory, and how it recovers.
//! - `hot-prompt`: whether publishing a version costs more once a prompt has a long history.
//! - `seed-events`: bulk-inserts synthetic prompt events straight into the event log.
//! - `rebuild`: times rebuilding a read model from the event log.
//! - `relay`: the NATS feed: events/s the relay publishes from a seeded log, and
//!   commit→subscriber latency while commands run at a steady rate, each against raw
//!   JetStream publishing from this tool as a baseline.
//! - `fake-provider`: a fake LLM provider answering after a fixed latency, for the model
//!   gateway's benchmark.
//! - `gateway`: prompt runs through aipm against the same chat completion sent straight to
//!   the provider: what the gateway adds to a call.
//!
//! Every failure is one line on stderr and a non-zero exit code.

use std::fs::OpenOptions;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use clap::{Args, Parser, Subcommand, ValueEnum};
use commands::CommandMetadata;
use cqrs_es::{Aggregate, DomainEvent};
use domain::prompt::{ModelName, Prompt, PromptEvent, Template};
use integration_tests::fake_provider::FakeProvider;
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;
use uuid::Uuid;

// The allocator `aipm` runs with, so that what this times in process (a rebuild, the relay)
// costs what it costs in the server.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Result<T, E = BoxError> = std::result::Result<T, E>;

const USER_AGENT: &str = concat!("aipm-load/", env!("CARGO_PKG_VERSION"));

#[derive(Debug, Parser)]
#[command(name = "aipm-load", version, about = "Load generator and benchmarks for aipm")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Concurrent HTTP load against a running server, one measurement per client count.
    ///
    /// Each client loops over one shared keep-alive connection pool, sending its next request
    /// when the previous one answered. `requests`, `req/s` and the latencies cover answered
    /// requests (any status) started within the measured window; `non-2xx` counts those
    /// answered with another status, `errors` the requests that got no answer at all.
    Http(HttpArgs),
    /// Open-loop load at fixed arrival rates (requests are sent on schedule whether or not
    /// earlier ones were answered, as independent clients would), for each rate: a short
    /// closed-loop measurement before, the overload, and the same measurement after.
    Overload(OverloadArgs),
    /// What authenticating a request and charging its rate limit cost, in isolation: the
    /// server's key lookup against the database, and the in-memory rate limiter.
    AuthCost(AuthCostArgs),
    /// Publish latency on a prompt with a long history versus a fresh prompt.
    HotPrompt(HotPromptArgs),
    /// Bulk-insert synthetic prompt events into the event log of an aipm database.
    SeedEvents(SeedArgs),
    /// Time rebuilding a projection from the event log.
    Rebuild(RebuildArgs),
    /// The NATS feed: relay throughput and commit→subscriber latency, with baselines.
    ///
    /// Throughput: the log of `--database-url` is seeded up to `--events` events, then a
    /// relay in this process publishes all of it to a new stream (timed until its
    /// checkpoint reaches the end); the baseline publishes the same CloudEvents, encoded
    /// beforehand, with as many acks in flight as the relay's batch. Latency (with `--url`):
    /// commands at `--rate` against a running server whose feed goes to `--stream`; an
    /// ordered push consumer measures receive time minus the event's `recorded_at`; the
    /// baseline publishes at the same rate and measures receive time minus send time.
    Relay(RelayArgs),
    /// Delete a JetStream stream (one a benchmark made), if it exists.
    DeleteStream(DeleteStreamArgs),
    /// A bulk job over many prompts, and what it does to ordinary commands meanwhile.
    ///
    /// `--prompts` prompts are created with a tag of this run (not measured); then
    /// `create-prompts` is measured with `--clients` closed-loop clients for `--duration`
    /// without a job (the baseline), and again while a job tags every one of those prompts.
    /// Reports the job's items/s (items over the time from its acceptance to its end) and
    /// both latency distributions.
    Bulk(BulkArgs),
    /// Usage ingestion against PostgreSQL's own COPY of the same rows, in one run.
    ///
    /// The ceiling: `--clients` connections each COPY batches of `--batch` rows, as CSV, into
    /// a plain table shaped like `usage_record` in the server's database, for `--duration`.
    /// Then `--clients` clients each POST batches of `--batch` records (new ids every time) to
    /// `/v1/usage` for `--duration`. Reports records/s of both and their ratio.
    Ingest(IngestArgs),
    /// A fake LLM provider (OpenAI-compatible and Anthropic) for the model gateway's
    /// benchmark: prints its base URL on stdout as one line, then serves until killed.
    ///
    /// OpenAI-compatible requests go to `{url}/v1/chat/completions`, Anthropic ones to
    /// `{url}/v1/messages`. Each answer echoes the last user message after `--latency-ms`.
    FakeProvider(FakeProviderArgs),
    /// What the model gateway adds to a call: prompt runs through aipm against the same chat
    /// completion sent straight to the provider, measured in the same run.
    ///
    /// Each run measures both sides with `--clients` closed-loop clients for `--duration`
    /// after `--warmup` (the side going first alternates between runs): `POST
    /// /v1/prompts/{prompt}/run` with `--variables`, and `POST {provider-url}/chat/completions`
    /// with the model and `--message` as the user's message, which must be what the version
    /// renders to (checked before measuring: both answers must be the same). The overhead is
    /// aipm's latency minus the direct one, at p50 and p99. A non-2xx answer or a request
    /// without an answer makes its run invalid; the command then fails once all runs are
    /// reported.
    Gateway(GatewayArgs),
}

#[derive(Debug, Args)]
struct GatewayArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The prompt to run (its `production` version, whose model is served by the provider).
    #[arg(long)]
    prompt: Uuid,
    /// The template's variables, as a JSON object.
    #[arg(long, default_value = "{}")]
    variables: String,
    /// The provider's OpenAI-compatible base URL, as registered with aipm (ending in `/v1`).
    #[arg(long)]
    provider_url: String,
    /// The provider's API key, sent as `Authorization: Bearer`.
    #[arg(long, env = "AIPM_PROVIDER_KEY", hide_env_values = true)]
    provider_key: String,
    /// The provider's own id of the version's model.
    #[arg(long)]
    model_id: String,
    /// The user message the direct requests send: the version's template filled with
    /// `--variables`.
    #[arg(long)]
    message: String,
    /// Runs name this many features, client `i` the feature `feature-{i mod N}` (0: none).
    /// A call's usage is added to one roll-up row per day, model, prompt, version, feature and
    /// key, so spreading the runs over features spreads their writes over as many rows.
    #[arg(long, default_value_t = 0)]
    features: usize,
    /// Concurrent clients of each side.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Measured seconds of each side per run.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unmeasured seconds of load before each side's measurement.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Runs, each measuring both sides.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// Also append each run as a JSON line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct FakeProviderArgs {
    /// Port on 127.0.0.1 (0: any free port).
    #[arg(long, default_value_t = 0)]
    port: u16,
    /// Delay before every answer (before the first chunk of a stream).
    #[arg(long, default_value_t = 0)]
    latency_ms: u64,
    /// The only API key accepted (as `Authorization: Bearer` or `x-api-key`).
    #[arg(long, default_value = "fake-provider-key")]
    api_key: String,
}

#[derive(Debug, Args)]
struct IngestArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The server's database, for the COPY ceiling.
    #[arg(long)]
    database_url: String,
    /// Concurrent clients (and COPY connections).
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Records per request (at most 10,000).
    #[arg(long, default_value_t = 10_000)]
    batch: usize,
    /// Measured seconds of each side.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Also append the result as a JSON line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct BulkArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Prompts the job tags (at most 10,000, the most one job takes).
    #[arg(long, default_value_t = 10_000)]
    prompts: usize,
    /// Closed-loop clients sending ordinary commands.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Measured seconds of ordinary commands, without the job and with it.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Also append the result as a JSON line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct DeleteStreamArgs {
    /// NATS server with JetStream.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// The stream's name.
    #[arg(long)]
    stream: String,
}

#[derive(Debug, Args)]
struct ServerArgs {
    /// Base URL of the aipm server.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// API key with write permission (`aipm keys create --role admin ...`).
    #[arg(long, env = "AIPM_KEY", hide_env_values = true)]
    key: String,
}

/// The flag the `evaluate-flag` scenario sets up and evaluates.
const BENCH_FLAG: &str = "bench.rollout";

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    /// POST /v1/prompts with a unique name per request.
    CreatePrompts,
    /// POST /v1/prompts/{id}/versions, each client to its own prompt.
    PublishVersions,
    /// GET /v1/prompts/{id}, each client its own prompt: a small authenticated read.
    ReadPrompt,
    /// GET /healthz without a key: the same HTTP round trip without authentication,
    /// rate limiting or a query.
    Healthz,
    /// GET /v1/flags/{key}/evaluate for a new subject each request: a read from memory.
    EvaluateFlag,
    /// GET /v1/prompts/{id}/resolve?label=production, each client its own labelled prompt:
    /// a read from memory.
    ResolveLabel,
    /// GET /v1/budgets/check for one of eight features, with budgets over the tenant and a
    /// feature: a read from memory.
    CheckBudget,
    /// POST /v1/experiments/{id}/assign for a new subject each request, in a running
    /// experiment of three variants: a read from memory.
    AssignExperiment,
}

impl Scenario {
    fn name(self) -> &'static str {
        match self {
            Scenario::CreatePrompts => "create-prompts",
            Scenario::PublishVersions => "publish-versions",
            Scenario::ReadPrompt => "read-prompt",
            Scenario::Healthz => "healthz",
            Scenario::EvaluateFlag => "evaluate-flag",
            Scenario::ResolveLabel => "resolve-label",
            Scenario::CheckBudget => "check-budget",
            Scenario::AssignExperiment => "assign-experiment",
        }
    }

    /// Whether each client works on a prompt of its own, created before measuring.
    fn needs_prompt(self) -> bool {
        matches!(
            self,
            Scenario::PublishVersions | Scenario::ReadPrompt | Scenario::ResolveLabel
        )
    }

    /// The `n`th request of a client (`prefix` makes created names unique).
    fn request(self, api: &Api, prompt: Option<&str>, prefix: &str, n: u64) -> reqwest::RequestBuilder {
        let authorized = |builder: reqwest::RequestBuilder| builder.bearer_auth(&*api.key);
        match (self, prompt) {
            (Scenario::PublishVersions, Some(prompt)) => authorized(
                api.client
                    .post(api.url(&format!("/v1/prompts/{prompt}/versions")))
                    .json(&json!({ "template": format!("Hello {{{{name}}}} #{n}") })),
            ),
            (Scenario::ReadPrompt, Some(prompt)) => {
                authorized(api.client.get(api.url(&format!("/v1/prompts/{prompt}"))))
            }
            (Scenario::Healthz, _) => api.client.get(api.url("/healthz")),
            (Scenario::ResolveLabel, Some(prompt)) => authorized(
                api.client
                    .get(api.url(&format!("/v1/prompts/{prompt}/resolve?label=production"))),
            ),
            (Scenario::AssignExperiment, Some(experiment)) => authorized(
                api.client
                    .post(api.url(&format!("/v1/experiments/{experiment}/assign")))
                    .json(&json!({ "subject": format!("{prefix}-{n}") })),
            ),
            (Scenario::CheckBudget, _) => authorized(api.client.get(api.url(&format!(
                "/v1/budgets/check?model=openai%2Fgpt-4o-mini&feature=feature-{}",
                n % 8
            )))),
            (Scenario::EvaluateFlag, _) => authorized(
                api.client
                    .get(api.url(&format!("/v1/flags/{BENCH_FLAG}/evaluate?subject={prefix}-{n}"))),
            ),
            _ => authorized(
                api.client
                    .post(api.url("/v1/prompts"))
                    .json(&json!({ "name": format!("{prefix} #{n}") })),
            ),
        }
    }
}

#[derive(Debug, Args)]
struct HttpArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[arg(long, value_enum)]
    scenario: Scenario,
    /// Concurrent clients, one measurement per value.
    #[arg(long, value_delimiter = ',', default_value = "1,8,64")]
    clients: Vec<usize>,
    /// Measured seconds per client count.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unmeasured seconds of load before each measurement.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Also append each result as a JSON line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Send every request with a fresh `Idempotency-Key` (to measure what keys cost).
    #[arg(long)]
    idempotency_keys: bool,
}

#[derive(Debug, Args)]
struct OverloadArgs {
    #[command(flatten)]
    server: ServerArgs,
    #[arg(long, value_enum, default_value = "create-prompts")]
    scenario: Scenario,
    /// Offered requests per second, one measurement per value.
    #[arg(long, value_delimiter = ',', required = true)]
    rates: Vec<f64>,
    /// Seconds of overload per rate.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Clients of the closed-loop measurements before and after the overload.
    #[arg(long, default_value_t = 8)]
    probe_clients: usize,
    /// Seconds of each closed-loop measurement.
    #[arg(long, default_value_t = 3.0)]
    probe_duration: f64,
    /// Requests the generator keeps unanswered at most; beyond it a scheduled request is
    /// counted as not sent, so that the generator's own memory stays bounded.
    #[arg(long, default_value_t = 20_000)]
    max_outstanding: usize,
    /// The server's process id, to sample its resident memory (Linux /proc).
    #[arg(long)]
    server_pid: Option<u32>,
    /// Also append each result as a JSON line to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct AuthCostArgs {
    /// The aipm database.
    #[arg(long)]
    database_url: String,
    /// A key of that database (`aipm keys create ...`).
    #[arg(long, env = "AIPM_KEY", hide_env_values = true)]
    key: String,
    /// Sequential key lookups timed.
    #[arg(long, default_value_t = 10_000)]
    samples: u32,
    /// Rate-limiter charges timed, per key count.
    #[arg(long, default_value_t = 2_000_000)]
    charges: u32,
    /// Also append the results as JSON lines to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct HotPromptArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// Versions published to the hot prompt before measuring (sequentially, not measured).
    #[arg(long, default_value_t = 1000)]
    versions: u32,
    /// Sequential publishes measured on each prompt.
    #[arg(long, default_value_t = 200)]
    samples: u32,
    /// The server's database: also time loading each prompt cold (as after a restart),
    /// from its snapshot and from its full history.
    #[arg(long)]
    database_url: Option<String>,
    /// Also append the results as JSON lines to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct SeedArgs {
    /// The aipm database (created and migrated if missing).
    #[arg(long)]
    database_url: String,
    /// Events to insert.
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Versions per prompt; each prompt is one PromptCreated and this many PromptVersionPublished.
    #[arg(long, default_value_t = 9)]
    versions_per_prompt: u64,
    /// Events per INSERT statement.
    #[arg(long, default_value_t = 10_000)]
    batch: u64,
    /// Tenant the events belong to.
    #[arg(long, default_value = "bench")]
    tenant: String,
}

#[derive(Debug, Args)]
struct RebuildArgs {
    /// The aipm database.
    #[arg(long)]
    database_url: String,
    /// How many times to rebuild.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// The projection to rebuild.
    #[arg(long, default_value = "catalog")]
    projection: String,
    /// The old rebuild: empty the live tables and apply the log in one transaction.
    #[arg(long)]
    in_place: bool,
    /// Also append the results as JSON lines to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

#[derive(Debug, Args)]
struct RelayArgs {
    /// NATS server with JetStream.
    #[arg(long, default_value = "nats://127.0.0.1:4222")]
    nats_url: String,
    /// Throughput: the aipm database to seed and relay from (created and migrated if missing).
    #[arg(long)]
    database_url: Option<String>,
    /// Throughput: events in the log (seeded up to this count).
    #[arg(long, default_value_t = 100_000)]
    events: u64,
    /// Latency: base URL of a running aipm server whose feed goes to `--stream`.
    #[arg(long)]
    url: Option<String>,
    /// Latency: API key with write permission.
    #[arg(long, env = "AIPM_KEY", hide_env_values = true)]
    key: Option<String>,
    /// Latency: the server's stream (its AIPM_NATS_STREAM).
    #[arg(long, default_value = "AIPM_EVENTS")]
    stream: String,
    /// Latency: commands per second.
    #[arg(long, default_value_t = 500)]
    rate: u32,
    /// Latency: measured seconds of commands.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Measurements of each kind.
    #[arg(long, default_value_t = 3)]
    runs: u32,
    /// Also append the results as JSON lines to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("aipm-load: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("aipm-load: {error}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Http(args) => http(args).await,
        Command::Overload(args) => overload(args).await,
        Command::AuthCost(args) => auth_cost(args).await,
        Command::HotPrompt(args) => hot_prompt(args).await,
        Command::SeedEvents(args) => seed_events(args).await,
        Command::Rebuild(args) => rebuild(args).await,
        Command::Relay(args) => relay::run(args).await,
        Command::DeleteStream(args) => relay::delete_stream(args).await,
        Command::Bulk(args) => bulk(args).await,
        Command::Ingest(args) => ingest(args).await,
        Command::FakeProvider(args) => fake_provider(args).await,
        Command::Gateway(args) => gateway::run(args).await,
    }
}

async fn fake_provider(args: FakeProviderArgs) -> Result<()> {
    let address = std::net::SocketAddr::from((std::net::Ipv4Addr::LOCALHOST, args.port));
    let latency = Duration::from_millis(args.latency_ms);
    let provider = FakeProvider::start_on(address, &args.api_key, latency)
        .await
        .map_err(|error| format!("cannot listen on {address}: {error}"))?;
    // A benchmark sends far more requests than are worth keeping.
    provider.set_recording(false);
    println!("{}", provider.anthropic_base_url());
    std::future::pending::<()>().await;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// HTTP

/// One shared keep-alive client for a server.
#[derive(Clone)]
struct Api {
    client: reqwest::Client,
    base: Arc<str>,
    key: Arc<str>,
}

impl Api {
    fn new(server: &ServerArgs, max_idle: usize) -> Result<Self> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(max_idle)
            .pool_idle_timeout(Duration::from_secs(90))
            .tcp_nodelay(true)
            .timeout(Duration::from_secs(30))
            .user_agent(USER_AGENT)
            .build()
            .map_err(|e| format!("cannot build the HTTP client: {e}"))?;
        Ok(Self {
            client,
            base: server.url.trim_end_matches('/').into(),
            key: server.key.as_str().into(),
        })
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// A setup request that must succeed: returns the JSON body of a 2xx answer.
    async fn post_ok(&self, path: &str, body: &Value) -> Result<Value> {
        self.send_ok(reqwest::Method::POST, path, body).await
    }

    /// A setup request with `method` that must succeed: the JSON body of a 2xx answer.
    async fn send_ok(&self, method: reqwest::Method, path: &str, body: &Value) -> Result<Value> {
        let url = self.url(path);
        let response = self
            .client
            .request(method.clone(), &url)
            .bearer_auth(&*self.key)
            .json(body)
            .send()
            .await
            .map_err(|e| format!("{method} {url}: {}", chain(&e)))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| format!("{method} {url}: reading the answer: {}", chain(&e)))?;
        if !status.is_success() {
            return Err(format!("{method} {url}: HTTP {status}: {}", excerpt(&text)).into());
        }
        serde_json::from_str(&text).map_err(|e| format!("{method} {url}: answer is not JSON: {e}").into())
    }

    /// Fails early, with a useful message, when the server is down or the key is refused.
    async fn preflight(&self) -> Result<()> {
        let url = self.url("/v1/prompts?limit=1");
        let response = self
            .client
            .get(&url)
            .bearer_auth(&*self.key)
            .send()
            .await
            .map_err(|e| format!("cannot reach the server at {}: {}", self.base, chain(&e)))?;
        let status = response.status();
        if !status.is_success() {
            let text = response.text().await.unwrap_or_default();
            return Err(format!("GET {url}: HTTP {status}: {}", excerpt(&text)).into());
        }
        Ok(())
    }

    async fn create_prompt(&self, name: &str) -> Result<String> {
        let body = self.post_ok("/v1/prompts", &json!({ "name": name })).await?;
        body["id"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("created prompt {name:?} but the answer has no id: {body}").into())
    }

    async fn publish(&self, prompt: &str, template: &str) -> Result<i64> {
        let path = format!("/v1/prompts/{prompt}/versions");
        let body = self.post_ok(&path, &json!({ "template": template })).await?;
        body["version"]
            .as_i64()
            .ok_or_else(|| format!("published to {prompt} but the answer has no version: {body}").into())
    }
}

/// An error with its causes, e.g. "error sending request: ...: Connection refused".
fn chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let message = cause.to_string();
        if !text.contains(&message) {
            text.push_str(": ");
            text.push_str(&message);
        }
        source = cause.source();
    }
    text
}

fn excerpt(text: &str) -> String {
    let mut out: String = text.chars().take(300).collect();
    if out.len() < text.len() {
        out.push('…');
    }
    out
}

/// What one client saw during the measured window.
#[derive(Default)]
struct ClientStats {
    /// One per answered request, whatever its status; transport errors are only counted.
    latencies_us: Vec<u64>,
    non_2xx: u64,
    errors: u64,
    first_failure: Option<String>,
    /// What the server said of its own time in each measured 2xx answer, when asked for.
    server_timings: Vec<ServerTiming>,
}

impl ClientStats {
    fn merge(&mut self, other: ClientStats) {
        self.latencies_us.extend(other.latencies_us);
        self.non_2xx += other.non_2xx;
        self.errors += other.errors;
        if self.first_failure.is_none() {
            self.first_failure = other.first_failure;
        }
        self.server_timings.extend(other.server_timings);
    }
}

/// A gateway call's timings as its answer gives them, in whole milliseconds.
#[derive(Debug, Clone, Copy)]
struct ServerTiming {
    /// `latency_ms`: from after the version is resolved and the budgets checked to before the
    /// usage is written; neither end is in it.
    call_ms: u64,
    /// `provider_latency_ms`: the answering provider's share of the call.
    provider_ms: u64,
}

impl ServerTiming {
    fn of(body: &[u8]) -> Option<Self> {
        let answer: Value = serde_json::from_slice(body).ok()?;
        Some(Self {
            call_ms: answer["latency_ms"].as_u64()?,
            provider_ms: answer["provider_latency_ms"].as_u64()?,
        })
    }
}

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Copy)]
struct Percentiles {
    p50: f64,
    p90: f64,
    p99: f64,
    max: f64,
    mean: f64,
}

impl Percentiles {
    /// Exact nearest-rank percentiles of microsecond latencies.
    fn of(latencies_us: &mut [u64]) -> Self {
        latencies_us.sort_unstable();
        let ms = |us: u64| us as f64 / 1000.0;
        let rank = |q: f64| -> f64 {
            let n = latencies_us.len();
            if n == 0 {
                return 0.0;
            }
            let index = ((q * n as f64).ceil() as usize).clamp(1, n) - 1;
            ms(latencies_us[index])
        };
        let mean = if latencies_us.is_empty() {
            0.0
        } else {
            latencies_us.iter().sum::<u64>() as f64 / latencies_us.len() as f64 / 1000.0
        };
        Self {
            p50: rank(0.50),
            p90: rank(0.90),
            p99: rank(0.99),
            max: latencies_us.last().copied().map(ms).unwrap_or(0.0),
            mean,
        }
    }
}

fn seconds(value: f64, flag: &str) -> Result<Duration> {
    Duration::try_from_secs_f64(value)
        .map_err(|_| format!("--{flag} must be a non-negative number of seconds, not {value}").into())
}

async fn http(args: HttpArgs) -> Result<()> {
    let duration = seconds(args.duration, "duration")?;
    let warmup = seconds(args.warmup, "warmup")?;
    if duration.is_zero() {
        return Err("--duration must be more than 0 seconds".into());
    }
    if args.clients.is_empty() || args.clients.contains(&0) {
        return Err("--clients must be a list of positive numbers, e.g. 1,8,64".into());
    }
    let most = args.clients.iter().copied().max().unwrap_or(1);
    let api = Api::new(&args.server, most.max(16) * 2)?;
    api.preflight().await?;
    // Distinguishes this run's names from earlier runs against the same database.
    let run_tag = Uuid::new_v4().simple().to_string()[..8].to_string();
    println!(
        "{} against {}: {:.1}s warm-up, {:.1}s measured per client count",
        args.scenario.name(),
        api.base,
        warmup.as_secs_f64(),
        duration.as_secs_f64()
    );
    println!(
        "{:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7}",
        "clients", "requests", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "non-2xx", "errors"
    );
    for &clients in &args.clients {
        let mut stats = closed_loop(
            &api,
            args.scenario,
            clients,
            &run_tag,
            (warmup, duration),
            args.idempotency_keys,
        )
        .await?;
        let requests = stats.latencies_us.len();
        let rate = requests as f64 / duration.as_secs_f64();
        let p = Percentiles::of(&mut stats.latencies_us);
        println!(
            "{clients:>7} {requests:>9} {rate:>9.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>7}",
            p.p50, p.p90, p.p99, p.max, stats.non_2xx, stats.errors
        );
        if let Some(failure) = &stats.first_failure {
            eprintln!("        first failure: {failure}");
        }
        if let Some(path) = &args.json {
            append_json(
                path,
                &json!({
                    "kind": "http",
                    "scenario": args.scenario.name(),
                    "url": &*api.base,
                    "clients": clients,
                    "warmup_s": warmup.as_secs_f64(),
                    "idempotency_keys": args.idempotency_keys,
                    "duration_s": duration.as_secs_f64(),
                    "requests": requests,
                    "rps": rate,
                    "p50_ms": p.p50,
                    "p90_ms": p.p90,
                    "p99_ms": p.p99,
                    "max_ms": p.max,
                    "mean_ms": p.mean,
                    "non_2xx": stats.non_2xx,
                    "errors": stats.errors,
                    "at": now_rfc3339(),
                }),
            )?;
        }
    }
    Ok(())
}

/// `clients` closed-loop clients for `warmup` + `duration`; the stats of the measured part.
async fn closed_loop(
    api: &Api,
    scenario: Scenario,
    clients: usize,
    run_tag: &str,
    window: (Duration, Duration),
    idempotency_keys: bool,
) -> Result<ClientStats> {
    let prompts = prepare_prompts(api, scenario, clients, &format!("{run_tag} c{clients}")).await?;
    let senders = prompts.into_iter().enumerate().map(|(index, prompt)| {
        let api = api.clone();
        let prefix = format!("load {run_tag} c{clients} t{index}");
        move |n| {
            let request = scenario.request(&api, prompt.as_deref(), &prefix, n);
            if idempotency_keys {
                request.header("idempotency-key", Uuid::new_v4().to_string())
            } else {
                request
            }
        }
    });
    run_clients(senders, false, window).await
}

/// One closed-loop client per request maker in `senders`, for `warmup` + `duration`; the
/// stats of the measured part, merged.
async fn run_clients<S>(
    senders: impl IntoIterator<Item = S>,
    keep_server_timings: bool,
    (warmup, duration): (Duration, Duration),
) -> Result<ClientStats>
where
    S: Fn(u64) -> reqwest::RequestBuilder + Send + 'static,
{
    let measure_from = Instant::now() + warmup;
    let deadline = measure_from + duration;
    let mut tasks = tokio::task::JoinSet::new();
    for request in senders {
        tasks.spawn(client_loop(
            request,
            keep_server_timings,
            (measure_from, deadline),
        ));
    }
    let mut stats = ClientStats::default();
    while let Some(joined) = tasks.join_next().await {
        stats.merge(joined.map_err(|e| format!("a client task failed: {e}"))?);
    }
    Ok(stats)
}

/// One prompt per client when the scenario works on prompts, `None`s otherwise.
async fn prepare_prompts(
    api: &Api,
    scenario: Scenario,
    clients: usize,
    tag: &str,
) -> Result<Vec<Option<String>>> {
    if scenario == Scenario::EvaluateFlag {
        let flag = json!({ "enabled": true, "rollout_percent": 50, "reason": "load test" });
        api.send_ok(reqwest::Method::PUT, &format!("/v1/flags/{BENCH_FLAG}"), &flag)
            .await?;
    }
    if scenario == Scenario::CheckBudget {
        for (name, scope) in [
            ("bench: everything", json!({"kind": "tenant"})),
            ("bench: feature-1", json!({"kind": "feature", "id": "feature-1"})),
        ] {
            let budget = json!({"name": name, "scope": scope, "period": "monthly", "amount": "1000000",
                                "currency": "USD", "enforcement": "hard"});
            // Defined by an earlier run already: a 409, which is fine.
            let _ = api
                .client
                .post(api.url("/v1/budgets"))
                .bearer_auth(&*api.key)
                .json(&budget)
                .send()
                .await;
        }
    }
    if scenario == Scenario::AssignExperiment {
        let experiment = json!({
            "name": format!("load {tag} experiment"), "hypothesis": "assignment is fast",
            "variants": [{"name": "control", "weight": 50, "control": true},
                         {"name": "a", "weight": 25}, {"name": "b", "weight": 25}],
            "primary_metric": {"name": "converted", "kind": "binary"}
        });
        let created = api
            .send_ok(reqwest::Method::POST, "/v1/experiments", &experiment)
            .await?;
        let id = created["id"]
            .as_str()
            .ok_or("the experiment has no id")?
            .to_string();
        api.send_ok(
            reqwest::Method::POST,
            &format!("/v1/experiments/{id}/start"),
            &json!({}),
        )
        .await?;
        return Ok(vec![Some(id); clients]);
    }
    if !scenario.needs_prompt() {
        return Ok(vec![None; clients]);
    }
    let creates = (0..clients).map(|i| {
        let api = api.clone();
        let name = format!("load {tag} prompt {i}");
        async move {
            let prompt = api.create_prompt(&name).await?;
            if scenario == Scenario::ResolveLabel {
                let version = api
                    .publish(&prompt, "Answer {{customer}} about {{topic}}.")
                    .await?;
                let label = format!("/v1/prompts/{prompt}/labels/production");
                api.send_ok(reqwest::Method::PUT, &label, &json!({ "version": version }))
                    .await?;
            }
            Ok::<_, BoxError>(prompt)
        }
    });
    Ok(futures::future::try_join_all(creates)
        .await?
        .into_iter()
        .map(Some)
        .collect())
}

/// One closed-loop client: sends its next request (`request(n)` for the `n`th) as soon as
/// the previous one answered, until `deadline`; records the requests started at or after
/// `measure_from`, and with `keep_server_timings` the timings their 2xx answers report.
async fn client_loop(
    request: impl Fn(u64) -> reqwest::RequestBuilder,
    keep_server_timings: bool,
    (measure_from, deadline): (Instant, Instant),
) -> ClientStats {
    let mut stats = ClientStats::default();
    let mut n: u64 = 0;
    loop {
        n += 1;
        let started = Instant::now();
        if started >= deadline {
            break;
        }
        let sent = request(n).send().await;
        // The whole body is read, so that the connection goes back to the pool.
        let outcome = match sent {
            Ok(response) => {
                let status = response.status();
                response.bytes().await.map(|body| (status, body))
            }
            Err(error) => Err(error),
        };
        let latency = started.elapsed();
        let measured = started >= measure_from;
        match outcome {
            Ok((status, body)) => {
                if measured {
                    stats.latencies_us.push(latency.as_micros() as u64);
                    if !status.is_success() {
                        stats.non_2xx += 1;
                        if stats.first_failure.is_none() {
                            let text = String::from_utf8_lossy(&body);
                            stats.first_failure = Some(format!("HTTP {status}: {}", excerpt(&text)));
                        }
                    } else if keep_server_timings {
                        stats.server_timings.extend(ServerTiming::of(&body));
                    }
                }
            }
            Err(error) => {
                if measured {
                    stats.errors += 1;
                    if stats.first_failure.is_none() {
                        stats.first_failure = Some(format!("transport error: {}", chain(&error)));
                    }
                }
                // Do not spin when the server is gone.
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    stats
}

// ---------------------------------------------------------------------------------------
// Bulk

async fn bulk(args: BulkArgs) -> Result<()> {
    use futures::StreamExt;
    let duration = seconds(args.duration, "duration")?;
    if args.prompts == 0 || args.prompts > 10_000 || args.clients == 0 {
        return Err("--prompts must be 1 to 10000 and --clients at least 1".into());
    }
    let api = Api::new(&args.server, 64)?;
    api.preflight().await?;
    let run_tag = Uuid::new_v4().simple().to_string()[..8].to_string();
    let tag = format!("bulk-{run_tag}");
    println!("creating {} prompts tagged {tag}", args.prompts);
    let creates = futures::stream::iter(0..args.prompts).map(|n| {
        let (api, tag) = (api.clone(), tag.clone());
        async move {
            api.post_ok(
                "/v1/prompts",
                &json!({ "name": format!("{tag} {n}"), "tags": [tag] }),
            )
            .await
        }
    });
    let created: Vec<Result<Value>> = creates.buffer_unordered(32).collect().await;
    for result in created {
        result?;
    }
    let window = (Duration::from_secs(1), duration);
    let mut baseline = closed_loop(
        &api,
        Scenario::CreatePrompts,
        args.clients,
        &format!("{run_tag} base"),
        window,
        false,
    )
    .await?;

    let job = api
        .post_ok(
            "/v1/bulk",
            &json!({ "operation": "prompt.tag", "params": { "tags": ["reviewed"] }, "filter": { "tag": tag } }),
        )
        .await?;
    let id = job["id"].as_str().ok_or("the job has no id")?.to_string();
    let mut during = closed_loop(
        &api,
        Scenario::CreatePrompts,
        args.clients,
        &format!("{run_tag} bulk"),
        window,
        false,
    )
    .await?;
    let finished = loop {
        let job = api
            .send_ok(
                reqwest::Method::GET,
                &format!("/v1/bulk/{id}?limit=1"),
                &json!(null),
            )
            .await?;
        if job["finished_at"].is_string() {
            break job;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let at = |field: &str| {
        finished[field]
            .as_str()
            .and_then(|text| chrono::DateTime::parse_from_rfc3339(text).ok())
            .ok_or_else(|| format!("the job has no {field}: {finished}"))
    };
    let job_seconds = (at("finished_at")? - at("created_at")?)
        .num_microseconds()
        .unwrap_or(0) as f64
        / 1e6;
    let items = finished["done"].as_i64().unwrap_or(0);
    let items_per_s = items as f64 / job_seconds.max(1e-9);
    let (base, load) = (
        Percentiles::of(&mut baseline.latencies_us),
        Percentiles::of(&mut during.latencies_us),
    );
    println!(
        "job: {} ({} of {} applied, {} failed) in {job_seconds:.1}s: {items_per_s:.0} items/s",
        finished["status"], items, finished["total"], finished["failed"]
    );
    if job_seconds < duration.as_secs_f64() + 1.0 {
        println!("note: the job ended before the measurement did; part of it ran without the job");
    }
    println!(
        "{:>10} {:>9} {:>9} {:>9} {:>9} {:>8}",
        "commands", "requests", "p50 ms", "p99 ms", "max ms", "non-2xx"
    );
    for (name, stats, p) in [("alone", &baseline, base), ("with job", &during, load)] {
        println!(
            "{name:>10} {:>9} {:>9.2} {:>9.2} {:>9.2} {:>8}",
            stats.latencies_us.len(),
            p.p50,
            p.p99,
            p.max,
            stats.non_2xx
        );
    }
    println!("p99 with the job / alone: {:.2}", load.p99 / base.p99.max(1e-9));
    if let Some(path) = &args.json {
        append_json(
            path,
            &json!({
                "kind": "bulk",
                "prompts": args.prompts,
                "clients": args.clients,
                "duration_s": duration.as_secs_f64(),
                "job_status": finished["status"],
                "items_done": items,
                "job_s": job_seconds,
                "items_per_s": items_per_s,
                "alone": {"requests": baseline.latencies_us.len(), "p50_ms": base.p50, "p99_ms": base.p99, "max_ms": base.max},
                "with_job": {"requests": during.latencies_us.len(), "p50_ms": load.p50, "p99_ms": load.p99, "max_ms": load.max},
                "p99_ratio": load.p99 / base.p99.max(1e-9),
                "at": now_rfc3339(),
            }),
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Ingestion

/// The varying parts of the `i`th record of a batch: its feature (one of eight), latency and
/// rating, so that ingestion keeps several analytics summaries and real latency sketches.
fn usage_record_parts(i: usize) -> (String, usize, usize) {
    (format!("feature-{}", i % 8), 200 + (i * 37) % 3000, i % 5)
}

/// One usage record as JSON, the same record as [`usage_record_csv`] gives COPY.
fn usage_record_json(id: &str, i: usize) -> String {
    let (feature, latency, rating) = usage_record_parts(i);
    format!(
        r#"{{"id":"{id}","timestamp":"2026-11-15T10:00:00Z","model":"openai/gpt-4o-mini","feature":"{feature}","input_tokens":1200,"output_tokens":300,"cached_input_tokens":200,"latency_ms":{latency},"status":"ok","metrics":{{"rating":{rating}}}}}"#
    )
}

/// One usage record as a CSV row for COPY, as ingestion stores it.
fn usage_record_csv(id: &str, i: usize, key_id: Uuid) -> String {
    let (feature, latency, rating) = usage_record_parts(i);
    format!(
        "acme,{id},2026-11-15T10:00:00Z,openai/gpt-4o-mini,{feature},1200,300,200,{latency},ok,\"{{\"\"rating\"\":{rating}}}\",0.000345,USD,{key_id}\n"
    )
}

async fn ingest(args: IngestArgs) -> Result<()> {
    use sqlx::Connection;
    let duration = seconds(args.duration, "duration")?;
    if args.clients == 0 || args.batch == 0 || args.batch > 10_000 {
        return Err("--clients must be at least 1 and --batch 1 to 10000".into());
    }
    let run_tag = Uuid::new_v4().simple().to_string()[..8].to_string();

    // The ceiling: COPY of the same rows into a plain table of the same shape.
    let pool = PgPool::connect(&args.database_url)
        .await
        .map_err(|e| format!("cannot reach {}: {e}", args.database_url))?;
    sqlx::query("drop table if exists usage_copy_ceiling")
        .execute(&pool)
        .await?;
    sqlx::query("create table usage_copy_ceiling (like usage_record including defaults)")
        .execute(&pool)
        .await?;
    let key_id = Uuid::new_v4();
    let deadline = Instant::now() + duration;
    let mut copies = tokio::task::JoinSet::new();
    for client in 0..args.clients {
        let (url, batch, tag) = (args.database_url.clone(), args.batch, run_tag.clone());
        copies.spawn(async move {
            let mut conn = sqlx::PgConnection::connect(&url).await?;
            let mut rows = 0usize;
            let mut n = 0usize;
            while Instant::now() < deadline {
                let mut csv = String::with_capacity(batch * 160);
                for i in 0..batch {
                    csv.push_str(&usage_record_csv(&format!("{tag}-c{client}-b{n}-{i}"), i, key_id));
                }
                let mut copy = conn
                    .copy_in_raw(
                        "copy usage_copy_ceiling (tenant_id, record_id, ts, model, feature, input_tokens, output_tokens,
                             cached_input_tokens, latency_ms, status, metrics, cost, currency, key_id)
                         from stdin (format csv)",
                    )
                    .await?;
                copy.send(csv.into_bytes()).await?;
                copy.finish().await?;
                rows += batch;
                n += 1;
            }
            Ok::<usize, sqlx::Error>(rows)
        });
    }
    let started = Instant::now();
    let mut copied = 0;
    while let Some(joined) = copies.join_next().await {
        copied += joined.map_err(|e| format!("a COPY task failed: {e}"))??;
    }
    let copy_rate = copied as f64 / started.elapsed().as_secs_f64();
    sqlx::query("drop table usage_copy_ceiling")
        .execute(&pool)
        .await?;

    // aipm: POST /v1/usage, priced: the records' model has a price (set up once per database).
    let api = Api::new(&args.server, args.clients * 2)?;
    api.preflight().await?;
    let setup = [
        (
            "/v1/providers",
            json!({"name": "openai", "kind": "openai", "base_url": "https://api.openai.com/v1",
                   "credential_ref": "env:OPENAI_API_KEY"}),
        ),
        (
            "/v1/models",
            json!({"provider": "openai", "model_id": "gpt-4o-mini"}),
        ),
        (
            "/v1/models/openai%2Fgpt-4o-mini/prices",
            json!({"effective_from": "2026-01-01T00:00:00Z", "input_per_mtok": "0.15",
                   "output_per_mtok": "0.6", "cached_input_per_mtok": "0.075", "currency": "USD"}),
        ),
    ];
    for (path, body) in setup {
        // Already there from an earlier run: a 409 or 422, which is fine.
        let _ = api
            .client
            .post(api.url(path))
            .bearer_auth(&*api.key)
            .json(&body)
            .send()
            .await;
    }
    let deadline = Instant::now() + duration;
    let mut clients = tokio::task::JoinSet::new();
    for client in 0..args.clients {
        let (api, batch, tag) = (api.clone(), args.batch, run_tag.clone());
        clients.spawn(async move {
            let (mut accepted, mut latencies, mut failures) = (0u64, Vec::new(), 0u64);
            let mut n = 0usize;
            while Instant::now() < deadline {
                let mut body = String::with_capacity(batch * 220 + 2);
                body.push('[');
                for i in 0..batch {
                    if i > 0 {
                        body.push(',');
                    }
                    body.push_str(&usage_record_json(&format!("{tag}-c{client}-b{n}-{i}"), i));
                }
                body.push(']');
                n += 1;
                let sent = Instant::now();
                let response = api
                    .client
                    .post(api.url("/v1/usage"))
                    .bearer_auth(&*api.key)
                    .header("content-type", "application/json")
                    .body(body)
                    .send()
                    .await;
                match response {
                    Ok(response) if response.status().is_success() => {
                        let outcome: Value = response.json().await.unwrap_or_default();
                        accepted += outcome["accepted"].as_u64().unwrap_or(0);
                        latencies.push(sent.elapsed().as_micros() as u64);
                    }
                    _ => failures += 1,
                }
            }
            (accepted, latencies, failures)
        });
    }
    let started = Instant::now();
    let (mut accepted, mut latencies, mut failures) = (0u64, Vec::new(), 0u64);
    while let Some(joined) = clients.join_next().await {
        let (a, l, f) = joined.map_err(|e| format!("a client failed: {e}"))?;
        accepted += a;
        latencies.extend(l);
        failures += f;
    }
    let aipm_rate = accepted as f64 / started.elapsed().as_secs_f64();
    let p = Percentiles::of(&mut latencies);
    println!(
        "COPY ceiling: {copy_rate:.0} rows/s; aipm: {aipm_rate:.0} records/s ({:.1} % of the ceiling), \
         request p50 {:.0} ms, p99 {:.0} ms, {failures} failed requests",
        100.0 * aipm_rate / copy_rate.max(1e-9),
        p.p50,
        p.p99
    );
    if let Some(path) = &args.json {
        append_json(
            path,
            &json!({
                "kind": "ingest",
                "clients": args.clients,
                "batch": args.batch,
                "duration_s": duration.as_secs_f64(),
                "copy_rows_per_s": copy_rate,
                "aipm_records_per_s": aipm_rate,
                "ratio": aipm_rate / copy_rate.max(1e-9),
                "request_p50_ms": p.p50,
                "request_p99_ms": p.p99,
                "failed_requests": failures,
                "at": now_rfc3339(),
            }),
        )?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Overload

/// What the requests of one open-loop phase got.
#[derive(Default)]
struct OpenLoopStats {
    /// Latencies of 2xx answers (admitted and served).
    admitted_us: Vec<u64>,
    /// Latencies of `503 overloaded` answers (shed).
    shed_us: Vec<u64>,
    /// Other 503 answers: timed out, or no database connection in time.
    unavailable: u64,
    rate_limited: u64,
    other_status: u64,
    errors: u64,
    /// Scheduled but not sent because `--max-outstanding` requests were unanswered.
    not_sent: u64,
    first_failure: Option<String>,
}

/// The open-loop phase of one rate.
struct OpenLoopReport {
    stats: OpenLoopStats,
    scheduled: u64,
    /// The most unanswered requests at once.
    peak_outstanding: usize,
    /// From the end of the load until every request sent had its answer.
    drain: Duration,
    peak_rss_kib: Option<u64>,
}

/// Resident memory of process `pid` in KiB (Linux).
fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches("kB").trim().parse().ok())
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "-".to_string(), |k| format!("{:.1}", k as f64 / 1024.0))
}

async fn overload(args: OverloadArgs) -> Result<()> {
    let duration = seconds(args.duration, "duration")?;
    let probe = seconds(args.probe_duration, "probe-duration")?;
    if duration.is_zero() || args.rates.iter().any(|r| !(r.is_finite() && *r > 0.0)) {
        return Err("--duration and every --rates value must be more than 0".into());
    }
    if args.probe_clients == 0 || args.max_outstanding == 0 {
        return Err("--probe-clients and --max-outstanding must be at least 1".into());
    }
    let api = Api::new(&args.server, args.max_outstanding.min(4096))?;
    api.preflight().await?;
    let run_tag = Uuid::new_v4().simple().to_string()[..8].to_string();
    let warmup = Duration::from_secs(1);
    println!(
        "{} against {}: per rate, {} closed-loop clients for {:.1}s, {:.1}s of open-loop load, the same clients again",
        args.scenario.name(),
        api.base,
        args.probe_clients,
        probe.as_secs_f64(),
        duration.as_secs_f64()
    );
    for &rate in &args.rates {
        let tag = format!("{run_tag} r{rate}");
        let rss_before = rss_kib(args.server_pid);
        let mut before = closed_loop(
            &api,
            args.scenario,
            args.probe_clients,
            &format!("{tag} before"),
            (warmup, probe),
            false,
        )
        .await?;
        let report = open_loop(&api, &args, rate, duration, &tag).await?;
        let mut after = closed_loop(
            &api,
            args.scenario,
            args.probe_clients,
            &format!("{tag} after"),
            (Duration::ZERO, probe),
            false,
        )
        .await?;
        let rss_after = rss_kib(args.server_pid);

        let mut stats = report.stats;
        let answered = stats.admitted_us.len()
            + stats.shed_us.len()
            + (stats.unavailable + stats.rate_limited + stats.other_status) as usize;
        let admitted = Percentiles::of(&mut stats.admitted_us);
        let shed = Percentiles::of(&mut stats.shed_us);
        let sent = report.scheduled - stats.not_sent;
        let shed_share = if sent == 0 {
            0.0
        } else {
            stats.shed_us.len() as f64 / sent as f64
        };
        let seconds = duration.as_secs_f64();
        let before_rate = before.latencies_us.len() as f64 / probe.as_secs_f64();
        let after_rate = after.latencies_us.len() as f64 / probe.as_secs_f64();
        let before_p = Percentiles::of(&mut before.latencies_us);
        let after_p = Percentiles::of(&mut after.latencies_us);
        println!(
            "offered {rate:.0} req/s for {seconds:.0} s: {sent} sent, {} not sent (generator cap)",
            stats.not_sent
        );
        println!(
            "  admitted (2xx) {:>7} = {:>7.1}/s  p50 {:>8.2} ms  p99 {:>8.2} ms  max {:>8.2} ms",
            stats.admitted_us.len(),
            stats.admitted_us.len() as f64 / seconds,
            admitted.p50,
            admitted.p99,
            admitted.max
        );
        println!(
            "  shed (503)     {:>7} = {:>6.1} %  p50 {:>8.2} ms  p99 {:>8.2} ms",
            stats.shed_us.len(),
            shed_share * 100.0,
            shed.p50,
            shed.p99
        );
        println!(
            "  other 503 {}, 429 {}, other status {}, no answer {}; {answered} answered; at most {} unanswered at once; all answered {:.2} s after the load stopped",
            stats.unavailable,
            stats.rate_limited,
            stats.other_status,
            stats.errors,
            report.peak_outstanding,
            report.drain.as_secs_f64()
        );
        println!(
            "  {} clients before: {before_rate:.1} req/s p50 {:.2} ms p99 {:.2} ms, non-2xx {} | after: {after_rate:.1} req/s p50 {:.2} ms p99 {:.2} ms, non-2xx {}",
            args.probe_clients, before_p.p50, before_p.p99, before.non_2xx, after_p.p50, after_p.p99, after.non_2xx
        );
        println!(
            "  server RSS MiB: before {}, peak during {}, after {}",
            mib(rss_before),
            mib(report.peak_rss_kib),
            mib(rss_after)
        );
        if let Some(failure) = stats.first_failure.as_ref().or(after.first_failure.as_ref()) {
            eprintln!("  first failure: {failure}");
        }
        if let Some(path) = &args.json {
            append_json(
                path,
                &json!({
                    "kind": "overload",
                    "scenario": args.scenario.name(),
                    "url": &*api.base,
                    "offered_rps": rate,
                    "duration_s": seconds,
                    "sent": sent,
                    "not_sent": stats.not_sent,
                    "admitted": stats.admitted_us.len(),
                    "admitted_rps": stats.admitted_us.len() as f64 / seconds,
                    "admitted_p50_ms": admitted.p50,
                    "admitted_p99_ms": admitted.p99,
                    "admitted_max_ms": admitted.max,
                    "shed": stats.shed_us.len(),
                    "shed_share": shed_share,
                    "shed_p50_ms": shed.p50,
                    "shed_p99_ms": shed.p99,
                    "unavailable": stats.unavailable,
                    "rate_limited": stats.rate_limited,
                    "other_status": stats.other_status,
                    "errors": stats.errors,
                    "peak_outstanding": report.peak_outstanding,
                    "drain_s": report.drain.as_secs_f64(),
                    "before": { "rps": before_rate, "p50_ms": before_p.p50, "p99_ms": before_p.p99, "non_2xx": before.non_2xx },
                    "after": { "rps": after_rate, "p50_ms": after_p.p50, "p99_ms": after_p.p99, "non_2xx": after.non_2xx },
                    "rss_mib": { "before": rss_before.map(|k| k as f64 / 1024.0), "peak": report.peak_rss_kib.map(|k| k as f64 / 1024.0), "after": rss_after.map(|k| k as f64 / 1024.0) },
                    "at": now_rfc3339(),
                }),
            )?;
        }
    }
    Ok(())
}

/// Sends requests at `rate` per second for `duration`, each on schedule whether or not
/// earlier ones were answered, then waits until every one has its answer.
async fn open_loop(
    api: &Api,
    args: &OverloadArgs,
    rate: f64,
    duration: Duration,
    tag: &str,
) -> Result<OpenLoopReport> {
    use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
    use std::sync::Mutex;

    const PROMPTS: usize = 64;
    let prompts: Arc<[Option<String>]> = prepare_prompts(api, args.scenario, PROMPTS, tag).await?.into();
    let stats = Arc::new(Mutex::new(OpenLoopStats::default()));
    let outstanding = Arc::new(AtomicUsize::new(0));
    let peak_outstanding = Arc::new(AtomicUsize::new(0));
    let peak_rss = Arc::new(AtomicU64::new(0));
    let (stop_sampling, mut stopped) = tokio::sync::watch::channel(false);
    let sampler = {
        let peak_rss = peak_rss.clone();
        let pid = args.server_pid;
        tokio::spawn(async move {
            loop {
                if let Some(kib) = rss_kib(pid) {
                    peak_rss.fetch_max(kib, Ordering::Relaxed);
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                    _ = stopped.changed() => break,
                }
            }
        })
    };

    let prefix = format!("overload {tag}");
    let start = Instant::now();
    let end = start + duration;
    let mut scheduled: u64 = 0;
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        ticker.tick().await;
        let now = Instant::now();
        if now >= end {
            break;
        }
        let due = (now.duration_since(start).as_secs_f64() * rate) as u64;
        while scheduled < due {
            scheduled += 1;
            if outstanding.load(Ordering::Relaxed) >= args.max_outstanding {
                lock(&stats).not_sent += 1;
                continue;
            }
            let in_flight = outstanding.fetch_add(1, Ordering::Relaxed) + 1;
            peak_outstanding.fetch_max(in_flight, Ordering::Relaxed);
            let prompt = prompts[(scheduled as usize) % PROMPTS].as_deref();
            let request = args.scenario.request(api, prompt, &prefix, scheduled);
            let stats = stats.clone();
            let outstanding = outstanding.clone();
            tokio::spawn(async move {
                let started = Instant::now();
                let outcome = match request.send().await {
                    Ok(response) => {
                        let status = response.status();
                        response.bytes().await.map(|body| (status, body))
                    }
                    Err(error) => Err(error),
                };
                let latency = started.elapsed().as_micros() as u64;
                let mut stats = lock(&stats);
                match outcome {
                    Ok((status, _)) if status.is_success() => stats.admitted_us.push(latency),
                    Ok((StatusCode::SERVICE_UNAVAILABLE, body))
                        if String::from_utf8_lossy(&body).contains("/problems/overloaded") =>
                    {
                        stats.shed_us.push(latency)
                    }
                    Ok((status, body)) => {
                        match status {
                            StatusCode::TOO_MANY_REQUESTS => stats.rate_limited += 1,
                            StatusCode::SERVICE_UNAVAILABLE => stats.unavailable += 1,
                            _ => stats.other_status += 1,
                        }
                        if stats.first_failure.is_none() {
                            let text = String::from_utf8_lossy(&body);
                            stats.first_failure = Some(format!("HTTP {status}: {}", excerpt(&text)));
                        }
                    }
                    Err(error) => {
                        stats.errors += 1;
                        if stats.first_failure.is_none() {
                            stats.first_failure = Some(format!("transport error: {}", chain(&error)));
                        }
                    }
                }
                drop(stats);
                outstanding.fetch_sub(1, Ordering::Relaxed);
            });
        }
    }
    let load_ended = Instant::now();
    // Every request has an answer or a transport error within the client's 30 s timeout.
    while outstanding.load(Ordering::Relaxed) > 0 && load_ended.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let drain = load_ended.elapsed();
    let _ = stop_sampling.send(true);
    let _ = sampler.await;
    let stats = std::mem::take(&mut *lock(&stats));
    Ok(OpenLoopReport {
        stats,
        scheduled,
        peak_outstanding: peak_outstanding.load(Ordering::Relaxed),
        drain,
        peak_rss_kib: args.server_pid.map(|_| peak_rss.load(Ordering::Relaxed)),
    })
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------
// Auth cost

async fn auth_cost(args: AuthCostArgs) -> Result<()> {
    if args.samples == 0 || args.charges == 0 {
        return Err("--samples and --charges must be at least 1".into());
    }
    let pool = api::db::connect(&args.database_url, 2)
        .await
        .map_err(|e| e.to_string())?;
    let found = api::auth::find_key(&pool, &args.key)
        .await
        .map_err(|e| format!("key lookup failed: {e}"))?;
    if found.is_none() {
        return Err("the key is not an active key of that database".into());
    }
    // The lookup as every request does it: hash, one indexed query, constant-time compare.
    let mut lookups = Vec::with_capacity(args.samples as usize);
    for _ in 0..args.samples {
        let started = Instant::now();
        api::auth::find_key(&pool, &args.key)
            .await
            .map_err(|e| format!("key lookup failed: {e}"))?;
        lookups.push(started.elapsed().as_micros() as u64);
    }
    let lookup = Percentiles::of(&mut lookups);
    println!(
        "key lookup, {} sequential: p50 {:.3} ms, p99 {:.3} ms, mean {:.3} ms",
        args.samples, lookup.p50, lookup.p99, lookup.mean
    );
    let mut charges = Vec::new();
    for keys in [1u32, 10_000] {
        let limiter = api::hardening::RateLimiter::new(&api::settings::SecuritySettings::default());
        let ids: Vec<Uuid> = (0..keys).map(|_| Uuid::new_v4()).collect();
        let limit = Some(domain::access::RateLimit {
            requests_per_second: 1e6,
            burst: 1_000_000,
        });
        let started = Instant::now();
        for i in 0..args.charges {
            let id = ids[(i % keys) as usize];
            std::hint::black_box(limiter.charge(id, limit, api::hardening::RouteBudget::Standard));
        }
        let nanos = started.elapsed().as_nanos() as f64 / f64::from(args.charges);
        println!(
            "rate limiter, {keys} keys: {nanos:.0} ns per charge ({} charges, one thread)",
            args.charges
        );
        charges.push(json!({ "keys": keys, "ns_per_charge": nanos }));
    }
    if let Some(path) = &args.json {
        append_json(
            path,
            &json!({
                "kind": "auth-cost",
                "lookup_p50_ms": lookup.p50,
                "lookup_p99_ms": lookup.p99,
                "lookup_mean_ms": lookup.mean,
                "limiter": charges,
                "at": now_rfc3339(),
            }),
        )?;
    }
    Ok(())
}

async fn hot_prompt(args: HotPromptArgs) -> Result<()> {
    if args.samples == 0 {
        return Err("--samples must be at least 1".into());
    }
    let api = Api::new(&args.server, 4)?;
    api.preflight().await?;
    let run_tag = Uuid::new_v4().simple().to_string()[..8].to_string();

    let hot = api.create_prompt(&format!("hot {run_tag}")).await?;
    eprintln!(
        "publishing {} versions to prompt {hot} (setup, not measured)",
        args.versions
    );
    let setup_started = Instant::now();
    let step = (args.versions / 10).max(1);
    for v in 1..=args.versions {
        api.publish(&hot, &format!("Hello {{{{name}}}} #{v}")).await?;
        if v % step == 0 {
            eprintln!(
                "  {v}/{} versions ({:.0}/s)",
                args.versions,
                f64::from(v) / setup_started.elapsed().as_secs_f64()
            );
        }
    }
    let fresh = api.create_prompt(&format!("fresh {run_tag}")).await?;
    api.publish(&fresh, "Hello {{name}} #1").await?;
    // Samples alternate between the two prompts, so that drift over time (autovacuum,
    // caches, other load) affects both alike.
    let mut hot_latencies = Vec::with_capacity(args.samples as usize);
    let mut fresh_latencies = Vec::with_capacity(args.samples as usize);
    for i in 0..args.samples {
        hot_latencies.push(timed_publish(&api, &hot, i64::from(args.versions) + 1 + i64::from(i)).await?);
        fresh_latencies.push(timed_publish(&api, &fresh, 2 + i64::from(i)).await?);
    }
    let hot_p = Percentiles::of(&mut hot_latencies);
    let fresh_p = Percentiles::of(&mut fresh_latencies);

    println!(
        "publish latency, {} sequential samples per prompt, alternating between them (ms):",
        args.samples
    );
    println!(
        "{:<32} {:>8} {:>8} {:>8} {:>8} {:>8}",
        "prompt", "p50", "p90", "p99", "max", "mean"
    );
    let hot_label = format!("{} versions before", args.versions);
    for (label, p) in [(hot_label.as_str(), hot_p), ("1 version before (fresh)", fresh_p)] {
        println!(
            "{label:<32} {:>8.2} {:>8.2} {:>8.2} {:>8.2} {:>8.2}",
            p.p50, p.p90, p.p99, p.max, p.mean
        );
    }
    if fresh_p.p50 > 0.0 {
        println!("p50 ratio (long history / fresh): {:.2}", hot_p.p50 / fresh_p.p50);
    }
    if let Some(url) = &args.database_url {
        cold_loads(url, &hot, &fresh, args.samples, args.json.as_deref()).await?;
    }
    if let Some(path) = &args.json {
        for (history, p) in [(args.versions, hot_p), (1, fresh_p)] {
            append_json(
                path,
                &json!({
                    "kind": "hot-prompt",
                    "url": &*api.base,
                    "versions_before": history,
                    "samples": args.samples,
                    "p50_ms": p.p50,
                    "p90_ms": p.p90,
                    "p99_ms": p.p99,
                    "max_ms": p.max,
                    "mean_ms": p.mean,
                    "at": now_rfc3339(),
                }),
            )?;
        }
    }
    Ok(())
}

/// Times loading the hot and the fresh prompt from the event store with no cache: the way
/// commands load them (latest snapshot plus the events after it), and folding the whole
/// history (what loading would cost without snapshots).
async fn cold_loads(url: &str, hot: &str, fresh: &str, samples: u32, json_path: Option<&Path>) -> Result<()> {
    let pool = api::db::connect(url, 2).await?;
    let store = commands::EventStore::new(pool, projections::inline()).aggregates::<Prompt>(());
    let far_future = chrono::Utc::now() + chrono::Duration::days(1);
    println!("cold load of the prompt from PostgreSQL, {samples} samples each (ms):");
    println!(
        "{:<44} {:>8} {:>8} {:>8} {:>8}",
        "prompt and method", "p50", "p90", "p99", "events"
    );
    for (name, id) in [("hot", hot), ("fresh", fresh)] {
        let (_, version) = store.load(id).await.map_err(|e| e.to_string())?;
        let mut from_snapshot = Vec::with_capacity(samples as usize);
        let mut full_fold = Vec::with_capacity(samples as usize);
        for _ in 0..samples {
            let started = Instant::now();
            store.load(id).await.map_err(|e| e.to_string())?;
            from_snapshot.push(started.elapsed().as_micros() as u64);
            let started = Instant::now();
            store
                .load_as_of(id, far_future)
                .await
                .map_err(|e| e.to_string())?;
            full_fold.push(started.elapsed().as_micros() as u64);
        }
        for (method, latencies) in [
            ("snapshot + tail", &mut from_snapshot),
            ("whole history", &mut full_fold),
        ] {
            let p = Percentiles::of(latencies);
            println!(
                "{:<44} {:>8.2} {:>8.2} {:>8.2} {:>8}",
                format!("{name}, {method}"),
                p.p50,
                p.p90,
                p.p99,
                version
            );
            if let Some(path) = json_path {
                append_json(
                    path,
                    &json!({ "kind": "cold-load", "prompt": name, "method": method, "events": version,
                             "samples": samples, "p50_ms": p.p50, "p90_ms": p.p90, "p99_ms": p.p99, "at": now_rfc3339() }),
                )?;
            }
        }
    }
    Ok(())
}

/// Publishes the next version of `prompt`, checks that it is version `expected`, and
/// returns the request's latency in microseconds.
async fn timed_publish(api: &Api, prompt: &str, expected: i64) -> Result<u64> {
    let url = api.url(&format!("/v1/prompts/{prompt}/versions"));
    let body = json!({ "template": format!("Hello {{{{name}}}} #{expected}") });
    let started = Instant::now();
    let response = api
        .client
        .post(&url)
        .bearer_auth(&*api.key)
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("POST {url}: {}", chain(&e)))?;
    let status = response.status();
    let answer = response
        .bytes()
        .await
        .map_err(|e| format!("POST {url}: reading the answer: {}", chain(&e)))?;
    let latency = started.elapsed().as_micros() as u64;
    if status != StatusCode::CREATED {
        let text = String::from_utf8_lossy(&answer);
        return Err(format!("POST {url}: HTTP {status}: {}", excerpt(&text)).into());
    }
    let answer: Value = serde_json::from_slice(&answer).map_err(|e| format!("POST {url}: {e}"))?;
    if answer["version"].as_i64() != Some(expected) {
        return Err(format!(
            "POST {url}: expected version {expected}, got {}",
            answer["version"]
        )
        .into());
    }
    Ok(latency)
}

// ---------------------------------------------------------------------------------------
// The event log

const INSERT_EVENTS: &str = "
insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, tenant_id)
select $1, e.aggregate_id, e.sequence, e.event_type, e.event_version, e.payload, e.metadata, $2
from unnest($3::text[], $4::bigint[], $5::text[], $6::text[], $7::jsonb[], $8::jsonb[])
     with ordinality as e(aggregate_id, sequence, event_type, event_version, payload, metadata, ord)
order by e.ord";

/// The columns of one multi-row INSERT.
#[derive(Default)]
struct EventBatch {
    tenant: String,
    aggregate_ids: Vec<String>,
    sequences: Vec<i64>,
    event_types: Vec<String>,
    event_versions: Vec<String>,
    payloads: Vec<Value>,
    metadata: Vec<Value>,
}

impl EventBatch {
    fn len(&self) -> usize {
        self.aggregate_ids.len()
    }
}

/// Builds synthetic prompt events exactly as the domain serializes them.
struct Seeder {
    tenant: String,
    actor_key_id: String,
    per_prompt: u64,
    next_prompt: u64,
}

impl Seeder {
    /// The events of `prompts` new prompts, at most `budget` events in all. Within the
    /// batch the prompts are interleaved (all creations, then every first version, ...),
    /// as concurrent writers would interleave them in the log.
    fn batch(&mut self, prompts: u64, budget: u64) -> Result<EventBatch> {
        let mut plan = Vec::new();
        let mut left = budget;
        for _ in 0..prompts {
            if left == 0 {
                break;
            }
            let events = self.per_prompt.min(left);
            left -= events;
            plan.push((Uuid::now_v7().to_string(), self.next_prompt, events));
            self.next_prompt += 1;
        }
        let timestamp = now_rfc3339();
        let mut batch = EventBatch {
            tenant: self.tenant.clone(),
            ..EventBatch::default()
        };
        for round in 0..self.per_prompt {
            for (id, index, events) in &plan {
                if round >= *events {
                    continue;
                }
                let event = self.event(*index, round)?;
                let metadata = CommandMetadata {
                    tenant: self.tenant.clone(),
                    actor_key_id: self.actor_key_id.clone(),
                    actor_name: "load-seeder".into(),
                    request_id: Uuid::new_v4().to_string(),
                    client_addr: Some("127.0.0.1".into()),
                    user_agent: Some(USER_AGENT.into()),
                    timestamp: timestamp.clone(),
                    ..CommandMetadata::default()
                };
                batch.aggregate_ids.push(id.clone());
                batch.sequences.push(round as i64 + 1);
                batch.event_types.push(event.event_type());
                batch.event_versions.push(event.event_version());
                batch.payloads.push(serde_json::to_value(&event)?);
                batch.metadata.push(serde_json::to_value(metadata.to_map())?);
            }
        }
        Ok(batch)
    }

    /// Event `round` of prompt number `index`: its creation, then version `round`.
    fn event(&self, index: u64, round: u64) -> Result<PromptEvent> {
        if round == 0 {
            let team = ["sales", "support", "marketing", "legal"][(index % 4) as usize];
            let mut tags = vec!["bench".to_string(), team.to_string()];
            tags.sort();
            return Ok(PromptEvent::PromptCreated {
                tenant: self.tenant.clone(),
                name: format!("Seeded prompt {index}"),
                category: None,
                description: format!("Synthetic prompt #{index} for {team}, seeded by aipm-load"),
                tags,
            });
        }
        let text = format!(
            "You are a helpful assistant for {{{{company}}}}'s {team} team.\n\
             Answer {{{{name}}}}'s question about {{{{topic}}}} in at most {{{{words}}}} words.\n\
             (prompt {index}, revision {round})",
            team = ["sales", "support", "marketing", "legal"][(index % 4) as usize],
        );
        let template = Template::parse(&text).map_err(|e| format!("seed template: {e}"))?;
        let (model, params) = if round % 2 == 1 {
            (
                Some(ModelName::from_reference("gpt-4o-mini")),
                Some(json!({ "temperature": 0.2, "max_tokens": 400 + round * 10 })),
            )
        } else {
            (Some(ModelName::from_reference("claude-sonnet")), None)
        };
        Ok(PromptEvent::PromptVersionPublished {
            version: u32::try_from(round)?,
            template: template.text,
            variables: template.variables,
            model,
            params,
            message: format!("Revision {round}"),
        })
    }
}

async fn insert_batch(pool: PgPool, batch: EventBatch) -> Result<usize> {
    let rows = batch.len();
    sqlx::query(INSERT_EVENTS)
        .bind(Prompt::TYPE)
        .bind(&batch.tenant)
        .bind(&batch.aggregate_ids)
        .bind(&batch.sequences)
        .bind(&batch.event_types)
        .bind(&batch.event_versions)
        .bind(&batch.payloads)
        .bind(&batch.metadata)
        .execute(&pool)
        .await
        .map_err(|e| format!("inserting {rows} events: {e}"))?;
    Ok(rows)
}

async fn seed_events(args: SeedArgs) -> Result<()> {
    if args.batch == 0 {
        return Err("--batch must be at least 1".into());
    }
    let pool = api::db::connect(&args.database_url, 4).await?;
    let per_prompt = args.versions_per_prompt + 1;
    let prompts_per_batch = (args.batch / per_prompt).max(1);
    let mut seeder = Seeder {
        tenant: args.tenant.clone(),
        actor_key_id: Uuid::now_v7().to_string(),
        per_prompt,
        next_prompt: 0,
    };
    let started = Instant::now();
    let mut remaining = args.events;
    let mut inserted: u64 = 0;
    let mut reported: u64 = 0;
    // Two statements in flight: one batch is built while the previous one is inserted.
    let mut in_flight = tokio::task::JoinSet::new();
    loop {
        while in_flight.len() >= 2 || (remaining == 0 && !in_flight.is_empty()) {
            let Some(done) = in_flight.join_next().await else {
                break;
            };
            inserted += done.map_err(|e| format!("an insert task failed: {e}"))?? as u64;
            if inserted - reported >= 100_000 {
                reported = inserted;
                eprintln!(
                    "  {inserted}/{} events ({:.0}/s)",
                    args.events,
                    inserted as f64 / started.elapsed().as_secs_f64()
                );
            }
        }
        if remaining == 0 {
            break;
        }
        let batch = seeder.batch(prompts_per_batch, remaining)?;
        remaining -= batch.len() as u64;
        in_flight.spawn(insert_batch(pool.clone(), batch));
    }
    let elapsed = started.elapsed().as_secs_f64();
    let total: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&pool)
        .await?;
    println!(
        "seeded {inserted} events ({} prompts of tenant {:?}) in {elapsed:.2}s ({:.0} events/s); the log now holds {total} events",
        seeder.next_prompt,
        args.tenant,
        inserted as f64 / elapsed.max(f64::MIN_POSITIVE)
    );
    Ok(())
}

async fn rebuild(args: RebuildArgs) -> Result<()> {
    if args.runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    let all = projections::all();
    let Some(projection) = all.iter().find(|p| p.name() == args.projection) else {
        let names: Vec<&str> = all.iter().map(|p| p.name()).collect();
        return Err(format!(
            "unknown projection {:?}; known: {}",
            args.projection,
            names.join(", ")
        )
        .into());
    };
    let pool = api::db::connect(&args.database_url, 8).await?;
    let table = projection.tables().first().copied().unwrap_or("events");
    let mut reports = Vec::new();
    for run in 1..=args.runs {
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let probe = tokio::spawn(probe_during_rebuild(pool.clone(), table, stopped));
        let report = if args.in_place {
            replay::rebuild_in_place(&pool, projection.as_ref(), false).await
        } else {
            replay::rebuild(&pool, projection.as_ref(), false).await
        };
        let _ = stop.send(true);
        let probed = probe.await.map_err(|e| format!("the probe failed: {e}"))??;
        let report = report.map_err(|e| format!("rebuilding {}: {e}", args.projection))?;
        println!(
            "run {run}: {} events in {:.2}s ({:.0} events/s); live tables locked {:.3}s; \
             slowest read of {table} {:.0} ms; the settled log stood still for at most {:.2}s",
            report.events,
            report.seconds,
            report.events_per_second(),
            report.locked_seconds,
            probed.slowest_read.as_secs_f64() * 1000.0,
            probed.longest_stall.as_secs_f64()
        );
        if !report.phases.is_empty() {
            let phases: Vec<String> = report
                .phases
                .iter()
                .map(|(name, seconds)| format!("{name} {seconds:.2}s"))
                .collect();
            println!("  phases: {}", phases.join(", "));
        }
        if let Some(path) = &args.json {
            append_json(
                path,
                &json!({
                    "kind": "rebuild",
                    "projection": args.projection,
                    "run": run,
                    "events": report.events,
                    "seconds": report.seconds,
                    "events_per_second": report.events_per_second(),
                    "in_place": args.in_place,
                    "locked_seconds": report.locked_seconds,
                    "phases": report.phases.iter().map(|(name, seconds)| json!({"phase": name, "seconds": seconds})).collect::<Vec<_>>(),
                    "slowest_read_ms": probed.slowest_read.as_secs_f64() * 1000.0,
                    "longest_settled_stall_seconds": probed.longest_stall.as_secs_f64(),
                    "at": now_rfc3339(),
                }),
            )?;
        }
        reports.push(report);
    }
    let mut secs: Vec<f64> = reports.iter().map(|r| r.seconds).collect();
    let mut rates: Vec<f64> = reports.iter().map(|r| r.events_per_second()).collect();
    println!(
        "median of {} runs: {:.2}s ({:.0} events/s) for the {} projection",
        args.runs,
        median(&mut secs),
        median(&mut rates),
        args.projection
    );
    Ok(())
}

/// What other work saw while a rebuild ran.
struct Probed {
    /// The slowest of the reads of the rebuilt projection's first table made meanwhile.
    slowest_read: Duration,
    /// The longest time the settled end of the log (what every runner and feed reads up to)
    /// did not move although transactions kept committing.
    longest_stall: Duration,
}

/// Every 20 ms until `stopped`, on two tasks so that a read waiting for a lock does not hide
/// the other measure: reads a row of `table`, as a query would; and commits a transaction of
/// its own, then sees whether the horizon readers of the log wait for has passed it.
async fn probe_during_rebuild(
    pool: PgPool,
    table: &'static str,
    stopped: tokio::sync::watch::Receiver<bool>,
) -> Result<Probed> {
    let reads = {
        let (pool, mut stopped) = (pool.clone(), stopped.clone());
        tokio::spawn(async move {
            let mut slowest = Duration::ZERO;
            while !*stopped.borrow() {
                let started = Instant::now();
                sqlx::query(&format!("select * from {table} limit 1"))
                    .fetch_optional(&pool)
                    .await?;
                slowest = slowest.max(started.elapsed());
                let _ = tokio::time::timeout(Duration::from_millis(20), stopped.changed()).await;
            }
            Ok::<_, sqlx::Error>(slowest)
        })
    };
    let mut stopped = stopped;
    let mut longest_stall = Duration::ZERO;
    let mut stalled_since: Option<Instant> = None;
    while !*stopped.borrow() {
        let started = Instant::now();
        let committed: i64 = sqlx::query_scalar("select pg_current_xact_id()::text::bigint")
            .fetch_one(&pool)
            .await?;
        let horizon: i64 = sqlx::query_scalar("select events_horizon()::text::bigint")
            .fetch_one(&pool)
            .await?;
        if horizon > committed {
            stalled_since = None;
        } else {
            let since = *stalled_since.get_or_insert(started);
            longest_stall = longest_stall.max(since.elapsed());
        }
        let _ = tokio::time::timeout(Duration::from_millis(20), stopped.changed()).await;
    }
    let slowest_read = reads.await.map_err(|e| format!("the read probe failed: {e}"))??;
    Ok(Probed {
        slowest_read,
        longest_stall,
    })
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    match n {
        0 => 0.0,
        _ if n % 2 == 1 => values[n / 2],
        _ => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

// ---------------------------------------------------------------------------------------

fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true)
}

fn append_json(path: &Path, value: &Value) -> Result<()> {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    writeln!(file, "{value}").map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(())
}

// ---------------------------------------------------------------------------------------
// The model gateway

mod gateway {
    use std::sync::Arc;
    use std::time::Duration;

    use reqwest::header::CONTENT_TYPE;
    use serde_json::{json, Value};

    use super::{
        append_json, chain, excerpt, median, now_rfc3339, run_clients, seconds, Api, ClientStats,
        GatewayArgs, Percentiles, Result, ServerArgs,
    };

    /// The two requests compared: a prompt run through aipm, and the chat completion aipm
    /// sends for it, sent straight to the provider.
    struct Requests {
        aipm: Api,
        run_path: String,
        /// Client `i` sends body `i mod len`: one per feature, or one without a feature.
        run_bodies: Vec<String>,
        provider: Api,
        chat_body: String,
    }

    impl Requests {
        fn through_aipm(&self, client: usize) -> reqwest::RequestBuilder {
            self.aipm
                .client
                .post(self.aipm.url(&self.run_path))
                .bearer_auth(&*self.aipm.key)
                .header(CONTENT_TYPE, "application/json")
                .body(self.run_bodies[client % self.run_bodies.len()].clone())
        }

        fn direct(&self) -> reqwest::RequestBuilder {
            self.provider
                .client
                .post(self.provider.url("/chat/completions"))
                .bearer_auth(&*self.provider.key)
                .header(CONTENT_TYPE, "application/json")
                .body(self.chat_body.clone())
        }
    }

    #[derive(Debug, Clone, Copy, PartialEq, Eq)]
    enum Target {
        Aipm,
        Direct,
    }

    /// One side of a run, as measured.
    struct Side {
        requests: usize,
        rate: f64,
        latency: Percentiles,
        non_2xx: u64,
        errors: u64,
        first_failure: Option<String>,
    }

    impl Side {
        fn of(mut stats: ClientStats, duration: Duration) -> Self {
            let requests = stats.latencies_us.len();
            Self {
                requests,
                rate: requests as f64 / duration.as_secs_f64(),
                latency: Percentiles::of(&mut stats.latencies_us),
                non_2xx: stats.non_2xx,
                errors: stats.errors,
                first_failure: stats.first_failure,
            }
        }

        fn failed(&self) -> u64 {
            self.non_2xx + self.errors
        }

        fn to_json(&self) -> Value {
            let p = &self.latency;
            json!({ "requests": self.requests, "rps": self.rate, "p50_ms": p.p50, "p90_ms": p.p90,
                    "p99_ms": p.p99, "max_ms": p.max, "mean_ms": p.mean, "non_2xx": self.non_2xx,
                    "errors": self.errors })
        }

        fn print(&self, run: u32, name: &str) {
            let p = &self.latency;
            println!(
                "{run:>4} {name:>7} {:>9} {:>9.1} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>8} {:>7}",
                self.requests, self.rate, p.p50, p.p90, p.p99, p.max, self.non_2xx, self.errors
            );
            if let Some(failure) = &self.first_failure {
                eprintln!("             first failure: {failure}");
            }
        }
    }

    /// The provider's share and the rest of aipm's calls, as aipm's answers report them.
    struct ServerAccount {
        provider: Percentiles,
        call_minus_provider: Percentiles,
    }

    impl ServerAccount {
        fn of(stats: &ClientStats) -> Self {
            let mut provider_us: Vec<u64> = stats
                .server_timings
                .iter()
                .map(|t| t.provider_ms * 1000)
                .collect();
            let mut rest_us: Vec<u64> = stats
                .server_timings
                .iter()
                .map(|t| t.call_ms.saturating_sub(t.provider_ms) * 1000)
                .collect();
            Self {
                provider: Percentiles::of(&mut provider_us),
                call_minus_provider: Percentiles::of(&mut rest_us),
            }
        }
    }

    pub async fn run(args: GatewayArgs) -> Result<()> {
        let duration = seconds(args.duration, "duration")?;
        let warmup = seconds(args.warmup, "warmup")?;
        if duration.is_zero() || args.clients == 0 || args.runs == 0 {
            return Err("--duration, --clients and --runs must be more than 0".into());
        }
        let variables: Value =
            serde_json::from_str(&args.variables).map_err(|e| format!("--variables is not JSON: {e}"))?;
        if !variables.is_object() {
            return Err("--variables must be a JSON object".into());
        }
        let idle = args.clients * 2;
        let aipm = Api::new(&args.server, idle)?;
        aipm.preflight().await?;
        let provider = Api::new(
            &ServerArgs {
                url: args.provider_url.clone(),
                key: args.provider_key.clone(),
            },
            idle,
        )?;
        let requests = Arc::new(Requests {
            aipm,
            run_path: format!("/v1/prompts/{}/run", args.prompt),
            run_bodies: run_bodies(&variables, args.features),
            provider,
            chat_body: json!({ "model": args.model_id,
                               "messages": [{ "role": "user", "content": args.message }] })
            .to_string(),
        });
        same_answer(&requests).await?;

        println!(
            "gateway overhead: {} clients, {:.1}s warm-up and {:.1}s measured per side, {} runs",
            args.clients,
            warmup.as_secs_f64(),
            duration.as_secs_f64(),
            args.runs
        );
        println!("  aipm:   POST {}", requests.aipm.url(&requests.run_path));
        println!("  direct: POST {}", requests.provider.url("/chat/completions"));
        println!(
            "{:>4} {:>7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>8} {:>7}",
            "run", "side", "requests", "req/s", "p50 ms", "p90 ms", "p99 ms", "max ms", "non-2xx", "errors"
        );
        // Per run: direct req/s, p50, p99; aipm req/s, p50, p99; overhead p50, p99.
        let mut summary: Vec<[f64; 8]> = Vec::new();
        let mut invalid = Vec::new();
        for run in 1..=args.runs {
            let window = (warmup, duration);
            // Whichever side goes first leaves the machine warmer or busier (pools, caches,
            // the WAL) for the second: alternating keeps that from favouring one side.
            let aipm_first = run % 2 == 0;
            let (direct, through_aipm) = if aipm_first {
                let through_aipm = measure(&requests, Target::Aipm, args.clients, window).await?;
                let direct = measure(&requests, Target::Direct, args.clients, window).await?;
                (direct, through_aipm)
            } else {
                let direct = measure(&requests, Target::Direct, args.clients, window).await?;
                let through_aipm = measure(&requests, Target::Aipm, args.clients, window).await?;
                (direct, through_aipm)
            };
            let account = ServerAccount::of(&through_aipm);
            let (direct, through_aipm) = (Side::of(direct, duration), Side::of(through_aipm, duration));
            direct.print(run, "direct");
            through_aipm.print(run, "aipm");
            let overhead_p50 = through_aipm.latency.p50 - direct.latency.p50;
            let overhead_p99 = through_aipm.latency.p99 - direct.latency.p99;
            println!(
                "             overhead p50 {overhead_p50:+.2} ms, p99 {overhead_p99:+.2} ms; aipm's answers: provider p50 {:.0} ms, p99 {:.0} ms; latency_ms minus it p50 {:.0} ms, p99 {:.0} ms",
                account.provider.p50, account.provider.p99, account.call_minus_provider.p50, account.call_minus_provider.p99
            );
            let failed = direct.failed() + through_aipm.failed();
            if failed > 0 {
                eprintln!("             run {run} is not a valid measurement: {failed} requests failed");
                invalid.push(run);
            }
            if let Some(path) = &args.json {
                let mut aipm_json = through_aipm.to_json();
                aipm_json["answers_provider_p50_ms"] = json!(account.provider.p50);
                aipm_json["answers_provider_p99_ms"] = json!(account.provider.p99);
                aipm_json["answers_latency_minus_provider_p50_ms"] = json!(account.call_minus_provider.p50);
                aipm_json["answers_latency_minus_provider_p99_ms"] = json!(account.call_minus_provider.p99);
                append_json(
                    path,
                    &json!({ "kind": "gateway", "run": run, "clients": args.clients, "features": args.features,
                             "warmup_s": warmup.as_secs_f64(), "duration_s": duration.as_secs_f64(),
                             "aipm_first": aipm_first, "direct": direct.to_json(), "aipm": aipm_json,
                             "overhead_p50_ms": overhead_p50, "overhead_p99_ms": overhead_p99,
                             "valid": failed == 0, "at": now_rfc3339() }),
                )?;
            }
            summary.push([
                direct.rate,
                direct.latency.p50,
                direct.latency.p99,
                through_aipm.rate,
                through_aipm.latency.p50,
                through_aipm.latency.p99,
                overhead_p50,
                overhead_p99,
            ]);
        }
        let column = |i: usize| median(&mut summary.iter().map(|row| row[i]).collect::<Vec<_>>());
        println!(
            "median of {} runs: direct {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms; aipm {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms; overhead p50 {:+.2} ms, p99 {:+.2} ms",
            args.runs,
            column(0),
            column(1),
            column(2),
            column(3),
            column(4),
            column(5),
            column(6),
            column(7)
        );
        if !invalid.is_empty() {
            return Err(format!("runs {invalid:?} had failed requests: not a valid measurement").into());
        }
        Ok(())
    }

    async fn measure(
        requests: &Arc<Requests>,
        target: Target,
        clients: usize,
        window: (Duration, Duration),
    ) -> Result<ClientStats> {
        let senders = (0..clients).map(|client| {
            let requests = Arc::clone(requests);
            move |_n: u64| match target {
                Target::Aipm => requests.through_aipm(client),
                Target::Direct => requests.direct(),
            }
        });
        run_clients(senders, target == Target::Aipm, window).await
    }

    /// The bodies of runs with `variables`: one per feature (`feature-0`, `feature-1`…), or
    /// with no features one without a feature.
    fn run_bodies(variables: &Value, features: usize) -> Vec<String> {
        if features == 0 {
            return vec![json!({ "variables": variables }).to_string()];
        }
        (0..features)
            .map(|n| json!({ "variables": variables, "feature": format!("feature-{n}") }).to_string())
            .collect()
    }

    /// Checks that both sides make the same call: the provider answers with the message it
    /// was sent, so the two answers' text must be the same.
    async fn same_answer(requests: &Requests) -> Result<()> {
        let through_aipm = answer_of(requests.through_aipm(0), "the run through aipm").await?;
        let direct = answer_of(requests.direct(), "the direct request").await?;
        let aipm_text = through_aipm["output"].as_str();
        let direct_text = direct["choices"][0]["message"]["content"].as_str();
        if aipm_text.is_none() || aipm_text != direct_text {
            return Err(format!(
                "aipm and the direct request do not make the same call: aipm's answer {aipm_text:?}, the direct one {direct_text:?} (is --message the version's template filled with --variables?)"
            )
            .into());
        }
        Ok(())
    }

    async fn answer_of(request: reqwest::RequestBuilder, what: &str) -> Result<Value> {
        let response = request
            .send()
            .await
            .map_err(|e| format!("{what}: {}", chain(&e)))?;
        let status = response.status();
        let text = response
            .text()
            .await
            .map_err(|e| format!("{what}: reading the answer: {}", chain(&e)))?;
        if !status.is_success() {
            return Err(format!("{what}: HTTP {status}: {}", excerpt(&text)).into());
        }
        serde_json::from_str(&text).map_err(|e| format!("{what}: the answer is not JSON: {e}").into())
    }
}

// ---------------------------------------------------------------------------------------
// The NATS feed

mod relay {
    use std::time::{Duration, Instant};

    use async_nats::jetstream::consumer::{push, DeliverPolicy};
    use async_nats::jetstream::message::PublishMessage;
    use async_nats::jetstream::{self, Context};
    use domain::position::GlobalCursor;
    use futures::StreamExt;
    use projections::relay::{Relay, RelaySettings, CONTENT_TYPE};
    use projections::{cloudevent, global_order};
    use serde_json::{json, Value};
    use uuid::Uuid;

    use super::{
        append_json, median, now_rfc3339, seconds, Api, DeleteStreamArgs, Percentiles, RelayArgs, Result,
        SeedArgs, ServerArgs,
    };

    /// Acks in flight in the baseline: the relay's batch.
    const WINDOW: usize = projections::runner::BATCH_SIZE as usize;
    /// How long to wait for the last messages of a latency run.
    const DRAIN: Duration = Duration::from_secs(10);

    pub async fn run(args: RelayArgs) -> Result<()> {
        if args.runs == 0 {
            return Err("--runs must be at least 1".into());
        }
        if args.database_url.is_none() && args.url.is_none() {
            return Err("give --database-url (throughput), --url and --key (latency), or both".into());
        }
        let client = async_nats::connect(&args.nats_url)
            .await
            .map_err(|e| format!("cannot reach NATS at {}: {e}", args.nats_url))?;
        let context = jetstream::new(client.clone());
        if let Some(url) = &args.database_url {
            throughput(&args, url, &context).await?;
        }
        if let Some(url) = &args.url {
            let key = args.key.clone().ok_or("--url needs --key (or AIPM_KEY)")?;
            let api = Api::new(
                &ServerArgs {
                    url: url.clone(),
                    key,
                },
                64,
            )?;
            api.preflight().await?;
            latency(&args, &api, &client, &context).await?;
        }
        Ok(())
    }

    pub async fn delete_stream(args: DeleteStreamArgs) -> Result<()> {
        integration_tests::nats::delete_stream_named(&args.nats_url, &args.stream).await;
        Ok(())
    }

    /// A stream name of this run's own.
    fn scratch(kind: &str) -> String {
        format!("AIPM_BENCH_{kind}_{}", Uuid::new_v4().simple())
    }

    async fn throughput(args: &RelayArgs, url: &str, context: &Context) -> Result<()> {
        let pool = api::db::connect(url, 4).await?;
        let present: i64 = sqlx::query_scalar("select count(*) from events")
            .fetch_one(&pool)
            .await?;
        if (present as u64) < args.events {
            super::seed_events(SeedArgs {
                database_url: url.to_string(),
                events: args.events - present as u64,
                versions_per_prompt: 9,
                batch: 10_000,
                tenant: "bench".into(),
            })
            .await?;
        }
        // The baseline's messages: the relay's, encoded beforehand so that only publishing
        // is timed.
        let mut conn = pool.acquire().await?;
        let events = global_order::read_after(&mut conn, GlobalCursor::START, i64::MAX).await?;
        drop(conn);
        let last = events.last().map(|e| e.cursor).ok_or("the log is empty")?;
        let prefix = "aipmbench.events";
        let mut messages = Vec::with_capacity(events.len());
        for event in &events {
            messages.push((
                cloudevent::nats_subject(prefix, event),
                cloudevent::event_id(event),
                cloudevent::to_json(event)?,
            ));
        }
        drop(events);
        println!(
            "relay throughput: {} events in the log, {} runs",
            messages.len(),
            args.runs
        );
        println!(
            "{:>4} {:>16} {:>16} {:>8}",
            "run", "relay events/s", "raw JS msg/s", "share"
        );
        let (mut relayed, mut raw) = (Vec::new(), Vec::new());
        for run in 1..=args.runs {
            let stream = scratch("RAW");
            context
                .create_stream(jetstream::stream::Config {
                    name: stream.clone(),
                    subjects: vec![format!("{prefix}.{}.>", stream.to_lowercase())],
                    storage: jetstream::stream::StorageType::File,
                    ..Default::default()
                })
                .await
                .map_err(|e| format!("creating {stream}: {e}"))?;
            let subject_prefix = format!("{prefix}.{}", stream.to_lowercase());
            let started = Instant::now();
            for window in messages.chunks(WINDOW) {
                let mut acks = Vec::with_capacity(window.len());
                for (subject, id, body) in window {
                    let subject = format!("{subject_prefix}{}", &subject[prefix.len()..]);
                    let message = PublishMessage::build()
                        .payload(body.clone().into())
                        .message_id(id)
                        .header("Content-Type", CONTENT_TYPE);
                    acks.push(context.send_publish(subject, message).await?);
                }
                for ack in acks {
                    ack.await?;
                }
            }
            let raw_rate = messages.len() as f64 / started.elapsed().as_secs_f64();
            context.delete_stream(&stream).await?;

            let settings = RelaySettings {
                nats_url: args.nats_url.clone(),
                stream: scratch("RELAY"),
                subject_prefix: format!("aipmbench.relay.{}", Uuid::new_v4().simple()),
            };
            let (_wake, woken) = tokio::sync::watch::channel(0u64);
            let started = Instant::now();
            let relay = Relay::spawn(pool.clone(), settings.clone(), woken);
            if !relay.wait_for(last, Duration::from_secs(3600)).await {
                return Err(format!("the relay did not finish: {:?}", relay.status()).into());
            }
            let relay_rate = messages.len() as f64 / started.elapsed().as_secs_f64();
            drop(relay);
            context.delete_stream(&settings.stream).await?;
            sqlx::query("delete from projection_checkpoint where projection_name = $1")
                .bind(settings.checkpoint_name())
                .execute(&pool)
                .await?;
            println!(
                "{run:>4} {relay_rate:>16.0} {raw_rate:>16.0} {:>7.0}%",
                100.0 * relay_rate / raw_rate
            );
            if let Some(path) = &args.json {
                append_json(
                    path,
                    &json!({ "kind": "relay-throughput", "run": run, "events": messages.len(),
                             "relay_events_per_second": relay_rate, "raw_messages_per_second": raw_rate,
                             "at": now_rfc3339() }),
                )?;
            }
            relayed.push(relay_rate);
            raw.push(raw_rate);
        }
        println!(
            "median: relay {:.0} events/s, raw JetStream {:.0} msg/s",
            median(&mut relayed),
            median(&mut raw)
        );
        Ok(())
    }

    /// The messages `stream` receives from now on, each with its receive time (wall clock
    /// and monotonic) and its JSON body.
    async fn subscribe(
        client: &async_nats::Client,
        context: &Context,
        stream: &str,
    ) -> Result<impl futures::Stream<Item = (chrono::DateTime<chrono::Utc>, Instant, Value)>> {
        let consumer = context
            .get_stream(stream)
            .await
            .map_err(|e| format!("stream {stream}: {e}"))?
            .create_consumer(push::OrderedConfig {
                deliver_subject: client.new_inbox(),
                deliver_policy: DeliverPolicy::New,
                ..Default::default()
            })
            .await?;
        let messages = consumer.messages().await?;
        Ok(messages.filter_map(|message| async move {
            let received_at = chrono::Utc::now();
            let received = Instant::now();
            let message = message.ok()?;
            let body: Value = serde_json::from_slice(&message.payload).ok()?;
            Some((received_at, received, body))
        }))
    }

    async fn latency(
        args: &RelayArgs,
        api: &Api,
        client: &async_nats::Client,
        context: &Context,
    ) -> Result<()> {
        let duration = seconds(args.duration, "duration")?;
        if args.rate == 0 || duration.is_zero() {
            return Err("--rate and --duration must be more than 0".into());
        }
        let interval = Duration::from_secs_f64(1.0 / f64::from(args.rate));
        wait_until_caught_up(api).await?;
        println!(
            "commit→subscriber latency: {} commands/s for {:.0}s, {} runs (ms)",
            args.rate,
            duration.as_secs_f64(),
            args.runs
        );
        println!(
            "{:>4} {:>8} {:>8} {:>8} {:>9} {:>8} {:>8} {:>10} {:>10}",
            "run", "events", "p50", "p99", "max", "raw p50", "raw p99", "cmd p50", "cmd p99"
        );
        let mut summary: Vec<[f64; 6]> = Vec::new();
        for run in 1..=args.runs {
            let tag = Uuid::new_v4().simple().to_string();
            let feed = subscribe(client, context, &args.stream).await?;
            let receiver = {
                let tag = tag.clone();
                tokio::spawn(async move {
                    let mut latencies_us = Vec::new();
                    let mut feed = std::pin::pin!(feed);
                    while let Ok(Some((received_at, _, body))) =
                        tokio::time::timeout(DRAIN, feed.next()).await
                    {
                        let ours = body["data"]["name"].as_str().is_some_and(|n| n.contains(&tag));
                        let time = body["time"]
                            .as_str()
                            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok());
                        if let (true, Some(time)) = (ours, time) {
                            let micros = (received_at - time.with_timezone(&chrono::Utc))
                                .num_microseconds()
                                .unwrap_or(0);
                            latencies_us.push(micros.max(0) as u64);
                        }
                    }
                    latencies_us
                })
            };
            // Open loop: a command every `interval`, whether or not the previous answered.
            let mut ticker = tokio::time::interval(interval);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
            let deadline = Instant::now() + duration;
            let mut commands = tokio::task::JoinSet::new();
            let mut n = 0u64;
            while Instant::now() < deadline {
                ticker.tick().await;
                n += 1;
                let api = api.clone();
                let name = format!("feed {tag} #{n}");
                commands.spawn(async move {
                    let started = Instant::now();
                    api.create_prompt(&name)
                        .await
                        .map(|_| started.elapsed().as_micros() as u64)
                });
            }
            let mut command_us = Vec::new();
            while let Some(done) = commands.join_next().await {
                command_us.push(done.map_err(|e| format!("a command task failed: {e}"))??);
            }
            let sent = command_us.len();
            // The receiver stops once nothing has arrived for DRAIN.
            let mut latencies_us = receiver
                .await
                .map_err(|e| format!("the subscriber failed: {e}"))?;
            if latencies_us.len() != sent {
                return Err(format!(
                    "sent {sent} commands but received {} of their events",
                    latencies_us.len()
                )
                .into());
            }
            let feed_p = Percentiles::of(&mut latencies_us);
            let command_p = Percentiles::of(&mut command_us);
            let raw_p = raw_latency(client, context, args.rate, duration).await?;
            println!(
                "{run:>4} {sent:>8} {:>8.2} {:>8.2} {:>9.2} {:>8.2} {:>8.2} {:>10.2} {:>10.2}",
                feed_p.p50, feed_p.p99, feed_p.max, raw_p.p50, raw_p.p99, command_p.p50, command_p.p99
            );
            if let Some(path) = &args.json {
                append_json(
                    path,
                    &json!({ "kind": "relay-latency", "run": run, "rate": args.rate, "events": sent,
                             "p50_ms": feed_p.p50, "p99_ms": feed_p.p99, "max_ms": feed_p.max,
                             "raw_p50_ms": raw_p.p50, "raw_p99_ms": raw_p.p99,
                             "command_p50_ms": command_p.p50, "command_p99_ms": command_p.p99, "at": now_rfc3339() }),
                )?;
            }
            summary.push([
                feed_p.p50,
                feed_p.p99,
                raw_p.p50,
                raw_p.p99,
                command_p.p50,
                command_p.p99,
            ]);
        }
        let column = |i: usize| median(&mut summary.iter().map(|row| row[i]).collect::<Vec<_>>());
        println!(
            "median: feed p50 {:.2} ms, p99 {:.2} ms; raw JetStream p50 {:.2} ms, p99 {:.2} ms; commands p50 {:.2} ms, p99 {:.2} ms",
            column(0),
            column(1),
            column(2),
            column(3),
            column(4),
            column(5)
        );
        Ok(())
    }

    /// Waits until the server's feed has published its whole log, so that a backlog left
    /// by earlier load does not count as latency.
    async fn wait_until_caught_up(api: &Api) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let readiness: Value = api.client.get(api.url("/readyz")).send().await?.json().await?;
            let feed = &readiness["nats_feed"];
            if feed["status"] == "off" {
                return Err("the server's NATS feed is off: start it with NATS_URL set".into());
            }
            if feed["status"] == "ok" && feed["events_behind"] == 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!("the server's feed did not catch up: {feed}").into());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Publish → ordered consumer latency of raw JetStream at `rate` messages/s.
    async fn raw_latency(
        client: &async_nats::Client,
        context: &Context,
        rate: u32,
        duration: Duration,
    ) -> Result<Percentiles> {
        let stream = scratch("LATENCY");
        let subject = format!("aipmbench.latency.{}", stream.to_lowercase());
        context
            .create_stream(jetstream::stream::Config {
                name: stream.clone(),
                subjects: vec![subject.clone()],
                storage: jetstream::stream::StorageType::File,
                ..Default::default()
            })
            .await?;
        let feed = subscribe(client, context, &stream).await?;
        let origin = Instant::now();
        let receiver = tokio::spawn(async move {
            let mut latencies_us = Vec::new();
            let mut feed = std::pin::pin!(feed);
            while let Ok(Some((_, received, body))) = tokio::time::timeout(DRAIN, feed.next()).await {
                if let Some(sent_us) = body["sent_us"].as_u64() {
                    let received_us = received.duration_since(origin).as_micros() as u64;
                    latencies_us.push(received_us.saturating_sub(sent_us));
                }
            }
            latencies_us
        });
        let mut ticker = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
        let deadline = Instant::now() + duration;
        let mut acks = tokio::task::JoinSet::new();
        let mut sent = 0usize;
        while Instant::now() < deadline {
            ticker.tick().await;
            let body = json!({ "sent_us": origin.elapsed().as_micros() as u64 }).to_string();
            let ack = context.publish(subject.clone(), body.into()).await?;
            acks.spawn(async move { ack.await.map(|_| ()) });
            sent += 1;
        }
        while let Some(done) = acks.join_next().await {
            done.map_err(|e| format!("an ack task failed: {e}"))??;
        }
        let mut latencies_us = receiver
            .await
            .map_err(|e| format!("the subscriber failed: {e}"))?;
        context.delete_stream(&stream).await?;
        if latencies_us.len() != sent {
            return Err(format!("published {sent} messages but received {}", latencies_us.len()).into());
        }
        Ok(Percentiles::of(&mut latencies_us))
    }
}
