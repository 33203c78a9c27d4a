//! The global order: a reader tailing `global_order::read_after` sees every committed event
//! exactly once, never a rolled-back one, and in one stable order — even when a transaction
//! that inserted early (small positions) commits after many later ones.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use domain::position::GlobalCursor;
use integration_tests::harness::{expect_status, transaction_in_another_database, TestApp, TestDatabase};
use projections::global_order::{read_after, read_for, Wanted};
use reqwest::StatusCode;
use serde_json::json;
use sqlx::{Connection, PgConnection, PgPool};
use tokio::sync::watch;
use tokio::time::{timeout, Instant};

const INSERT: &str = "insert into events
    (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, tenant_id)
    values ('OrderProbe', $1, $2, 'Probed', '1', $3, '{}', 'acme')";

/// How long the late transaction stays open after inserting.
const HOLD: Duration = Duration::from_secs(2);
/// Upper bound for every wait on another task, so that a bug fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(15);

/// One writer transaction.
#[derive(Debug, Clone)]
struct Written {
    aggregate_id: String,
    events: i64,
    committed: bool,
    transaction_id: i64,
}

/// One event as the reader saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Seen {
    cursor: GlobalCursor,
    aggregate_id: String,
    sequence: i64,
}

#[derive(Debug, Clone, Copy, Default)]
struct Progress {
    polls: u64,
    seen: usize,
}

/// Inserts `events` events, one statement each (so that concurrent transactions interleave),
/// then commits or rolls back.
async fn write_transaction(pool: &PgPool, aggregate_id: String, events: i64, commit: bool) -> Written {
    let mut tx = pool.begin().await.expect("begin");
    for sequence in 1..=events {
        sqlx::query(INSERT)
            .bind(&aggregate_id)
            .bind(sequence)
            .bind(json!({ "n": sequence }))
            .execute(&mut *tx)
            .await
            .expect("insert event");
        tokio::task::yield_now().await;
    }
    let transaction_id: i64 = sqlx::query_scalar("select pg_current_xact_id()::text::bigint")
        .fetch_one(&mut *tx)
        .await
        .expect("transaction id");
    if commit {
        tx.commit().await.expect("commit");
    } else {
        tx.rollback().await.expect("rollback");
    }
    Written {
        aggregate_id,
        events,
        committed: commit,
        transaction_id,
    }
}

/// `writers` concurrent writers, each running `per_writer` transactions of 1 to 4 events;
/// about one transaction in four is rolled back on purpose.
async fn write_phase(pool: &PgPool, phase: &str, writers: usize, per_writer: usize) -> Vec<Written> {
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let pool = pool.clone();
            let phase = phase.to_string();
            tokio::spawn(async move {
                let mut written = Vec::new();
                for t in 0..per_writer {
                    let events = 1 + ((w * 3 + t * 5) % 4) as i64;
                    let commit = (w + 3 * t) % 4 != 1;
                    let id = format!("{phase}-w{w}-t{t}");
                    written.push(write_transaction(&pool, id, events, commit).await);
                }
                written
            })
        })
        .collect();
    let mut all = Vec::new();
    for task in futures::future::join_all(tasks).await {
        all.extend(task.expect("writer task"));
    }
    all
}

fn committed_keys(written: &[Written]) -> Vec<(String, i64)> {
    written
        .iter()
        .filter(|w| w.committed)
        .flat_map(|w| (1..=w.events).map(move |s| (w.aggregate_id.clone(), s)))
        .collect()
}

/// Tails the log from the start with small pages until `target` is set and reached. Each
/// event is returned with whether the late transaction had begun committing when the page
/// holding it came back.
async fn tail(
    url: String,
    late_committing: Arc<AtomicBool>,
    target: watch::Receiver<Option<usize>>,
    progress: watch::Sender<Progress>,
) -> (Vec<(Seen, bool)>, GlobalCursor) {
    let mut conn = PgConnection::connect(&url).await.expect("reader connection");
    let mut cursor = GlobalCursor::START;
    let mut seen = Vec::new();
    loop {
        let page = read_after(&mut conn, cursor, 7).await.expect("read_after");
        let committing = late_committing.load(Ordering::SeqCst);
        let empty = page.is_empty();
        for event in page {
            cursor = event.cursor;
            seen.push((
                Seen {
                    cursor: event.cursor,
                    aggregate_id: event.aggregate_id,
                    sequence: event.sequence,
                },
                committing,
            ));
        }
        progress.send_modify(|p| {
            p.polls += 1;
            p.seen = seen.len();
        });
        if target.borrow().is_some_and(|target| seen.len() >= target) {
            return (seen, cursor);
        }
        if empty {
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tailing_reader_sees_every_committed_event_once_in_a_stable_order_despite_a_late_commit() {
    let db = TestDatabase::create().await;
    let late_committing = Arc::new(AtomicBool::new(false));
    let (target_tx, target_rx) = watch::channel(None);
    let (progress_tx, mut progress_rx) = watch::channel(Progress::default());
    let reader = tokio::spawn(tail(
        db.url.clone(),
        late_committing.clone(),
        target_rx,
        progress_tx,
    ));

    // Phase A: committed (or rolled back) before the late transaction starts.
    let phase_a = write_phase(&db.pool, "a", 6, 5).await;

    // The late transaction inserts, then stays open while phase B commits after it.
    let mut late = db.pool.begin().await.expect("begin late");
    for sequence in 1..=3i64 {
        sqlx::query(INSERT)
            .bind("late")
            .bind(sequence)
            .bind(json!({ "late": true }))
            .execute(&mut *late)
            .await
            .expect("insert late event");
    }
    let inserted_at = Instant::now();
    let late_xid: i64 = sqlx::query_scalar("select pg_current_xact_id()::text::bigint")
        .fetch_one(&mut *late)
        .await
        .expect("late transaction id");
    let phase_b = write_phase(&db.pool, "b", 8, 6).await;
    assert!(
        phase_b.iter().all(|w| w.transaction_id > late_xid),
        "phase B must run in transactions younger than the late one"
    );

    // While the late transaction is open, the reader must catch up with phase A and then
    // poll a few more times, and still see nothing of the late transaction or phase B.
    let phase_a_events = committed_keys(&phase_a).len();
    let polls_after_b = progress_rx.borrow().polls;
    timeout(
        DEADLINE,
        progress_rx.wait_for(|p| p.seen >= phase_a_events && p.polls >= polls_after_b + 3),
    )
    .await
    .expect("the reader did not catch up with phase A in time")
    .expect("reader alive");
    tokio::time::sleep_until(inserted_at + HOLD).await;
    let seen_while_open = progress_rx.borrow().seen;
    assert_eq!(
        seen_while_open, phase_a_events,
        "while the late transaction was open the reader saw events past phase A"
    );
    // A fresh read from the start agrees: only phase A is readable.
    let mut probe = PgConnection::connect(&db.url).await.expect("probe connection");
    let readable = read_after(&mut probe, GlobalCursor::START, 10_000)
        .await
        .expect("read_after");
    let readable: HashSet<(String, i64)> = readable
        .into_iter()
        .map(|e| (e.aggregate_id, e.sequence))
        .collect();
    let expected_a: HashSet<(String, i64)> = committed_keys(&phase_a).into_iter().collect();
    assert_eq!(readable, expected_a);

    late_committing.store(true, Ordering::SeqCst);
    late.commit().await.expect("commit late");

    // Phase C: more writers while the reader catches up.
    let phase_c = write_phase(&db.pool, "c", 4, 5).await;

    let mut expected: Vec<(String, i64)> = committed_keys(&phase_a);
    expected.extend((1..=3).map(|s| ("late".to_string(), s)));
    expected.extend(committed_keys(&phase_b));
    expected.extend(committed_keys(&phase_c));
    target_tx.send_replace(Some(expected.len()));
    let (seen, cursor) = timeout(DEADLINE, reader)
        .await
        .expect("the reader did not see every committed event in time")
        .expect("reader task");

    // Nothing more is readable after the reader's cursor.
    let rest = read_after(&mut probe, cursor, 10_000).await.expect("read_after");
    assert!(rest.is_empty(), "events past the reader's end: {rest:?}");

    // Cursors strictly increase.
    for pair in seen.windows(2) {
        assert!(
            pair[0].0.cursor < pair[1].0.cursor,
            "cursor went back: {:?} then {:?}",
            pair[0].0,
            pair[1].0
        );
    }

    // Every committed event exactly once, no rolled-back one.
    let seen_keys: Vec<(String, i64)> = seen
        .iter()
        .map(|(s, _)| (s.aggregate_id.clone(), s.sequence))
        .collect();
    let unique: HashSet<&(String, i64)> = seen_keys.iter().collect();
    assert_eq!(unique.len(), seen_keys.len(), "an event was seen twice");
    let expected_set: HashSet<&(String, i64)> = expected.iter().collect();
    assert_eq!(unique, expected_set, "seen events differ from committed ones");
    let all_written: Vec<&Written> = phase_a.iter().chain(&phase_b).chain(&phase_c).collect();
    let rolled_back: HashSet<&str> = all_written
        .iter()
        .filter(|w| !w.committed)
        .map(|w| w.aggregate_id.as_str())
        .collect();
    assert!(
        rolled_back.len() >= 10,
        "the test must roll back some transactions"
    );
    assert!(
        seen.iter()
            .all(|(s, _)| !rolled_back.contains(s.aggregate_id.as_str())),
        "a rolled-back event was seen"
    );

    // The late transaction's and phase B's events were only seen once it was committing.
    let late_or_b = |id: &str| id == "late" || id.starts_with("b-");
    let early: Vec<&Seen> = seen
        .iter()
        .filter(|(s, committing)| late_or_b(&s.aggregate_id) && !committing)
        .map(|(s, _)| s)
        .collect();
    assert!(early.is_empty(), "seen before the late commit: {early:?}");
    assert_eq!(
        seen.iter().filter(|(s, _)| s.aggregate_id == "late").count(),
        3,
        "the late transaction's events must be seen"
    );

    // The order seen is the stable order of a full read by (transaction_id, position).
    let full: Vec<(i64, i64, String, i64)> = sqlx::query_as(
        "select transaction_id::text::bigint, position, aggregate_id, sequence
         from events order by transaction_id, position",
    )
    .fetch_all(&db.pool)
    .await
    .expect("full read");
    let full: Vec<Seen> = full
        .into_iter()
        .map(|(t, p, aggregate_id, sequence)| Seen {
            cursor: GlobalCursor::new(t, p),
            aggregate_id,
            sequence,
        })
        .collect();
    let seen_in_order: Vec<Seen> = seen.into_iter().map(|(s, _)| s).collect();
    assert_eq!(seen_in_order, full);

    // The case the order exists for really happened: the late events hold smaller
    // positions than phase B events that committed before them.
    let late_max_position = full
        .iter()
        .filter(|s| s.aggregate_id == "late")
        .map(|s| s.cursor.position)
        .max()
        .expect("late events");
    assert!(full
        .iter()
        .filter(|s| s.aggregate_id.starts_with("b-"))
        .all(|s| s.cursor.position > late_max_position));
}

async fn insert_probe(pool: &PgPool, aggregate_id: &str) {
    sqlx::query(INSERT)
        .bind(aggregate_id)
        .bind(1i64)
        .bind(json!({}))
        .execute(pool)
        .await
        .expect("insert");
}

async fn readable_ids(url: &str) -> Vec<String> {
    let mut conn = PgConnection::connect(url).await.expect("connect");
    read_after(&mut conn, GlobalCursor::START, 1_000)
        .await
        .expect("read_after")
        .into_iter()
        .map(|event| event.aggregate_id)
        .collect()
}

#[tokio::test]
async fn a_transaction_open_in_another_database_holds_no_reader_back() {
    let db = TestDatabase::create().await;
    let _other = transaction_in_another_database().await;
    // Younger than the other database's open transaction, and committed.
    insert_probe(&db.pool, "after-the-other").await;
    assert_eq!(readable_ids(&db.url).await, ["after-the-other"]);
}

#[tokio::test]
async fn a_transaction_open_in_this_database_still_holds_readers_back() {
    let db = TestDatabase::create().await;
    // It has written nothing yet, but it could still insert events before the probe.
    let mut open = db.pool.begin().await.expect("begin");
    sqlx::query("select pg_current_xact_id()")
        .execute(&mut *open)
        .await
        .expect("take a transaction id");
    insert_probe(&db.pool, "after-the-open-one").await;
    assert!(readable_ids(&db.url).await.is_empty());

    open.commit().await.expect("commit");
    assert_eq!(readable_ids(&db.url).await, ["after-the-open-one"]);
}

#[tokio::test]
async fn commands_show_their_effect_while_another_database_has_a_long_transaction() {
    let app = TestApp::spawn().await;
    let _other = transaction_in_another_database().await;
    let id = app.create_prompt("during-a-long-transaction").await;
    // Read your writes: the read model has it as soon as the command has answered.
    let response = app.get(&format!("/v1/prompts/{id}"), &app.admin_key).await;
    let read = expect_status(response, StatusCode::OK).await;
    assert_eq!(read["name"], "during-a-long-transaction");
}

#[tokio::test]
async fn a_reader_gets_only_the_payloads_and_metadata_keys_it_wants() {
    let db = TestDatabase::create().await;
    for (aggregate_type, n, metadata) in [
        (
            "Wanted",
            1,
            json!({ "actor_name": "ops", "reason": "it's \"quoted\"", "request_id": "r-1" }),
        ),
        ("Other", 2, json!({ "actor_name": "ops" })),
    ] {
        sqlx::query(
            "insert into events
                (aggregate_type, aggregate_id, sequence, event_type, event_version, payload, metadata, tenant_id)
             values ($1, $2, 1, 'Probed', '1', $3, $4, 'acme')",
        )
        .bind(aggregate_type)
        .bind(format!("{aggregate_type}-1"))
        .bind(json!({ "n": n }))
        .bind(metadata)
        .execute(&db.pool)
        .await
        .expect("insert");
    }
    let mut conn = PgConnection::connect(&db.url).await.expect("connect");
    let everything = read_wanted(&mut conn, Wanted::EVERYTHING).await;
    assert_eq!(everything.len(), 2);
    assert_eq!(everything[0].meta("request_id").as_deref(), Some("r-1"));
    assert_eq!(everything[1].payload, r#"{"n": 2}"#);

    let some = read_wanted(
        &mut conn,
        Wanted {
            aggregate_types: Some(&["Wanted"]),
            metadata_keys: Some(&["reason", "absent", "it's"]),
        },
    )
    .await;
    assert_eq!(some.len(), 2, "every event is still read, to advance past it");
    assert_eq!(some[0].payload, r#"{"n": 1}"#);
    assert_eq!(some[0].meta("reason").as_deref(), Some("it's \"quoted\""));
    assert_eq!(some[0].meta("request_id"), None, "a key not wanted is not sent");
    let keys: serde_json::Value = serde_json::from_str(&some[0].metadata).expect("metadata");
    assert_eq!(
        keys,
        json!({ "reason": "it's \"quoted\"" }),
        "absent keys are left out"
    );
    assert_eq!(some[1].payload, "null", "another type's payload is not sent");
    assert_eq!(some[1].metadata, "{}");

    let none = read_wanted(
        &mut conn,
        Wanted {
            aggregate_types: None,
            metadata_keys: Some(&[]),
        },
    )
    .await;
    assert_eq!(none[0].metadata, "{}");
}

async fn read_wanted(conn: &mut PgConnection, wanted: Wanted) -> Vec<projections::StoredEvent> {
    read_for(conn, GlobalCursor::START, 10, wanted)
        .await
        .expect("read_for")
}
