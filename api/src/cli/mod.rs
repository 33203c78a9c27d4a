//! The `aipm` command line. Configuration comes from flags or the environment, with
//! defaults that work against the local PostgreSQL. [`audit`]: `aipm audit verify`;
//! [`backup`]: `aipm backup` and `aipm restore`, whose lines [`event_lines`] writes;
//! [`database`]: which PostgreSQL a command uses.

pub mod audit;
pub mod backup;
pub mod database;
mod event_lines;

use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use commands::{CommandError, CommandMetadata, EventStore};
use domain::access::{ApiKey, ApiKeyCommand, Role, Tenant, TenantCommand, TenantError};
use domain::text::{DisplayName, Slug};
use sqlx::PgPool;
use uuid::Uuid;

use crate::auth::generate_key;

#[derive(Debug, Parser)]
#[command(
    name = "aipm",
    version,
    about = "The system of record for an organisation's AI"
)]
pub struct Cli {
    /// PostgreSQL connection URL; the database is created if missing. When set, exactly
    /// this database is used. When not: a private PostgreSQL in --data-dir if that is set,
    /// else postgres://postgres@127.0.0.1:5432/aipm, or, when nothing answers there or it
    /// asks user postgres for a password, a private PostgreSQL in ./.aipm.
    #[arg(long, env = "DATABASE_URL", global = true)]
    pub database_url: Option<String>,

    /// Folder of a private PostgreSQL, used when DATABASE_URL is not set: aipm creates it
    /// with the server programs installed on this machine (initdb, pg_ctl), starts it with
    /// a Unix socket in the folder and no TCP, or uses it if it runs; the last aipm process
    /// using it stops it on exit [default when 127.0.0.1:5432 cannot be used: ./.aipm]
    #[arg(long, env = "AIPM_DATA_DIR", global = true)]
    pub data_dir: Option<std::path::PathBuf>,

    /// NATS server for the live event feed; empty turns the feed off.
    #[arg(
        long,
        env = "NATS_URL",
        default_value = "nats://127.0.0.1:4222",
        global = true
    )]
    pub nats_url: String,

    /// `text` (default) or `json` log lines.
    #[arg(long, env = "AIPM_LOG_FORMAT", default_value = "text", global = true)]
    pub log_format: String,

    #[command(flatten)]
    pub anchors: crate::settings::anchors::AnchorArgs,

    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (the default).
    Serve(Box<ServeArgs>),
    /// Manage API keys.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Rebuild read models from the event log.
    Replay {
        #[command(subcommand)]
        command: ReplayCommand,
    },
    /// Check the audit log.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Write the event log to a file (NDJSON, one event a line in the global order) and its
    /// manifest beside it (`FILE.manifest.json`), from one snapshot while aipm serves.
    Backup {
        /// The file to write.
        #[arg(long)]
        out: std::path::PathBuf,
        /// Only events after this cursor (an incremental backup: the `last_cursor` of the
        /// previous backup's manifest).
        #[arg(long)]
        since: Option<domain::position::GlobalCursor>,
        /// Ranges of the log copied at once, each on a connection of its own.
        #[arg(long, default_value_t = backup::DEFAULT_JOBS, value_parser = clap::value_parser!(u16).range(1..=64))]
        jobs: u16,
    },
    /// Restore backups into an empty database: append their events, rebuild every read
    /// model and verify the audit chains (against their anchors when a key is configured).
    Restore {
        /// A full backup, then any incremental ones in order; repeat the flag.
        #[arg(long = "in", required = true)]
        files: Vec<std::path::PathBuf>,
    },
}

#[derive(Debug, Clone, clap::Args)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "AIPM_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,
    /// Also serve `GET /metrics`, without a key, on this address (keep it private).
    #[arg(long, env = "AIPM_METRICS_LISTEN")]
    pub metrics_listen: Option<String>,
    /// Database connections in the pool.
    #[arg(long, env = "AIPM_DB_CONNECTIONS", default_value_t = 48)]
    pub db_connections: u32,
    /// How long an Idempotency-Key is remembered (e.g. 24h, 90m, 3600).
    #[arg(long, env = "AIPM_IDEMPOTENCY_TTL", default_value = "24h", value_parser = crate::settings::idempotency::parse_duration)]
    pub idempotency_ttl: std::time::Duration,
    /// How long a request holds its Idempotency-Key before a retry may take it over, the
    /// first attempt presumed dead, when its process cannot be seen gone sooner (never less
    /// than the request timeout).
    #[arg(long, env = "AIPM_IDEMPOTENCY_LEASE", default_value = "30s", value_parser = crate::settings::idempotency::parse_duration)]
    pub idempotency_lease: std::time::Duration,
    #[command(flatten)]
    pub security: crate::settings::SecurityArgs,
    #[command(flatten)]
    pub feed: crate::settings::FeedSettings,
    #[command(flatten)]
    pub health: crate::settings::HealthSettings,
    #[command(flatten)]
    pub exports: crate::settings::ExportSettings,
    #[command(flatten)]
    pub gateway: crate::settings::GatewaySettings,
    /// JetStream stream the event feed is published to.
    #[arg(long, env = "AIPM_NATS_STREAM", default_value = projections::relay::DEFAULT_STREAM)]
    pub nats_stream: String,
    /// First subject tokens of the feed: `<prefix>.<tenant>.<aggregate_type>.<id>.<event_type>`.
    #[arg(long, env = "AIPM_NATS_SUBJECT_PREFIX", default_value = projections::relay::DEFAULT_SUBJECT_PREFIX)]
    pub nats_subject_prefix: String,
}

impl ServeArgs {
    /// The server configuration these arguments describe, with the NATS feed on `nats_url`
    /// (off when empty).
    pub fn settings(&self, nats_url: &str) -> Result<crate::Settings, String> {
        let relay = projections::relay::RelaySettings::from_parts(
            nats_url,
            &self.nats_stream,
            &self.nats_subject_prefix,
        )?;
        let mut settings = crate::Settings {
            security: self.security.settings(),
            feed: self.feed.clone(),
            health: self.health.clone(),
            exports: self.exports.clone(),
            gateway: self.gateway.clone(),
            ..crate::Settings::default()
        }
        .with_relay(relay);
        settings.idempotency.ttl = self.idempotency_ttl;
        // An attempt still running must not lose its key to a retry.
        settings.idempotency.lease = self
            .idempotency_lease
            .max(settings.security.request_timeout.unwrap_or_default());
        settings.metrics_listen = self.metrics_listen.clone().filter(|address| !address.is_empty());
        Ok(settings)
    }
}

/// `aipm` with no subcommand serves: its settings then come from the environment alone.
#[derive(Debug, Parser)]
struct ServeByDefault {
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(Debug, Subcommand)]
pub enum KeysCommand {
    /// Issue a key (creating the tenant if new); prints the key alone on the last line.
    Create {
        #[arg(long)]
        tenant: String,
        #[arg(long)]
        role: String,
        #[arg(long)]
        name: String,
    },
    /// Revoke a key by its id.
    Revoke { key_id: Uuid },
}

#[derive(Debug, Subcommand)]
pub enum ReplayCommand {
    /// Rebuild read models from the log beside the live ones and swap them in, while aipm
    /// keeps serving; or, with --to and --schema, build them as of a past point into a
    /// schema of their own, leaving the live ones alone.
    Rebuild {
        /// Only this projection (default: all).
        #[arg(long)]
        projection: Option<String>,
        /// Build as of this point: a cursor `<transaction>-<position>` (events at or before
        /// it) or an RFC 3339 instant (events recorded by then). Needs --schema.
        #[arg(long, requires = "schema")]
        to: Option<replay::Point>,
        /// The schema to build into (not `public`). Needs --to.
        #[arg(long, requires = "to")]
        schema: Option<String>,
        /// Drop the schema's tables first when it already holds some.
        #[arg(long, requires = "schema")]
        replace: bool,
        /// Empty the live tables and rebuild them in one transaction, during which their
        /// reads wait: for a database without room for a second copy.
        #[arg(long, conflicts_with = "to")]
        in_place: bool,
    },
    /// Rebuild read models into a scratch schema and compare them with the live ones row for
    /// row; lists the differences and exits non-zero when there are any.
    Verify {
        /// Only this projection (default: all).
        #[arg(long)]
        projection: Option<String>,
        /// At most this many differing rows listed per table.
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
}

#[derive(Debug, Subcommand)]
pub enum AuditCommand {
    /// Recompute the hash chains from the event log and compare them with the audit log,
    /// and with their anchors when a key is configured; exits non-zero naming the first
    /// entry or anchor that does not match.
    Verify {
        /// Only this tenant (default: every tenant).
        #[arg(long)]
        tenant: Option<String>,
    },
    /// Anchor the chain heads now (AIPM_AUDIT_SIGNING_KEY): sign each and publish it to the
    /// anchors' stream, unless the last anchor already holds it.
    Anchor {
        /// Only this tenant (default: every tenant).
        #[arg(long)]
        tenant: Option<String>,
    },
}

/// Runs the command line; every failure is one line on stderr and a non-zero exit code.
pub fn main() -> ExitCode {
    let mut cli = Cli::parse();
    crate::telemetry::init(cli.log_format == "json");
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("aipm: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    let mut database = database::Database::new(cli.database_url.take(), cli.data_dir.take());
    let result = runtime.block_on(run(cli, &mut database));
    // Tasks still using the database end with the runtime, before a private server it
    // started stops.
    drop(runtime);
    drop(database);
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("aipm: {message}");
            ExitCode::from(2)
        }
    }
}

async fn run(cli: Cli, database: &mut database::Database) -> Result<(), String> {
    let command = match cli.command {
        Some(command) => command,
        None => Command::Serve(Box::new(
            ServeByDefault::try_parse_from(["aipm"])
                .map_err(|e| e.to_string())?
                .serve,
        )),
    };
    match command {
        Command::Serve(args) => {
            let settings = args
                .settings(&cli.nats_url)?
                .with_anchors(cli.anchors.settings(&cli.nats_url)?);
            let ServeArgs {
                listen,
                db_connections,
                ..
            } = args.as_ref();
            let pool = database.connect(*db_connections).await?;
            let listener = tokio::net::TcpListener::bind(listen)
                .await
                .map_err(|e| format!("cannot listen on {listen}: {e} (set AIPM_LISTEN)"))?;
            tracing::info!(address = %listen, "aipm is serving");
            crate::serve(settings, pool, listener)
                .await
                .map_err(|e| format!("server failed: {e}"))
        }
        Command::Keys { command } => {
            let pool = database.connect(4).await?;
            match command {
                KeysCommand::Create { tenant, role, name } => {
                    let created = create_key(&pool, &tenant, &role, &name).await?;
                    println!("key id: {}", created.0);
                    println!("tenant: {tenant}  role: {role}  name: {name}");
                    println!("{}", created.1);
                    Ok(())
                }
                KeysCommand::Revoke { key_id } => {
                    revoke_key(&pool, key_id).await?;
                    println!("revoked {key_id}");
                    Ok(())
                }
            }
        }
        Command::Replay { command } => replay_command(database, command).await,
        Command::Backup { out, since, jobs } => {
            let pool = database.connect(u32::from(jobs) + 1).await?;
            let started = std::time::Instant::now();
            let manifest = backup::backup(&pool, &out, since, usize::from(jobs)).await?;
            let seconds = started.elapsed().as_secs_f64();
            println!(
                "{}: {} events ({} to {}) in {seconds:.2}s ({:.0} events/s), SHA-256 {}",
                out.display(),
                manifest.events,
                manifest.first_cursor.as_deref().unwrap_or("-"),
                manifest.last_cursor.as_deref().unwrap_or("-"),
                manifest.events as f64 / seconds.max(f64::EPSILON),
                manifest.sha256
            );
            println!("manifest: {}", backup::manifest_path(&out).display());
            Ok(())
        }
        Command::Restore { files } => {
            let anchors = cli.anchors.settings(&cli.nats_url)?;
            let pool = database.connect(4).await?;
            let report = backup::restore(&pool, &files, anchors.as_ref()).await?;
            print!("{}", report.summary);
            if !report.verified {
                return Err("the restored audit log does not verify (see above)".into());
            }
            println!("restored {} events in {:.2}s", report.events, report.seconds);
            Ok(())
        }
        Command::Audit { command } => {
            let anchors = cli.anchors.settings(&cli.nats_url)?;
            let pool = database.connect(4).await?;
            match command {
                AuditCommand::Verify { tenant } => {
                    let report = audit::verify(&pool, tenant.as_deref(), anchors.as_ref()).await?;
                    print!("{report}");
                    Ok(())
                }
                AuditCommand::Anchor { tenant } => {
                    let Some(anchors) = anchors else {
                        return Err("set AIPM_AUDIT_SIGNING_KEY to the key that signs anchors".into());
                    };
                    print!("{}", audit::anchor(&pool, &anchors, tenant.as_deref()).await?);
                    Ok(())
                }
            }
        }
    }
}

/// The projections a `--projection` option names: every one when absent.
fn selected_projections(name: Option<&str>) -> Result<Vec<Arc<dyn projections::Projection>>, String> {
    let selected: Vec<_> = projections::all()
        .into_iter()
        .filter(|p| name.is_none_or(|name| p.name() == name))
        .collect();
    if selected.is_empty() {
        let names: Vec<&str> = projections::all().iter().map(|p| p.name()).collect();
        return Err(format!(
            "unknown projection {:?}; known: {}",
            name.unwrap_or_default(),
            names.join(", ")
        ));
    }
    Ok(selected)
}

async fn replay_command(database: &mut database::Database, command: ReplayCommand) -> Result<(), String> {
    let projection = match &command {
        ReplayCommand::Rebuild { projection, .. } | ReplayCommand::Verify { projection, .. } => {
            projection.clone()
        }
    };
    let selected = selected_projections(projection.as_deref())?;
    // Each projection rebuilt at once reads and writes on connections of its own.
    let at_once = selected.len().min(replay::PARALLEL_REBUILDS) as u32;
    let pool = database.connect(3 * at_once + 2).await?;
    let print = |name: &str, report: &replay::RebuildReport| {
        println!(
            "{name}: {} events in {:.2}s ({:.0} events/s), live tables locked {:.3}s",
            report.events,
            report.seconds,
            report.events_per_second(),
            report.locked_seconds
        );
    };
    match command {
        ReplayCommand::Rebuild {
            to: Some(point),
            schema: Some(schema),
            replace,
            ..
        } => {
            let schema = replay::SchemaName::parse(&schema)?;
            let reports = replay::rebuild_at(&pool, &selected, point, &schema, replace, true)
                .await
                .map_err(|e| e.to_string())?;
            for (name, report) in &reports {
                print(name, report);
            }
            println!(
                "the read models as of {} are in schema {schema}",
                point_text(point)
            );
            Ok(())
        }
        ReplayCommand::Rebuild { in_place: true, .. } => {
            for projection in selected {
                let report = replay::rebuild_in_place(&pool, projection.as_ref(), true)
                    .await
                    .map_err(|e| format!("{}: {e}", projection.name()))?;
                print(projection.name(), &report);
            }
            Ok(())
        }
        ReplayCommand::Rebuild { .. } => {
            let mut failed = Vec::new();
            for (name, result) in replay::rebuild_all(&pool, selected, true).await {
                match result {
                    Ok(report) => print(name, &report),
                    Err(error) => {
                        eprintln!("{name}: {error}");
                        failed.push(name);
                    }
                }
            }
            if failed.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "not rebuilt (their live tables are unchanged): {}",
                    failed.join(", ")
                ))
            }
        }
        ReplayCommand::Verify { limit, .. } => {
            let mut differing = Vec::new();
            for projection in selected {
                let bar = replay::log_progress_bar(&pool, projection.as_ref(), true)
                    .await
                    .map_err(|e| e.to_string())?;
                let report = replay::verify(&pool, projection.as_ref(), limit, &bar)
                    .await
                    .map_err(|e| format!("{}: {e}", projection.name()))?;
                bar.finish_and_clear();
                print!("{report}");
                if !report.is_clean() {
                    differing.push(report.projection);
                }
            }
            if differing.is_empty() {
                Ok(())
            } else {
                Err(format!(
                    "read models differ from the log: {}",
                    differing.join(", ")
                ))
            }
        }
    }
}

fn point_text(point: replay::Point) -> String {
    match (point.cursor, point.instant) {
        (Some(cursor), _) => format!("cursor {cursor}"),
        (None, Some(instant)) => instant.to_rfc3339(),
        (None, None) => "the end of the log".into(),
    }
}

fn cli_metadata(tenant: &str) -> CommandMetadata {
    let user = std::env::var("USER").unwrap_or_else(|_| "unknown".into());
    CommandMetadata {
        tenant: tenant.to_string(),
        actor_key_id: "cli".into(),
        actor_name: format!("cli:{user}"),
        request_id: Uuid::new_v4().to_string(),
        timestamp: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
        ..CommandMetadata::default()
    }
}

/// Issues a key from the command line; returns its id and secret.
pub async fn create_key(
    pool: &PgPool,
    tenant: &str,
    role: &str,
    name: &str,
) -> Result<(Uuid, String), String> {
    let slug = Slug::parse("tenant", tenant).map_err(|e| e.to_string())?;
    let role: Role = role.parse()?;
    let name = DisplayName::parse("name", name).map_err(|e| e.to_string())?;
    let store = EventStore::new(pool.clone(), projections::inline());
    let metadata = cli_metadata(slug.as_ref());
    let tenants = store.aggregates::<Tenant>(());
    match tenants
        .execute(
            slug.as_ref(),
            TenantCommand::CreateTenant { slug: slug.clone() },
            None,
            &metadata,
        )
        .await
    {
        Ok(_) | Err(CommandError::Rejected(TenantError::AlreadyExists)) => {}
        Err(error) => return Err(format!("cannot create tenant {slug}: {error}")),
    }
    let generated = generate_key().map_err(|e| format!("cannot generate a key: {e}"))?;
    let id = Uuid::now_v7();
    let command = ApiKeyCommand::IssueApiKey {
        tenant: slug.to_string(),
        name,
        role,
        key_hash: generated.hash,
        key_prefix: generated.display_prefix,
    };
    store
        .aggregates::<ApiKey>(())
        .create(&id.to_string(), command, &metadata)
        .await
        .map_err(|e| e.to_string())?;
    publish(pool).await?;
    Ok((id, generated.secret))
}

/// Revokes a key from the command line.
pub async fn revoke_key(pool: &PgPool, key_id: Uuid) -> Result<(), String> {
    let keys = EventStore::new(pool.clone(), projections::inline()).aggregates::<ApiKey>(());
    let (key, _) = keys.load(&key_id.to_string()).await.map_err(|e| e.to_string())?;
    let Some(tenant) = key.tenant else {
        return Err(format!("no API key {key_id}"));
    };
    keys.execute(
        &key_id.to_string(),
        ApiKeyCommand::RevokeApiKey,
        None,
        &cli_metadata(&tenant),
    )
    .await
    .map_err(|e| e.to_string())?;
    publish(pool).await
}

/// Brings the read models up to date and tells running servers, so that a key created
/// or revoked here takes effect at once.
async fn publish(pool: &PgPool) -> Result<(), String> {
    for projection in projections::all().into_iter().filter(|p| !p.inline()) {
        projections::runner::catch_up(pool, projection.as_ref())
            .await
            .map_err(|e| e.to_string())?;
    }
    projections::runner::announce_appends(pool)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::Cli;

    /// Every environment variable of every command, with its command's path.
    fn variables(command: &clap::Command, path: &str, found: &mut Vec<(String, String)>) {
        for arg in command.get_arguments() {
            if let Some(variable) = arg.get_env() {
                found.push((path.to_string(), variable.to_string_lossy().into_owned()));
            }
        }
        for sub in command.get_subcommands() {
            variables(sub, &format!("{path} {}", sub.get_name()), found);
        }
    }

    #[test]
    fn the_operators_configuration_reference_lists_exactly_the_variables_the_command_line_reads() {
        let guide = include_str!("../../../docs/operations.md");
        let mut found = Vec::new();
        variables(&Cli::command(), "aipm", &mut found);
        let read: std::collections::BTreeSet<String> =
            found.into_iter().map(|(_, variable)| variable).collect();
        let missing: Vec<&String> = read
            .iter()
            .filter(|variable| !guide.contains(&format!("`{variable}`")))
            .collect();
        assert!(missing.is_empty(), "docs/operations.md does not list {missing:?}");
        // Every variable the reference's tables list is one the program reads: no stale rows.
        let listed: Vec<&str> = guide
            .lines()
            .filter_map(|line| line.strip_prefix("| `"))
            .filter_map(|row| row.split(" | ").next())
            .flat_map(|cell| cell.split('`'))
            .filter(|word| word.starts_with("AIPM_") || word.ends_with("_URL"))
            .collect();
        assert!(listed.len() > 30, "the tables were read: {listed:?}");
        let stale: Vec<&&str> = listed
            .iter()
            .filter(|variable| !read.contains(**variable))
            .collect();
        assert!(
            stale.is_empty(),
            "docs/operations.md names variables aipm does not read: {stale:?}"
        );
    }

    #[test]
    fn every_environment_variable_the_command_line_reads_is_documented() {
        let readme = include_str!("../../../README.md");
        let mut found = Vec::new();
        variables(&Cli::command(), "aipm", &mut found);
        assert!(found.len() > 30, "the walk found the settings: {found:?}");
        let undocumented: Vec<&(String, String)> = found
            .iter()
            .filter(|(_, variable)| !readme.contains(&format!("`{variable}`")))
            .collect();
        assert!(
            undocumented.is_empty(),
            "README.md's configuration does not list {undocumented:?}"
        );
    }
}
