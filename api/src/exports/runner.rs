//! Runs export jobs. Every process runs one runner; it takes up every queued job, and every
//! running one whose process died, so an interrupted export is resumed by the next process
//! to look — from the point its first attempt fixed, so the file is the one it would have
//! been. A job runs in one process at a time (a PostgreSQL advisory lock on a connection of
//! its own, lost with the process), at most `AIPM_EXPORT_CONCURRENCY` per process.
//!
//! The report is read on the async side and written on a blocking thread (the formats are
//! synchronous, and an XLSX file is assembled at its end), rows passing between them in
//! batches through a bounded channel, so memory stays bounded whatever the report's length.
//! Progress is recorded every [`PROGRESS_EVERY`], which is also when a cancellation is
//! noticed. The runner also deletes the files of finished exports whose time is up.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::Utc;
use commands::{CommandError, CommandMetadata};
use domain::export::{ExportCommand, ExportError, ExportFile, ExportJob, ExportStatus, Snapshot};
use domain::position::GlobalCursor;
use projections::export::queries as exports;
use projections::export::sources::{self, ReportPoint};
use reports::Format;
use sha2::{Digest, Sha256};
use sqlx::{Connection, PgConnection};
use uuid::Uuid;

use super::reports::{self as report, Piece, Progress, ReportInput, ReportKind, RowSink, Stop};
use crate::state::AppState;

/// The longest the runner waits before looking for jobs another process queued or left.
const MAX_WAIT: Duration = Duration::from_secs(1);
/// How often a running job records its progress (and looks for a cancellation).
const PROGRESS_EVERY: Duration = Duration::from_millis(500);

/// The running runner; it stops, and its jobs with it, when this is dropped.
pub struct ExportRunner(tokio::task::JoinHandle<()>);

impl Drop for ExportRunner {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the runner until the returned value is dropped.
pub fn spawn(app: AppState) -> ExportRunner {
    ExportRunner(tokio::spawn(async move {
        let running: Arc<Mutex<HashSet<Uuid>>> = Arc::default();
        let slots = Arc::new(tokio::sync::Semaphore::new(usize::from(
            app.export_settings.concurrency,
        )));
        let mut jobs = tokio::task::JoinSet::new();
        loop {
            match exports::unfinished(&app.pool).await {
                Ok(unfinished) => {
                    for job in unfinished {
                        // A process at capacity leaves jobs to the others.
                        let Ok(slot) = slots.clone().try_acquire_owned() else {
                            break;
                        };
                        let fresh = running.lock().map(|mut set| set.insert(job)).unwrap_or(false);
                        if !fresh {
                            continue;
                        }
                        let (app, running) = (app.clone(), running.clone());
                        jobs.spawn(async move {
                            if let Err(error) = run(&app, job).await {
                                tracing::warn!(%job, %error, "an export stopped; it is taken up again");
                            }
                            if let Ok(mut set) = running.lock() {
                                set.remove(&job);
                            }
                            drop(slot);
                        });
                    }
                }
                Err(error) => tracing::warn!(%error, "looking for exports failed; retrying"),
            }
            if let Err(error) = expire(&app).await {
                tracing::warn!(%error, "deleting expired exports failed; retrying");
            }
            while jobs.try_join_next().is_some() {}
            tokio::select! {
                _ = tokio::time::sleep(MAX_WAIT) => {}
                _ = app.export_requested.notified() => {}
            }
        }
    }))
}

/// Why a job stopped before it finished; it is taken up again.
#[derive(Debug, thiserror::Error)]
enum Stopped {
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
    #[error("{0}")]
    Unavailable(String),
}

/// Runs a command on the job, as the runner.
async fn step(
    app: &AppState,
    id: Uuid,
    tenant: &str,
    command: ExportCommand,
) -> Result<Result<(), ExportError>, Stopped> {
    let metadata = CommandMetadata {
        tenant: tenant.to_string(),
        actor_key_id: "export-runner".into(),
        actor_name: "export-runner".into(),
        request_id: format!("export-{id}"),
        timestamp: Utc::now().to_rfc3339(),
        causation_id: Some(id.to_string()),
        ..CommandMetadata::default()
    };
    match app
        .exports
        .execute(&id.to_string(), command, None, &metadata)
        .await
    {
        Ok(_) => Ok(Ok(())),
        Err(CommandError::Rejected(rule)) => Ok(Err(rule)),
        Err(other) => Err(Stopped::Unavailable(other.to_string())),
    }
}

async fn load(app: &AppState, id: Uuid) -> Result<ExportJob, Stopped> {
    let (job, _) = app
        .exports
        .load(&id.to_string())
        .await
        .map_err(|error| Stopped::Unavailable(error.to_string()))?;
    Ok(job)
}

/// Works on `job` until it finishes, unless another process holds it.
async fn run(app: &AppState, id: Uuid) -> Result<(), Stopped> {
    let mut lock = PgConnection::connect_with(&app.pool.connect_options()).await?;
    let held: bool =
        sqlx::query_scalar("select pg_try_advisory_lock(hashtextextended('export_job:' || $1, 0))")
            .bind(id.to_string())
            .fetch_one(&mut lock)
            .await?;
    if !held {
        return Ok(()); // another process runs it
    }
    let result = write(app, id).await;
    // Closing the connection releases the lock.
    let _ = lock.close().await;
    result
}

async fn write(app: &AppState, id: Uuid) -> Result<(), Stopped> {
    let job = load(app, id).await?;
    let Some(tenant) = job.tenant.clone() else {
        return Ok(());
    };
    if job.status.is_finished() {
        return Ok(());
    }
    // What was checked when the job was asked for; a job this build cannot read fails.
    let (kind, format) = match (
        ReportKind::parse("report", &job.report),
        Format::parse(&job.format),
    ) {
        (Ok(kind), Some(format)) => (kind, format),
        _ => {
            let reason = format!(
                "this server cannot write {} reports as {}",
                job.report, job.format
            );
            let _ = step(app, id, &tenant, ExportCommand::Fail { reason }).await?;
            return Ok(());
        }
    };
    let point = match &job.snapshot {
        Some(_) => None, // a resumed job keeps the point of its first attempt
        None => Some(match job.as_of {
            Some(as_of) => sources::at(&app.pool, as_of).await?,
            None => sources::now(&app.pool).await?,
        }),
    };
    let snapshot = point.map_or_else(
        || job.snapshot.clone(),
        |point| {
            Some(Snapshot {
                cursor: point.cursor.to_string(),
                instant: point.instant,
            })
        },
    );
    let Some(snapshot) = snapshot else {
        return Ok(());
    };
    if step(app, id, &tenant, ExportCommand::Start { snapshot })
        .await?
        .is_err()
    {
        return Ok(()); // finished meanwhile (cancelled)
    }
    let job = load(app, id).await?;
    let Some(snapshot) = job
        .snapshot
        .clone()
        .filter(|_| job.status == ExportStatus::Running)
    else {
        return Ok(()); // failed: interrupted too often
    };
    let Ok(cursor) = snapshot.cursor.parse::<GlobalCursor>() else {
        let reason = format!("its cursor {} cannot be read", snapshot.cursor);
        let _ = step(app, id, &tenant, ExportCommand::Fail { reason }).await?;
        return Ok(());
    };
    let point = ReportPoint {
        cursor,
        instant: snapshot.instant,
    };
    let input = ReportInput {
        pool: &app.pool,
        tenant: &tenant,
        point,
        params: &job.params,
    };
    let meta = report::meta(kind, &input);
    let file_name = file_name(&meta, format);
    let (file, scratch) = app
        .export_store
        .create(id, format.extension())
        .map_err(|error| Stopped::Unavailable(format!("cannot create the export's file: {error}")))?;
    let csv_section = job
        .params
        .get("section")
        .and_then(|value| value.as_str())
        .map(str::to_owned);
    let (to_writer, mut pieces) = tokio::sync::mpsc::channel::<Piece>(8);
    let writer = tokio::task::spawn_blocking(move || {
        let mut writer = reports::writer_for(format, meta, file, csv_section);
        while let Some(piece) = pieces.blocking_recv() {
            match piece {
                Piece::Section(section) => writer.section(&section)?,
                Piece::Rows(rows) => {
                    for row in rows {
                        writer.row(&row)?;
                    }
                }
            }
        }
        writer.finish()
    });
    let progress = Arc::new(Progress::default());
    let mut sink = RowSink::new(to_writer, progress.clone());
    let produced = {
        let producing = report::produce(kind, &input, &mut sink);
        tokio::pin!(producing);
        let mut ticks = tokio::time::interval(PROGRESS_EVERY);
        ticks.tick().await;
        loop {
            tokio::select! {
                produced = &mut producing => break produced,
                _ = ticks.tick() => {
                    let rows = progress.rows.load(Ordering::Relaxed);
                    let expected = progress.expected.load(Ordering::Relaxed);
                    let percent = (expected > 0).then(|| (rows.saturating_mul(100) / expected).min(99) as u8);
                    if step(app, id, &tenant, ExportCommand::Progress { rows, percent }).await?.is_err() {
                        progress.cancelled.store(true, Ordering::Relaxed);
                    }
                }
            }
        }
    };
    drop(sink);
    let written = writer
        .await
        .map_err(|error| Stopped::Unavailable(format!("the export's writer stopped: {error}")))?;
    let reason = match (produced, written) {
        (Err(Stop::Cancelled), _) => return Ok(()), // the scratch file is deleted with `scratch`
        (Err(Stop::Source(error)), _) => format!("reading the report's data failed: {error}"),
        (Err(Stop::Invalid(reason)), _) => reason,
        (_, Err(error)) => format!("writing the file failed: {error}"),
        (Err(Stop::WriterGone), Ok(_)) => "the file's writer stopped".to_owned(),
        (Ok(()), Ok(written)) => {
            let (size_bytes, content_sha256) = hash_file(scratch.path().to_path_buf())
                .await
                .map_err(|error| Stopped::Unavailable(format!("cannot read the written file: {error}")))?;
            app.export_store
                .commit(id, format.extension(), scratch)
                .await
                .map_err(|error| Stopped::Unavailable(format!("cannot store the file: {error}")))?;
            let ttl =
                chrono::Duration::from_std(app.export_settings.ttl).unwrap_or(chrono::Duration::days(7));
            let file = ExportFile {
                file_name,
                rows: written.rows,
                size_bytes,
                content_sha256,
                data_sha256: written.data_sha256,
                expires_at: Utc::now() + ttl,
            };
            if step(app, id, &tenant, ExportCommand::Complete { file })
                .await?
                .is_err()
            {
                // Cancelled while the file was finished: it is not kept.
                let _ = app.export_store.delete(id, format.extension()).await;
            }
            return Ok(());
        }
    };
    let _ = step(app, id, &tenant, ExportCommand::Fail { reason }).await?;
    Ok(())
}

/// The name a download is offered under: the report, the tenant, the period and the cursor.
fn file_name(meta: &reports::Meta, format: Format) -> String {
    let period = meta
        .period
        .map(|(from, to)| format!("-{}-to-{}", from.format("%Y-%m-%d"), to.format("%Y-%m-%d")))
        .unwrap_or_default();
    format!(
        "{}-{}{}-at-{}.{}",
        meta.report,
        meta.tenant,
        period,
        meta.cursor,
        format.extension()
    )
}

/// The size and SHA-256 (hex) of the file at `path`.
async fn hash_file(path: std::path::PathBuf) -> std::io::Result<(u64, String)> {
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(path)?;
        let mut hasher = Sha256::new();
        let mut buffer = vec![0; 1 << 16];
        let mut size = 0u64;
        loop {
            let read = file.read(&mut buffer)?;
            if read == 0 {
                break;
            }
            hasher.update(&buffer[..read]);
            size += read as u64;
        }
        Ok((size, hex::encode(hasher.finalize())))
    })
    .await
    .map_err(std::io::Error::other)?
}

/// Deletes the files of finished exports whose time is up, and records each expiry.
async fn expire(app: &AppState) -> Result<(), Stopped> {
    for (id, tenant, format) in exports::expired(&app.pool, Utc::now()).await? {
        let extension = Format::parse(&format).map_or(format.clone(), |format| format.extension().to_owned());
        app.export_store.delete(id, &extension).await.map_err(|error| {
            Stopped::Unavailable(format!("cannot delete the file of export {id}: {error}"))
        })?;
        let _ = step(app, id, &tenant, ExportCommand::Expire).await?;
    }
    Ok(())
}
