//! Schema evolution: a log holding prompt events of an older shape — a frozen fixture of
//! `PromptVersionPublished` 1.0.0 events, inserted exactly as that build stored them — is
//! read in this build's shape by the write side, the read models, the routes, the gateway
//! and the audit chain, and is never rewritten.

use integration_tests::fake_provider::FakeProvider;
use integration_tests::harness::{expect_status, TestApp, TestDatabase};
use reqwest::StatusCode;
use serde_json::{json, Value};
use sqlx::PgPool;

use crate::gateway::{gateway_settings, Secret};

/// Prompt events as the build before `PromptVersionPublished` 2.0.0 stored them, with the
/// audit `changes` it recorded for them. Never regenerated.
const FIXTURE_1_0_0: &str = include_str!("../../fixtures/events/prompt-1.0.0.json");
/// The fixture's prompt (tenant `acme`): versions 1 (`openai/gpt-4o-mini`, `production`),
/// 2 (no model) and 3 (`gpt-4o`, named without its provider).
const PROMPT: &str = "01a23909-d0ac-71b4-8b58-0227bb696fc8";

/// Inserts the fixture's events as they are (the database gives their transaction id and
/// position); returns the fixture.
async fn insert_fixture(pool: &PgPool) -> Value {
    let fixture: Value = serde_json::from_str(FIXTURE_1_0_0).expect("the fixture is JSON");
    sqlx::query(
        "insert into events (aggregate_type, aggregate_id, sequence, event_type, event_version,
                             payload, metadata, tenant_id, recorded_at)
         select aggregate_type, aggregate_id, sequence, event_type, event_version,
                payload, metadata, tenant_id, recorded_at
         from jsonb_to_recordset($1) as e(aggregate_type text, aggregate_id text, sequence bigint,
                                          event_type text, event_version text, payload jsonb,
                                          metadata jsonb, tenant_id text, recorded_at timestamptz)",
    )
    .bind(&fixture["events"])
    .execute(pool)
    .await
    .expect("insert the fixture");
    fixture
}

/// The prompt's stored rows: `(sequence, event_version, payload)`.
async fn stored(pool: &PgPool) -> Vec<(i64, String, Value)> {
    sqlx::query_as(
        "select sequence, event_version, payload from events
         where aggregate_type = 'prompt' and aggregate_id = $1 order by sequence",
    )
    .bind(PROMPT)
    .fetch_all(pool)
    .await
    .expect("stored events")
}

fn models(page: &Value) -> Vec<Value> {
    page["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|version| version["model"].clone())
        .collect()
}

#[tokio::test]
async fn a_log_of_1_0_0_prompt_events_is_read_in_the_current_shape_everywhere_and_never_rewritten() {
    let db = TestDatabase::create().await;
    let fixture = insert_fixture(&db.pool).await;
    // The catalog is written with the events it reads; events slipped into the log are
    // brought in by rebuilding it.
    replay::rebuild(&db.pool, &projections::catalog::CatalogProjection, false)
        .await
        .expect("rebuild the catalog over 1.0.0 events");
    let app = TestApp::spawn_on(db, gateway_settings()).await;
    let key = &app.admin_key;

    // The read model and the routes show each version's model as it was published.
    let versions = expect_status(
        app.get(&format!("/v1/prompts/{PROMPT}/versions"), key).await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        models(&versions),
        vec![json!("openai/gpt-4o-mini"), Value::Null, json!("gpt-4o")]
    );
    let resolved = expect_status(
        app.get(&format!("/v1/prompts/{PROMPT}/resolve?label=production"), key)
            .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        (resolved["version"].clone(), resolved["model"].clone()),
        (json!(1), json!("openai/gpt-4o-mini"))
    );

    // The write side folds the old events and takes a new version, recorded as 2.0.0.
    let published = expect_status(
        app.post(
            &format!("/v1/prompts/{PROMPT}/versions"),
            key,
            json!({"template": "Answer {{customer}} kindly.", "model": "openai/gpt-4o-mini"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    assert_eq!(published["version"], 4);
    assert_eq!(published["model"], "openai/gpt-4o-mini");
    let rows = stored(app.pool()).await;
    let fixture_rows = fixture["events"].as_array().expect("events");
    for ((sequence, version, payload), original) in rows.iter().zip(fixture_rows) {
        assert_eq!(
            (version.as_str(), payload),
            (
                original["event_version"].as_str().unwrap_or_default(),
                &original["payload"]
            ),
            "event {sequence} was rewritten"
        );
    }
    let (_, new_version, new_payload) = rows.last().expect("the new event");
    assert_eq!(new_version, "2.0.0");
    assert_eq!(
        new_payload["PromptVersionPublished"]["model"],
        json!({"provider": "openai", "model_id": "gpt-4o-mini"})
    );

    // Reading the prompt as it was before the new version folds the old events too.
    let before = fixture_rows[4]["recorded_at"].as_str().expect("recorded_at");
    let then = expect_status(
        app.get(
            &format!("/v1/prompts/{PROMPT}?as_of={}", before.replace('+', "%2B")),
            key,
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        (then["latest_version"].clone(), then["labels"].clone()),
        (json!(3), json!({"production": 1}))
    );

    // The gateway runs version 1 on the model it names.
    let secret = Secret::new();
    let fake = FakeProvider::start(&secret.value).await;
    expect_status(
        app.post(
            "/v1/providers",
            key,
            json!({"name": "openai", "kind": "openai", "base_url": fake.openai_base_url(),
                   "credential_ref": secret.credential_ref}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    expect_status(
        app.post(
            "/v1/models",
            key,
            json!({"provider": "openai", "model_id": "gpt-4o-mini"}),
        )
        .await,
        StatusCode::CREATED,
    )
    .await;
    let answer = expect_status(
        app.post(
            &format!("/v1/prompts/{PROMPT}/run"),
            key,
            json!({"label": "production", "variables": {"customer": "Ada", "topic": "billing"}}),
        )
        .await,
        StatusCode::OK,
    )
    .await;
    assert_eq!(
        (answer["version"].clone(), answer["model"].clone()),
        (json!(1), json!("openai/gpt-4o-mini"))
    );
    assert_eq!(fake.requests_for("gpt-4o-mini").len(), 1);

    // The audit log folds the old events as the build that wrote them did, and verifies.
    for projection in projections::all().into_iter().filter(|p| !p.inline()) {
        projections::runner::catch_up(app.pool(), projection.as_ref())
            .await
            .expect("catch up");
    }
    let changes: Vec<(i64, String, Value)> = sqlx::query_as(
        "select aggregate_version, event_type, changes from audit_entry
         where aggregate_type = 'prompt' and aggregate_id = $1 and aggregate_version <= 5
         order by aggregate_version",
    )
    .bind(PROMPT)
    .fetch_all(app.pool())
    .await
    .expect("audit entries");
    let recorded: Vec<(i64, String, Value)> = fixture["audit_changes"]
        .as_array()
        .expect("audit_changes")
        .iter()
        .map(|entry| {
            (
                entry["aggregate_version"].as_i64().unwrap_or_default(),
                entry["event_type"].as_str().unwrap_or_default().to_string(),
                entry["changes"].clone(),
            )
        })
        .collect();
    assert_eq!(changes, recorded);
    let verification = api::cli::audit::verify(app.pool(), Some("acme"), None).await;
    assert!(
        verification.as_ref().is_ok_and(|out| out.contains("acme: ok")),
        "{verification:?}"
    );
}
