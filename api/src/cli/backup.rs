//! `aipm backup` and `aipm restore`: the event log as NDJSON, one event a line in the
//! global order, with a manifest beside it (`<file>.manifest.json`).
//!
//! A backup reads one snapshot of the log, so aipm keeps serving while it runs, and only
//! the settled part of it (events of transactions older than the oldest one still running,
//! as every reader of the log): a transaction that commits after the backup with an older
//! id is in the next incremental backup (`--since` the last cursor), never skipped.
//! PostgreSQL sends the rows in its binary COPY and aipm writes the lines
//! ([`super::event_lines`]) on the other core, so the backup goes as fast as the server
//! can read the log.
//!
//! A restore appends the events, in order, to an empty database under the new cluster's
//! transaction ids, each keeping its original cursor in its metadata
//! ([`eventlog::ORIGINAL_CURSOR_KEY`]); recomputes the write side's names and references;
//! rebuilds every read model; and verifies the audit chains (against their anchors when a
//! key is configured). Event ids and audit hashes do not depend on transaction ids, so they
//! come out as they were.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use domain::position::GlobalCursor;
use futures::TryStreamExt;
use projections::audit::anchor::AnchorSettings;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use sqlx::PgPool;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use uuid::Uuid;

/// The manifest's `format`: what a line holds and how the file is checked.
pub const FORMAT: &str = "aipm-event-log/1";

/// COPY's CSV with a quote and a delimiter that JSON text never holds unescaped (control
/// characters), so that a restore reads each line as the JSON document exactly.
const COPY_OPTIONS: &str = "(format csv, delimiter e'\\x02', quote e'\\x01')";

/// What a backup file holds, written beside it once the file is complete.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: String,
    /// The version of aipm that wrote the backup.
    pub aipm_version: String,
    /// The identity of the database backed up (`database_identity`).
    pub database_id: Uuid,
    /// When the backup was taken (RFC 3339).
    pub created_at: String,
    /// For an incremental backup, the cursor it starts after.
    pub since: Option<String>,
    /// Events in the file, one a line.
    pub events: u64,
    pub first_cursor: Option<String>,
    pub last_cursor: Option<String>,
    /// SHA-256 of the file's bytes, hex.
    pub sha256: String,
}

impl Manifest {
    /// Where the log this backup covers ends: its last event, or where it started when empty.
    fn end(&self) -> Option<&str> {
        self.last_cursor.as_deref().or(self.since.as_deref())
    }
}

/// The manifest of the backup file `file`.
pub fn manifest_path(file: &Path) -> PathBuf {
    let mut name = file.as_os_str().to_owned();
    name.push(".manifest.json");
    PathBuf::from(name)
}

/// Connections a backup copies the log on at once, each a range of it, when not told.
pub const DEFAULT_JOBS: u16 = 1;
/// A log shorter than this per job is copied on fewer connections: splitting it costs more
/// than it saves.
const MIN_EVENTS_PER_JOB: i64 = 50_000;

/// Writes the settled log after `since` (or all of it) to `out` and its manifest beside it,
/// copying `jobs` ranges of it at once, each on a connection of its own reading one snapshot
/// (exported by the first), and joining them in order. `pool` needs `jobs` connections.
pub async fn backup(
    pool: &PgPool,
    out: &Path,
    since: Option<GlobalCursor>,
    jobs: usize,
) -> Result<Manifest, String> {
    backup_in_ranges(pool, out, since, jobs, MIN_EVENTS_PER_JOB).await
}

/// [`backup`], splitting the log into ranges of at least `min_events_per_job` events.
pub async fn backup_in_ranges(
    pool: &PgPool,
    out: &Path,
    since: Option<GlobalCursor>,
    jobs: usize,
    min_events_per_job: i64,
) -> Result<Manifest, String> {
    let failed = |e: sqlx::Error| format!("cannot read the event log: {e}");
    let mut tx = snapshot_reader(pool, None).await.map_err(failed)?;
    let (database_id, horizon, snapshot): (Uuid, i64, String) = sqlx::query_as(
        "select (select id from database_identity), (select events_horizon())::text::bigint, pg_export_snapshot()",
    )
    .fetch_one(&mut *tx)
    .await
    .map_err(failed)?;
    let after = since.unwrap_or(GlobalCursor::START);
    // Integers only: COPY takes no parameters.
    let range = format!(
        "(transaction_id, position) > ('{}'::xid8, {}) and transaction_id < '{horizon}'::xid8",
        after.transaction_id, after.position
    );
    let bounds: Option<(String, String)> = sqlx::query_as(&format!(
        "select (select transaction_id || '-' || position from events where {range}
                 order by transaction_id, position limit 1),
                (select transaction_id || '-' || position from events where {range}
                 order by transaction_id desc, position desc limit 1)
         where exists (select 1 from events where {range})"
    ))
    .fetch_optional(&mut *tx)
    .await
    .map_err(failed)?;
    let splits = split_points(&mut tx, &range, jobs, min_events_per_job)
        .await
        .map_err(failed)?;

    // Each job's range: from the previous split point (inclusive) to the next (exclusive).
    let parts: Vec<String> = (0..=splits.len())
        .map(|job| {
            let mut part = range.clone();
            if let Some(from) = job.checked_sub(1).map(|previous| splits[previous]) {
                write!(
                    part,
                    " and (transaction_id, position) >= ('{}'::xid8, {})",
                    from.transaction_id, from.position
                )
                .ok();
            }
            if let Some(until) = splits.get(job) {
                write!(
                    part,
                    " and (transaction_id, position) < ('{}'::xid8, {})",
                    until.transaction_id, until.position
                )
                .ok();
            }
            part
        })
        .collect();
    let partial = partial_path(out);
    let part_files: Vec<PathBuf> = (1..parts.len()).map(|job| part_path(&partial, job)).collect();
    let others: Vec<_> = parts[1..]
        .iter()
        .zip(&part_files)
        .map(|(part, file)| {
            let (pool, snapshot, sql, file) =
                (pool.clone(), snapshot.clone(), copy_statement(part), file.clone());
            tokio::spawn(async move { copy_in_snapshot(&pool, &snapshot, &sql, &file).await })
        })
        .collect();

    // The first range is written straight into the file, under the exporting transaction,
    // which stays open until every other job has read its range.
    let first = copy_to_file(&mut tx, &copy_statement(&parts[0]), &partial, true).await;
    let (first, mut hasher) = match first {
        Ok((lines, hasher)) => (Ok(lines), hasher.unwrap_or_default()),
        Err(error) => (Err(error), Sha256::new()),
    };
    let mut outcomes = vec![first];
    for job in others {
        outcomes.push(
            job.await
                .unwrap_or_else(|e| Err(format!("a backup job failed: {e}"))),
        );
    }
    tx.rollback().await.map_err(failed)?;
    let joined = async {
        let mut events = 0;
        for outcome in outcomes {
            events += outcome?;
        }
        let mut file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(&partial)
            .await
            .map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
        for part in &part_files {
            append(&mut file, part, &mut hasher).await?;
        }
        file.sync_all()
            .await
            .map_err(|e| format!("cannot write {}: {e}", partial.display()))?;
        Ok::<u64, String>(events)
    }
    .await;
    for part in &part_files {
        let _ = tokio::fs::remove_file(part).await;
    }
    let events = joined?;

    let (first_cursor, last_cursor) = bounds.map_or((None, None), |(first, last)| (Some(first), Some(last)));
    let manifest = Manifest {
        format: FORMAT.to_string(),
        aipm_version: env!("CARGO_PKG_VERSION").to_string(),
        database_id,
        created_at: projections::audit::format_time(chrono::Utc::now()),
        since: since.map(|cursor| cursor.to_string()),
        events,
        first_cursor,
        last_cursor,
        sha256: hex::encode(hasher.finalize()),
    };
    let manifest_text =
        serde_json::to_string_pretty(&manifest).map_err(|e| format!("cannot write the manifest: {e}"))?;
    let manifest_file = manifest_path(out);
    let manifest_partial = partial_path(&manifest_file);
    tokio::fs::write(&manifest_partial, manifest_text + "\n")
        .await
        .map_err(|e| format!("cannot write {}: {e}", manifest_partial.display()))?;
    tokio::fs::rename(&partial, out)
        .await
        .map_err(|e| format!("cannot move the backup to {}: {e}", out.display()))?;
    tokio::fs::rename(&manifest_partial, &manifest_file)
        .await
        .map_err(|e| format!("cannot move the manifest to {}: {e}", manifest_file.display()))?;
    Ok(manifest)
}

/// Where the ranges after the first start, so that `jobs` ranges hold about as many events
/// each (fewer ranges for a short log).
async fn split_points(
    conn: &mut sqlx::PgConnection,
    range: &str,
    jobs: usize,
    min_events_per_job: i64,
) -> Result<Vec<GlobalCursor>, sqlx::Error> {
    if jobs <= 1 {
        return Ok(Vec::new());
    }
    let count: i64 = sqlx::query_scalar(&format!("select count(*) from events where {range}"))
        .fetch_one(&mut *conn)
        .await?;
    let jobs = (jobs as i64).min(count / min_events_per_job.max(1)).max(1);
    let mut splits = Vec::new();
    for job in 1..jobs {
        let (transaction_id, position): (i64, i64) = sqlx::query_as(&format!(
            "select transaction_id::text::bigint, position from events where {range}
             order by transaction_id, position offset {} limit 1",
            count * job / jobs
        ))
        .fetch_one(&mut *conn)
        .await?;
        splits.push(GlobalCursor::new(transaction_id, position));
    }
    Ok(splits)
}

/// The COPY of the events of `range`, in global order, whose rows
/// [`EventLines`](super::event_lines::EventLines) writes as lines.
fn copy_statement(range: &str) -> String {
    format!(
        "copy (select {} from events where {range} order by transaction_id, position) to stdout (format binary)",
        super::event_lines::COLUMNS
    )
}

/// A read-only repeatable-read transaction, reading the exported `snapshot` when given
/// (a checked snapshot id).
async fn snapshot_reader(
    pool: &PgPool,
    snapshot: Option<&str>,
) -> Result<sqlx::Transaction<'static, sqlx::Postgres>, sqlx::Error> {
    let mut tx = eventlog::begin(pool).await?;
    sqlx::query("set transaction isolation level repeatable read, read only")
        .execute(&mut *tx)
        .await?;
    if let Some(snapshot) = snapshot {
        sqlx::query(&format!("set transaction snapshot '{snapshot}'"))
            .execute(&mut *tx)
            .await?;
    }
    Ok(tx)
}

/// Runs `copy` in a transaction reading the exported `snapshot`, into `file`; returns the
/// lines written.
async fn copy_in_snapshot(pool: &PgPool, snapshot: &str, copy: &str, file: &Path) -> Result<u64, String> {
    // A snapshot id is letters, digits and dashes; checked, as SET takes no parameters.
    if !snapshot.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(format!("unexpected snapshot id {snapshot:?}"));
    }
    let failed = |e: sqlx::Error| format!("cannot read the event log: {e}");
    let mut tx = snapshot_reader(pool, Some(snapshot)).await.map_err(failed)?;
    let (lines, _) = copy_to_file(&mut tx, copy, file, false).await?;
    tx.rollback().await.map_err(failed)?;
    Ok(lines)
}

/// Writes the events `copy` reads into a new `file`, one line each, hashing the file when
/// `hash`; returns the lines written and the hash. The lines are written and hashed on a
/// thread of their own while the next rows arrive.
async fn copy_to_file(
    conn: &mut sqlx::PgConnection,
    copy: &str,
    file: &Path,
    hash: bool,
) -> Result<(u64, Option<Sha256>), String> {
    let failed = |e: sqlx::Error| format!("cannot read the event log: {e}");
    let (blocks, written) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    let writer = {
        let file = file.to_path_buf();
        tokio::task::spawn_blocking(move || write_blocks(&file, &written, hash.then(Sha256::new)))
    };
    let read = async {
        let mut lines = 0u64;
        let mut rows = super::event_lines::EventLines::default();
        // Room for a block and the row that fills it past its size.
        let new_block = || Vec::with_capacity(WRITE_BLOCK + (64 << 10));
        let mut block = new_block();
        let mut chunks = conn.copy_out_raw(copy).await.map_err(failed)?;
        while let Some(chunk) = chunks.try_next().await.map_err(failed)? {
            lines += rows.feed(&chunk, &mut block)?;
            if block.len() >= WRITE_BLOCK {
                let full = std::mem::replace(&mut block, new_block());
                if blocks.send(full).is_err() {
                    // The writer stopped: its error says why.
                    break;
                }
            }
        }
        rows.finish()?;
        let _ = blocks.send(block);
        Ok::<u64, String>(lines)
    }
    .await;
    drop(blocks);
    let written = writer
        .await
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?
        .map_err(|e| format!("cannot write {}: {e}", file.display()))?;
    Ok((read?, written))
}

/// Bytes of lines handed to the writing thread at a time.
const WRITE_BLOCK: usize = 4 << 20;

/// Writes each block received into a new `file`, hashing it into `hasher` when given.
fn write_blocks(
    file: &Path,
    blocks: &std::sync::mpsc::Receiver<Vec<u8>>,
    mut hasher: Option<Sha256>,
) -> std::io::Result<Option<Sha256>> {
    use std::io::Write as _;
    let mut out = std::fs::File::create(file)?;
    for block in blocks {
        if let Some(hasher) = hasher.as_mut() {
            hasher.update(&block);
        }
        out.write_all(&block)?;
    }
    out.flush()?;
    Ok(hasher)
}

/// Appends `part` to `file`, hashing what it appends.
async fn append(file: &mut tokio::fs::File, part: &Path, hasher: &mut Sha256) -> Result<(), String> {
    let mut reader = tokio::fs::File::open(part)
        .await
        .map_err(|e| format!("cannot read {}: {e}", part.display()))?;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = reader
            .read(&mut buffer)
            .await
            .map_err(|e| format!("cannot read {}: {e}", part.display()))?;
        if read == 0 {
            return Ok(());
        }
        hasher.update(&buffer[..read]);
        file.write_all(&buffer[..read])
            .await
            .map_err(|e| format!("cannot write the backup: {e}"))?;
    }
}

/// The file a job after the first writes its range to, beside the partial backup.
fn part_path(partial: &Path, job: usize) -> PathBuf {
    let mut name = partial.as_os_str().to_owned();
    name.push(format!(".{job}"));
    PathBuf::from(name)
}

fn partial_path(path: &Path) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(".partial");
    PathBuf::from(name)
}

/// A backup file checked against its manifest.
struct Checked {
    file: PathBuf,
    manifest: Manifest,
}

/// Reads `file`'s manifest and checks the file against it: format, size in lines, SHA-256.
async fn check(file: &Path) -> Result<Checked, String> {
    let manifest_file = manifest_path(file);
    let text = tokio::fs::read_to_string(&manifest_file)
        .await
        .map_err(|e| format!("cannot read the manifest {}: {e}", manifest_file.display()))?;
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a backup manifest: {e}", manifest_file.display()))?;
    if manifest.format != FORMAT {
        return Err(format!(
            "{} is a backup of format {:?}; this aipm reads {FORMAT:?}",
            file.display(),
            manifest.format
        ));
    }
    let mut reader = tokio::fs::File::open(file)
        .await
        .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
    let mut hasher = Sha256::new();
    let mut lines = 0u64;
    let mut buffer = vec![0u8; 1 << 20];
    loop {
        let read = reader
            .read(&mut buffer)
            .await
            .map_err(|e| format!("cannot read {}: {e}", file.display()))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        lines += buffer[..read].iter().filter(|&&byte| byte == b'\n').count() as u64;
    }
    let sha256 = hex::encode(hasher.finalize());
    if sha256 != manifest.sha256 || lines != manifest.events {
        return Err(format!(
            "{} does not match its manifest: {lines} events with SHA-256 {sha256}, the manifest says {} with {}",
            file.display(),
            manifest.events,
            manifest.sha256
        ));
    }
    Ok(Checked {
        file: file.to_path_buf(),
        manifest,
    })
}

/// Checks that `backups` are one full backup and the incremental ones that follow it, of
/// one database, in order.
fn check_sequence(backups: &[Checked]) -> Result<(), String> {
    let Some(first) = backups.first() else {
        return Err("name at least one backup file with --in".into());
    };
    if let Some(since) = &first.manifest.since {
        return Err(format!(
            "{} is an incremental backup (since {since}); start with a full backup",
            first.file.display()
        ));
    }
    for pair in backups.windows(2) {
        let (before, next) = (&pair[0], &pair[1]);
        if next.manifest.database_id != before.manifest.database_id {
            return Err(format!(
                "{} is a backup of database {}, {} of database {}",
                next.file.display(),
                next.manifest.database_id,
                before.file.display(),
                before.manifest.database_id
            ));
        }
        if next.manifest.since.as_deref() != before.manifest.end() {
            return Err(format!(
                "{} starts after {}, but {} ends at {}: a backup is missing between them, or they are out of order",
                next.file.display(),
                next.manifest.since.as_deref().unwrap_or("the start"),
                before.file.display(),
                before.manifest.end().unwrap_or("the start")
            ));
        }
    }
    Ok(())
}

/// What a restore did.
#[derive(Debug, Clone)]
pub struct RestoreReport {
    pub events: u64,
    pub seconds: f64,
    /// What to print: each step and its figures, the audit verification last.
    pub summary: String,
    /// Whether the restored audit chains verified.
    pub verified: bool,
}

/// Restores `files` (a full backup, then incremental ones in order) into the empty
/// database of `pool`; see the module's documentation.
pub async fn restore(
    pool: &PgPool,
    files: &[PathBuf],
    anchors: Option<&AnchorSettings>,
) -> Result<RestoreReport, String> {
    let started = Instant::now();
    let mut backups = Vec::with_capacity(files.len());
    for file in files {
        backups.push(check(file).await?);
    }
    check_sequence(&backups)?;
    let failed = |e: sqlx::Error| format!("cannot restore: {e}");
    let mut summary = String::new();
    let mut tx = eventlog::begin(pool).await.map_err(failed)?;
    let held: i64 = sqlx::query_scalar("select count(*) from events")
        .fetch_one(&mut *tx)
        .await
        .map_err(failed)?;
    if held > 0 {
        return Err(format!(
            "the database already holds {held} events; restore into an empty one (a new database name in DATABASE_URL is created for you)"
        ));
    }
    sqlx::query(
        "create temporary table restore_line (ordinal bigint generated always as identity, line jsonb not null)
         on commit drop",
    )
    .execute(&mut *tx)
    .await
    .map_err(failed)?;
    let mut events = 0u64;
    for backup in &backups {
        let mut copy = tx
            .copy_in_raw(&format!("copy restore_line (line) from stdin {COPY_OPTIONS}"))
            .await
            .map_err(failed)?;
        let mut reader = tokio::fs::File::open(&backup.file)
            .await
            .map_err(|e| format!("cannot read {}: {e}", backup.file.display()))?;
        let mut buffer = vec![0u8; 1 << 20];
        loop {
            let read = reader
                .read(&mut buffer)
                .await
                .map_err(|e| format!("cannot read {}: {e}", backup.file.display()))?;
            if read == 0 {
                break;
            }
            copy.send(&buffer[..read]).await.map_err(failed)?;
        }
        copy.finish().await.map_err(|e| {
            format!(
                "{} holds a line that is not an event of the log: {e}",
                backup.file.display()
            )
        })?;
        let appended = sqlx::query(&format!(
            "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version, payload,
                                 metadata, tenant_id, recorded_at)
             select line ->> 'aggregate_type', line ->> 'aggregate_id', (line ->> 'sequence')::bigint,
                    line ->> 'event_type', line ->> 'event_version', line -> 'payload',
                    case when line -> 'metadata' ? '{key}' then line -> 'metadata'
                         else line -> 'metadata' || jsonb_build_object('{key}',
                              (line ->> 'transaction_id') || '-' || (line ->> 'position')) end,
                    line ->> 'tenant_id', (line ->> 'recorded_at')::timestamptz
             from restore_line order by ordinal",
            key = eventlog::ORIGINAL_CURSOR_KEY
        ))
        .execute(&mut *tx)
        .await
        .map_err(|e| format!("{} cannot be appended to the log: {e}", backup.file.display()))?
        .rows_affected();
        sqlx::query("truncate restore_line")
            .execute(&mut *tx)
            .await
            .map_err(failed)?;
        events += appended;
        let _ = writeln!(
            summary,
            "{}: {appended} events of database {} (backed up {} by aipm {})",
            backup.file.display(),
            backup.manifest.database_id,
            backup.manifest.created_at,
            backup.manifest.aipm_version
        );
    }
    let guards = commands::guards::recompute(&mut tx)
        .await
        .map_err(|e| format!("cannot recompute names and references: {e}"))?;
    tx.commit().await.map_err(failed)?;
    let loaded = started.elapsed().as_secs_f64();
    let _ = writeln!(
        summary,
        "appended {events} events in {loaded:.2}s; {} names, {} referable aggregates, {} references",
        guards.names, guards.referable, guards.references
    );
    for projection in projections::all() {
        let report = replay::rebuild(pool, projection.as_ref(), false)
            .await
            .map_err(|e| format!("cannot rebuild {}: {e}", projection.name()))?;
        let _ = writeln!(
            summary,
            "rebuilt {}: {} events in {:.2}s",
            projection.name(),
            report.events,
            report.seconds
        );
    }
    let (verified, verification) = match super::audit::verify(pool, None, anchors).await {
        Ok(report) => (true, report),
        Err(problem) => (false, format!("{problem}\n")),
    };
    summary.push_str(&verification);
    Ok(RestoreReport {
        events,
        seconds: started.elapsed().as_secs_f64(),
        summary,
        verified,
    })
}
