//! The application context every handler receives, and how a command runs through it: once
//! per idempotency key. The read models a command affects are written in its transaction
//! (inline projections), so its answer and the caller's next read see them at once.

use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;

use axum::extract::FromRef;
use commands::{AggregateStore, CommandError, Committed, EventStore, IdempotencyStore};
use domain::access::{ApiKey, Tenant};
use domain::approval::{ChangeRequest, Protection};
use domain::audit::ReadRecord;
use domain::budget::Budget;
use domain::bulk::BulkJob;
use domain::category::PromptCategory;
use domain::config::ConfigEntry;
use domain::conversation::Conversation;
use domain::experiment::Experiment;
use domain::export::ExportJob;
use domain::flag::Flag;
use domain::health::ProviderHealth;
use domain::incident::Incident;
use domain::model::Model;
use domain::position::GlobalCursor;
use domain::prompt::Prompt;
use domain::provider::Provider;
use domain::Governed;
use projections::audit::anchor::{self, AnchorSettings};
use projections::budget::live::LiveBudgets;
use projections::catalog::live::LiveLabels;
use projections::experiment::live::LiveExperiments;
use projections::feed::Feed;
use projections::flag::live::LiveFlags;
use projections::leader::Leadership;
use projections::relay::Relay;
use projections::Projections;
use sqlx::PgPool;

use crate::auth::Authenticator;
use crate::error::{ApiError, ApiResult, DomainProblem};
use crate::extract::CommandContext;
use crate::hardening::Guards;
use crate::idempotency::{IdempotencyGate, IdempotentRequest};
use crate::settings::{FeedSettings, Settings};

/// One context object rather than many extractors: every handler gets the same view.
#[derive(Clone)]
pub struct AppState(pub Arc<App>);

impl Deref for AppState {
    type Target = App;

    fn deref(&self) -> &App {
        &self.0
    }
}

pub struct App {
    /// Read models and the event log.
    pub pool: PgPool,
    pub prompts: AggregateStore<Prompt>,
    pub categories: AggregateStore<PromptCategory>,
    pub providers: AggregateStore<Provider>,
    pub models: AggregateStore<Model>,
    pub config: AggregateStore<ConfigEntry>,
    pub flags: AggregateStore<Flag>,
    pub protections: AggregateStore<Protection>,
    pub change_requests: AggregateStore<ChangeRequest>,
    pub budgets: AggregateStore<Budget>,
    pub bulk_jobs: AggregateStore<BulkJob>,
    pub experiments: AggregateStore<Experiment>,
    pub exports: AggregateStore<ExportJob>,
    /// Where export files are kept.
    pub export_store: crate::export_files::ExportStore,
    pub export_settings: crate::settings::ExportSettings,
    /// Wakes the export runner when this process accepts a job.
    pub export_requested: Arc<tokio::sync::Notify>,
    /// Every experiment's salt, variants and status, in memory and current with the log:
    /// what assignment answers from.
    pub live_experiments: LiveExperiments,
    pub provider_health: AggregateStore<ProviderHealth>,
    pub incidents: AggregateStore<Incident>,
    pub conversations: AggregateStore<Conversation>,
    /// Calls models for runs and conversations; its connections are pooled per provider.
    pub gateway: crate::gateway::Gateway,
    /// Probes providers' health (`crate::prober`): no redirects followed, no credentials sent.
    pub probe_client: reqwest::Client,
    /// Stores usage records (telemetry, not events).
    pub usage: commands::usage::UsageStore,
    /// Stores the gateway's usage records, each call's as it ends, grouped with the others
    /// ending at the same time.
    pub gateway_usage: commands::usage::UsageBatcher,
    /// Every feature flag, in memory and current with the log: evaluations read only this.
    pub live_flags: LiveFlags,
    /// Every prompt's labels and the versions they point at, in memory and current with the
    /// log: what `resolve` answers from.
    pub live_labels: LiveLabels,
    /// Every budget's standing in its current period: what the budget check answers from.
    pub live_budgets: LiveBudgets,
    /// Wakes the scheduler when this process schedules a change.
    pub schedule_added: Arc<tokio::sync::Notify>,
    /// Wakes the bulk runner when this process accepts a job.
    pub bulk_submitted: Arc<tokio::sync::Notify>,
    pub keys: AggregateStore<ApiKey>,
    pub tenants: AggregateStore<Tenant>,
    /// Records of reads of the audit log and key listings.
    pub read_records: AggregateStore<ReadRecord>,
    /// The projections this process runs with runners, for readers that wait for them.
    pub projections: Projections,
    /// Idempotency keys and the responses stored under them.
    pub idempotency: IdempotencyStore,
    /// Rate limits, brute-force protection and the other request limits.
    pub guards: Arc<Guards>,
    /// Finds the caller of a request by its key.
    pub authenticator: Authenticator,
    /// The live feed's shared tailer.
    pub feed: Feed,
    /// How the live feed's endpoints pace heartbeats.
    pub feed_settings: FeedSettings,
    /// The NATS feed, when configured. Commands never wait for it.
    pub relay: Option<Relay>,
    /// What `GET /metrics` renders.
    pub metrics: Arc<crate::metrics::Metrics>,
    /// Commands run and events appended by this process, by type.
    pub command_stats: Arc<commands::stats::CommandStats>,
    /// Where the audit chains are anchored, when configured.
    pub anchors: Option<AnchorSettings>,
    /// This process's candidacy for publishing the anchors, with a signing key.
    pub anchoring: Option<Leadership>,
    /// The lock this process holds while it lives (a role only it stands for), which its
    /// idempotency claims name so that a retry after its death need not wait for a lease.
    pub presence: Leadership,
}

/// How long a starting process waits to hold its presence lock before serving without it
/// (its claims then free themselves by their lease alone).
const PRESENCE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// Stands for a role of this process's own, and returns its lock's name once held.
async fn hold_presence(pool: &PgPool) -> (Leadership, Option<String>) {
    let role = format!("process {}", uuid::Uuid::new_v4());
    let presence = Leadership::spawn(pool, role.clone(), std::future::pending::<()>);
    let mut leading = presence.watch();
    let held = tokio::time::timeout(PRESENCE_WAIT, leading.wait_for(|leading| *leading))
        .await
        .is_ok_and(|held| held.is_ok());
    if !held {
        tracing::warn!("cannot hold this process's presence lock; idempotency claims will wait for their lease after a crash");
    }
    (presence, held.then(|| projections::leader::lock_name(&role)))
}

impl App {
    /// Starts the projections and builds the aggregate stores on `pool`.
    pub async fn start(pool: PgPool, settings: &Settings) -> Result<Self, sqlx::Error> {
        let store = EventStore::new(pool.clone(), projections::inline());
        let projections = Projections::spawn(pool.clone(), projections::all(), store.appended_signal());
        let (presence, holder) = hold_presence(&pool).await;
        let idempotency =
            IdempotencyStore::new(pool.clone(), settings.idempotency.ttl, settings.idempotency.lease);
        let idempotency = match holder {
            Some(lock_name) => idempotency.held_by(lock_name),
            None => idempotency,
        };
        crate::idempotency::spawn_cleanup(idempotency.clone(), settings.idempotency.cleanup_interval);
        let feed = Feed::start(
            pool.clone(),
            projections.wake_signal(),
            settings.feed.buffer,
            settings.feed.max_lag(),
        );
        let relay = settings
            .relay
            .clone()
            .map(|relay| Relay::spawn(pool.clone(), relay, projections.wake_signal()));
        let anchoring = settings
            .anchors
            .clone()
            .and_then(|anchors| anchor::spawn_periodic(pool.clone(), anchors));
        let guards = Arc::new(Guards::new(&settings.security));
        let live_flags = LiveFlags::start(pool.clone(), projections.wake_signal()).await?;
        let live_labels = LiveLabels::start(pool.clone(), projections.wake_signal()).await?;
        let live_experiments = LiveExperiments::start(pool.clone(), projections.wake_signal()).await?;
        let export_store =
            crate::export_files::ExportStore::local(&settings.exports.dir).map_err(sqlx::Error::Io)?;
        let live_budgets = LiveBudgets::default();
        live_budgets.refresh(&pool, chrono::Utc::now()).await?;
        let probe_client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|error| sqlx::Error::Configuration(Box::new(error)))?;
        let gateway_usage = commands::usage::UsageBatcher::start(pool.clone());
        let gateway = crate::gateway::Gateway::new(settings.gateway.clone())
            .map_err(|error| sqlx::Error::Configuration(Box::new(error)))?;
        Ok(App {
            authenticator: Authenticator::new(pool.clone(), guards.clone()),
            guards,
            pool,
            prompts: store.aggregates(()),
            categories: store.aggregates(()),
            providers: store.aggregates(()),
            models: store.aggregates(()),
            config: store.aggregates(()),
            keys: store.aggregates(()),
            tenants: store.aggregates(()),
            read_records: store.aggregates(()),
            projections,
            idempotency,
            feed,
            feed_settings: settings.feed.clone(),
            relay,
            anchors: settings.anchors.clone(),
            anchoring,
            presence,
            metrics: Arc::default(),
            command_stats: store.stats.clone(),
            flags: store.aggregates(()),
            protections: store.aggregates(()),
            change_requests: store.aggregates(()),
            budgets: store.aggregates(()),
            bulk_jobs: store.aggregates(()),
            experiments: store.aggregates(()),
            exports: store.aggregates(()),
            export_store,
            export_settings: settings.exports.clone(),
            export_requested: Arc::new(tokio::sync::Notify::new()),
            live_experiments,
            provider_health: store.aggregates(()),
            incidents: store.aggregates(()),
            conversations: store.aggregates(()),
            probe_client,
            gateway,
            usage: commands::usage::UsageStore::default(),
            gateway_usage,
            live_flags,
            live_labels,
            live_budgets,
            schedule_added: Arc::new(tokio::sync::Notify::new()),
            bulk_submitted: Arc::new(tokio::sync::Notify::new()),
        })
    }

    /// Runs a command, once per idempotency key.
    pub async fn execute<A>(
        &self,
        store: &AggregateStore<A>,
        aggregate_id: &str,
        command: A::Command,
        context: &CommandContext,
    ) -> ApiResult<Committed<A::Event>>
    where
        A: Governed + 'static,
        A::Command: Clone,
        A::Error: DomainProblem,
    {
        let run = store.execute(aggregate_id, command, context.expected_version, &context.metadata);
        let committed = apply_once(store, context.idempotency.as_ref(), run).await?;
        context.written.record(committed.cursor);
        Ok(committed)
    }

    /// [`execute`](Self::execute) for an aggregate whose id the server just generated.
    pub async fn create<A>(
        &self,
        store: &AggregateStore<A>,
        aggregate_id: &str,
        command: A::Command,
        context: &CommandContext,
    ) -> ApiResult<Committed<A::Event>>
    where
        A: Governed + 'static,
        A::Command: Clone,
        A::Error: DomainProblem,
    {
        let run = store.create(aggregate_id, command, &context.metadata);
        let committed = apply_once(store, context.idempotency.as_ref(), run).await?;
        context.written.record(committed.cursor);
        Ok(committed)
    }

    /// Each role led by one process at a time ([`projections::leader`]) that this process
    /// stands for, and whether it leads it now.
    pub fn leaderships(&self) -> Vec<(String, bool)> {
        let mut roles = self.projections.leaderships();
        if let Some(relay) = &self.relay {
            roles.push((relay.role().to_string(), relay.is_leading()));
        }
        if let Some(anchoring) = &self.anchoring {
            roles.push((anchoring.role().to_string(), anchoring.is_leading()));
        }
        roles
    }

    /// Waits until this process's views held in memory and its projections hold every
    /// event up to `cursor` (see [`crate::consistency`]). A cursor of a transaction the log
    /// has not reached is refused at once; one not read within `timeout` is `NotCaughtUp`.
    pub async fn read_after(&self, cursor: GlobalCursor, timeout: std::time::Duration) -> ApiResult<()> {
        let views = [
            self.live_flags.followed(),
            self.live_labels.followed(),
            self.live_experiments.followed(),
        ];
        let reached = |views: &[&projections::live::Followed]| views.iter().all(|v| v.cursor() >= cursor);
        if reached(&views)
            && self
                .projections
                .wait_for_all(cursor, std::time::Duration::ZERO)
                .await
        {
            return Ok(());
        }
        let ahead: bool =
            sqlx::query_scalar("select $1 >= pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
                .bind(cursor.transaction_id)
                .fetch_one(&self.pool)
                .await?;
        if ahead {
            return Err(ApiError::invalid(
                "Aipm-Read-After",
                "names a point the event log has not reached",
            ));
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut woken = self.projections.wake_signal();
        while !reached(&views) {
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::NotCaughtUp { cursor });
            }
            // The views read the log when woken; an event held back by an older transaction
            // still running becomes readable without an append to announce it.
            self.projections.wake();
            let _ = tokio::time::timeout(READ_AFTER_LOOK, woken.changed()).await;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if self.projections.wait_for_all(cursor, left).await {
            Ok(())
        } else {
            Err(ApiError::NotCaughtUp { cursor })
        }
    }

    /// Brings the budgets' standings in memory up to date with what this process has
    /// committed so far (usage, budget changes), waiting at most a few seconds.
    pub async fn refresh_budgets(&self) {
        self.live_budgets
            .refreshed(std::time::Duration::from_secs(5))
            .await;
    }

    /// What the idempotency middleware works with.
    pub fn idempotency_gate(&self) -> IdempotencyGate {
        IdempotencyGate {
            store: self.idempotency.clone(),
            authenticator: self.authenticator.clone(),
        }
    }
}

/// How long a read waiting for the views held in memory lets them read before nudging them
/// again.
const READ_AFTER_LOOK: std::time::Duration = std::time::Duration::from_millis(5);

impl FromRef<AppState> for Authenticator {
    fn from_ref(state: &AppState) -> Self {
        state.authenticator.clone()
    }
}

/// Runs a command once per idempotency key: for a keyed request whose key an earlier attempt
/// may have committed under, returns that attempt's result instead of running `command`
/// again. Without a key, just runs it.
async fn apply_once<A>(
    store: &AggregateStore<A>,
    request: Option<&IdempotentRequest>,
    command: impl Future<Output = Result<Committed<A::Event>, CommandError<A::Error>>>,
) -> ApiResult<Committed<A::Event>>
where
    A: Governed + 'static,
    A::Command: Clone,
    A::Error: DomainProblem,
{
    let Some(request) = request else {
        return Ok(command.await?);
    };
    if request.attempt.resumed {
        if let Some(committed) = store.recorded(&request.scope).await? {
            return Ok(committed);
        }
    }
    match command.await {
        Ok(committed) => Ok(committed),
        // An attempt that overlapped this one may have committed first; its result wins.
        Err(error) => match store.recorded(&request.scope).await {
            Ok(Some(committed)) => Ok(committed),
            _ => Err(error.into()),
        },
    }
}
